"""Connection-level attacks on a running gateway, with what they measure (issue 11).

Used by ``test_connections.py`` and, as a script, to take the before/after
figures of the same attacks against any daemon on the same machine::

    python tests/integration/hostile/conn_attacks.py   # prints one JSON line per attack

Every attack is bounded in time and closes every socket it opens. Sources are
loopback addresses (127.0.0.0/8 all reach the local host on Linux), so an
allow list can admit one and refuse another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_hello() -> bytes:
    """The first flight of a TLS client (its ClientHello record), from an in-memory client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="sip.example.com")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def options(branch: str, transport: str = "TLS") -> bytes:
    return (
        "OPTIONS sip:+15550001111@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK{branch};rport\r\n"
        "From: <sip:probe@127.0.0.1>;tag=abc\r\n"
        "To: <sip:+15550001111@127.0.0.1>\r\n"
        f"Call-ID: {branch}@hostile\r\n"
        "CSeq: 7 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class Sampler:
    """The daemon's fd count and RSS, sampled every ``every`` seconds while it runs."""

    pid: int
    every: float = 0.1
    fds: list[int] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                self.fds.append(proc_fds(self.pid))
                self.rss.append(proc_rss_kib(self.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)


async def tls_options(port: int, source: str = HOST, timeout: float = 3.0) -> float | None:
    """Seconds from connect to the 200 of one OPTIONS over a fresh TLS connection; None: no
    answer."""
    start = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                HOST,
                port,
                ssl=client_context(),
                server_hostname="sip.example.com",
                local_addr=(source, 0),
            )
            writer.write(options(f"probe{time.monotonic_ns()}"))
            head = await reader.readuntil(b"\r\n\r\n")
        return time.monotonic() - start if head.startswith(b"SIP/2.0 200") else None
    except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()


async def _prober(port: int, stop: asyncio.Event, every: float = 0.5) -> list[float | None]:
    out: list[float | None] = []
    while not stop.is_set():
        out.append(await tls_options(port))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return out


async def tls_flood(
    pid: int, port: int, source: str, rate: float, seconds: float, hold: float = 2.0
) -> dict[str, object]:
    """``rate`` new connections a second from ``source`` for ``seconds``, each sending a
    ClientHello and waiting up to ``hold`` s for anything back. Meanwhile an allowed
    client sends one OPTIONS every 0.5 s on a fresh TLS connection."""
    hello = client_hello()
    outcome: Counter[str] = Counter()
    server_bytes = 0

    async def one() -> None:
        nonlocal server_bytes
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            outcome["connect_failed"] += 1
            return
        try:
            writer.write(hello)
            data = await asyncio.wait_for(reader.read(65536), hold)
            server_bytes += len(data)
            outcome["server_hello" if data[:1] == b"\x16" else "data" if data else "closed"] += 1
        except TimeoutError:
            outcome["held"] += 1
        except OSError:
            outcome["closed"] += 1  # reset, 0 bytes
        finally:
            writer.transport.abort()

    stop = asyncio.Event()
    sampler = Sampler(pid)
    sampling = asyncio.ensure_future(sampler.run(stop))
    probing = asyncio.ensure_future(_prober(port, stop))
    base_fds, base_rss = proc_fds(pid), proc_rss_kib(pid)
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            tasks.append(asyncio.ensure_future(one()))
            sent += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # what is held after the flood
    after_fds, after_rss = proc_fds(pid), proc_rss_kib(pid)
    stop.set()
    await sampling
    probes = await probing
    answered = [p for p in probes if p is not None]
    return {
        "attack": "tls_flood",
        "source": source,
        "connections": sent,
        "outcomes": dict(outcome),
        "bytes_from_server": server_bytes,
        "fds": {"before": base_fds, "max": max(sampler.fds), "after": after_fds},
        "rss_kib": {"before": base_rss, "max": max(sampler.rss), "after": after_rss},
        "allowed_options": {
            "sent": len(probes),
            "answered": len(answered),
            "max_s": round(max(answered), 3) if answered else None,
        },
    }


async def silent_flood(
    pid: int, port: int, source: str, count: int, observe: float
) -> dict[str, object]:
    """``count`` TCP connections from ``source`` that never send a byte; when each one is
    closed by the daemon (EOF or reset), within ``observe`` s."""
    start = time.monotonic()
    closed_at: list[float] = []
    held = 0
    failed = 0

    async def one() -> None:
        nonlocal held, failed
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            failed += 1
            return
        try:
            left = observe - (time.monotonic() - start)
            await asyncio.wait_for(reader.read(1), max(0.01, left))
            closed_at.append(time.monotonic() - start)
        except TimeoutError:
            held += 1
        except OSError:
            closed_at.append(time.monotonic() - start)
        finally:
            writer.transport.abort()

    stop = asyncio.Event()
    sampler = Sampler(pid)
    sampling = asyncio.ensure_future(sampler.run(stop))
    base_fds = proc_fds(pid)
    await asyncio.gather(*(one() for _ in range(count)))
    stop.set()
    await sampling
    await asyncio.sleep(0.5)
    quick = [t for t in closed_at if t < 1.0]
    later = sorted(t for t in closed_at if t >= 1.0)
    return {
        "attack": "silent_flood",
        "connections": count,
        "connect_failed": failed,
        "closed_within_1s": len(quick),
        "closed_later": len(later),
        "closed_later_s": [round(later[0], 2), round(later[-1], 2)] if later else None,
        "held_at_end": held,
        "observe_s": observe,
        "fds": {"before": base_fds, "max": max(sampler.fds), "after": proc_fds(pid)},
    }


async def slowloris(port: int, count: int, observe: float, source: str = HOST) -> dict[str, object]:
    """``count`` TLS connections each sending an OPTIONS one byte a second; when the daemon
    closed each, within ``observe`` s."""
    start = time.monotonic()
    closed_at: list[float] = []
    held = 0
    failed = 0

    async def one(i: int) -> None:
        nonlocal held, failed
        try:
            reader, writer = await asyncio.open_connection(
                HOST,
                port,
                ssl=client_context(),
                server_hostname="sip.example.com",
                local_addr=(source, 0),
            )
        except (OSError, ssl.SSLError):
            failed += 1
            return
        message = options(f"slow{i}")
        try:
            for byte in message:
                if time.monotonic() - start > observe:
                    held += 1
                    return
                writer.write(bytes([byte]))
                try:
                    data = await asyncio.wait_for(reader.read(1), 1.0)
                except TimeoutError:
                    continue
                if not data:
                    closed_at.append(time.monotonic() - start)
                    return
            held += 1  # the whole message went through
        except (OSError, ssl.SSLError):
            closed_at.append(time.monotonic() - start)
        finally:
            writer.transport.abort()

    await asyncio.gather(*(one(i) for i in range(count)))
    return {
        "attack": "slowloris",
        "connections": count,
        "connect_failed": failed,
        "closed": len(closed_at),
        "closed_s": [round(min(closed_at), 2), round(max(closed_at), 2)] if closed_at else None,
        "held_at_end": held,
        "observe_s": observe,
    }


async def non_reader(pid: int, port: int, seconds: float, source: str = HOST) -> dict[str, object]:
    """One TLS connection sending OPTIONS as fast as the daemon takes them, reading nothing
    (small receive buffers); when the daemon closed it, and its RSS meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    _, writer = await asyncio.open_connection(
        sock=sock, ssl=client_context(), server_hostname="sip.example.com", limit=1024
    )
    stop = asyncio.Event()
    sampler = Sampler(pid)
    sampling = asyncio.ensure_future(sampler.run(stop))
    base_rss = proc_rss_kib(pid)
    start = time.monotonic()
    sent = 0
    closed_after: float | None = None
    try:
        while time.monotonic() - start < seconds:
            if writer.transport.is_closing():
                closed_after = time.monotonic() - start
                break
            for _ in range(50):
                writer.write(options(f"nr{sent}"))
                sent += 1
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                continue
    except (OSError, ssl.SSLError):
        closed_after = time.monotonic() - start
    finally:
        writer.transport.abort()
        stop.set()
        await sampling
    return {
        "attack": "non_reader",
        "options_sent": sent,
        "closed_after_s": round(closed_after, 2) if closed_after is not None else None,
        "observe_s": seconds,
        "rss_kib": {"before": base_rss, "max": max(sampler.rss), "after": proc_rss_kib(pid)},
    }


def _main() -> None:  # pragma: no cover - the before/after figures, by hand
    import json
    import sys
    import tempfile
    from pathlib import Path

    from tests.integration.harness import GatewayProcess

    overrides = {"whatsapp": {"allowed_networks": ["127.0.0.1/32", "127.0.0.3/32"]}}
    for name in sys.argv[1:] or ["flood", "silent", "slow", "nonreader"]:
        with tempfile.TemporaryDirectory() as tmp:
            gw = GatewayProcess(Path(tmp), overrides)
            gw.start()
            try:
                assert gw.proc is not None
                pid, port = gw.proc.pid, gw.ports["tls"]
                if name == "flood":
                    result = asyncio.run(tls_flood(pid, port, "127.0.0.2", 300, 5.0))
                elif name == "silent":
                    result = asyncio.run(silent_flood(pid, port, "127.0.0.3", 300, 15.0))
                elif name == "slow":
                    result = asyncio.run(slowloris(port, 10, 20.0))
                else:
                    result = asyncio.run(non_reader(pid, port, 15.0))
                print(json.dumps(result), flush=True)
            finally:
                gw.stop()


if __name__ == "__main__":  # pragma: no cover
    _main()
