"""Overload: an INVITE flood while a call talks, and digest guessing (issue 11, findings 2, 7).

The daemon runs as a process with Asterisk as the PBX; the strict Meta emulator
places one call that carries audio through the attack. The attackers are
separate processes (so the emulator's own loop measures the call undisturbed),
over TLS from other loopback addresses in ``allowed_networks``:

* INVITE flood: as fast as one TLS connection takes them, 407s never answered.
  The call's loss (emulator receive stats), OPTIONS latency on the WhatsApp leg
  (from 127.0.0.1, a probe every 50 ms), 503s with Retry-After, open
  transactions and RSS are measured.
* Digest guessing: wrong digests on one nonce as fast as they are answered.
  Checked guesses are bounded by the backoff, the nonce is dead afterwards, a
  call from Meta's address connects during the guesser's backoff, and the
  guesser's address authenticates again once the backoff ran out.

``python -m tests.integration.hostile.test_overload flood|guess DIR`` prints
the same figures as JSON (used for the before/after table in docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gateway.sip.auth import answer_challenge, parse_challenge
from tests.emulator import CallResult, MetaCaller, default_tls
from tests.emulator.rtp import MediaEndpoint, RtpPacket
from tests.integration.harness import ROOT, GatewayProcess, free_port
from tests.peers.asterisk import AsteriskPbx

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"  # the harness's test password
FLOODER = "127.0.0.2"
GUESSER = "127.0.0.3"
BYSTANDER = "127.0.0.4"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    "m=audio 40000 RTP/SAVP 111 126\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=rtpmap:126 telephone-event/8000\r\na=rtcp-mux\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)
_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ", re.M)


# ---------------------------------------------------------------------------
# Raw TLS SIP clients (run in child processes: see _child)


def _tls(source: str, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="sip.example.com")


def _invite(
    source: str, n: int, *, auth: str | None = None, body: str = SDP, cseq: int = 1
) -> bytes:
    ruri = f"sip:{NUMBER}@sip.example.com;transport=tls"
    lines = [
        f"INVITE {ruri} SIP/2.0",
        f"Via: SIP/2.0/TLS {source}:5999;branch=z9hG4bK-atk-{os.getpid()}-{n}",
        "Max-Forwards: 70",
        f"From: <sip:+12195550714@wa.meta.vc>;tag=atk{n}",
        f"To: <sip:{NUMBER}@sip.example.com>",
        f"Call-ID: atk-{os.getpid()}-{n}@{source}",
        f"CSeq: {cseq} INVITE",
        f"Contact: <sip:+12195550714@{source}:5999;transport=tls>",
    ]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class _Counts:
    """The responses arriving on a connection, by status; Retry-After on 503s."""

    def __init__(self) -> None:
        self.status: Counter[int] = Counter()
        self.retry_after_503 = 0
        self._buf = b""

    def feed(self, data: bytes) -> None:
        *msgs, self._buf = (self._buf + data).split(b"\r\n\r\n")
        for msg in msgs:
            m = _STATUS.match(msg)
            if m is None:
                continue
            code = int(m.group(1))
            self.status[code] += 1
            if code == 503 and b"\nRetry-After:" in msg:
                self.retry_after_503 += 1


def _pump(
    sock: ssl.SSLSocket, batch: Callable[[int], bytes], seconds: float, counts: _Counts
) -> tuple[int, float]:
    """Write ``batch(n)`` (n: requests so far) as fast as the connection takes it, reading
    answers in between, for ``seconds``; then read for one more second. One thread: an
    SSL object must not be used by two at once. Returns (batches written, seconds)."""
    sock.setblocking(False)
    pending, written, n = b"", 0, 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end + 1.0:
            break
        progress = False
        if now < end:
            if not pending:
                pending = batch(n)
                n += 1
            try:
                sent = sock.send(pending)
                pending = pending[sent:]
                progress = sent > 0
                if not pending:
                    written += 1
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        while True:
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                return written, min(time.monotonic(), end) - start
            counts.feed(data)
            progress = True
        if not progress:
            select.select([sock], [sock] if now < end else [], [], 0.01)
    return written, seconds


def flood(port: int, seconds: float, source: str = FLOODER, per_batch: int = 16) -> dict[str, Any]:
    """INVITEs as fast as the connection takes them; 407s never answered."""
    sock = _tls(source, port)
    counts = _Counts()

    def batch(k: int) -> bytes:
        return b"".join(_invite(source, k * per_batch + i) for i in range(per_batch))

    try:
        written, took = _pump(sock, batch, seconds, counts)
    except OSError as exc:
        return {"error": repr(exc), "status": dict(counts.status)}
    with contextlib.suppress(OSError):
        sock.close()
    return {
        "sent": written * per_batch,
        "seconds": took,
        "status": {str(k): v for k, v in sorted(counts.status.items())},
        "retry_after_503": counts.retry_after_503,
    }


def idle(port: int, seconds: float) -> dict[str, Any]:
    """No attack (the baseline)."""
    time.sleep(seconds)
    return {"sent": 0, "seconds": seconds, "status": {}, "retry_after_503": 0}


def probe_options(port: int, seconds: float, every: float = 0.05) -> dict[str, Any]:
    """OPTIONS on the WhatsApp leg from 127.0.0.1, one at a time; latency of each."""
    sock = _tls("127.0.0.1", port)
    sock.settimeout(5.0)
    latencies: list[float] = []
    timeouts = 0
    end = time.monotonic() + seconds
    n = 0
    buf = b""
    while time.monotonic() < end:
        n += 1
        msg = (
            f"OPTIONS sip:sip.example.com;transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5998;branch=z9hG4bK-opt-{os.getpid()}-{n}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@wa.meta.vc>;tag=p{n}\r\n"
            f"To: <sip:sip.example.com>\r\nCall-ID: opt-{os.getpid()}-{n}\r\n"
            f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        t0 = time.monotonic()
        sock.sendall(msg)
        try:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise OSError("closed")
                buf += data
            _, buf = buf.split(b"\r\n\r\n", 1)
            latencies.append(time.monotonic() - t0)
        except TimeoutError:
            timeouts += 1
            latencies.append(5.0)
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    sock.close()
    return {"latencies": latencies, "timeouts": timeouts}


def _exchange(sock: ssl.SSLSocket, data: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send one request; return every response to it up to the first final one."""
    sock.settimeout(timeout)
    sock.sendall(data)
    out: list[bytes] = []
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            buf += chunk
        msg, buf = buf.split(b"\r\n\r\n", 1)
        out.append(msg)
        m = _STATUS.match(msg)
        if m is not None and int(m.group(1)) >= 200:
            return out


def _status(msgs: list[bytes]) -> list[int]:
    return [int(m.group(1)) for msg in msgs if (m := _STATUS.match(msg))]


def _challenge(msg: bytes) -> str:
    for line in msg.decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "proxy-authenticate":
            return value.strip()
    raise AssertionError(f"no Proxy-Authenticate in {msg!r}")


def _creds(challenge: str, password: str, nc: int = 1) -> str:
    ruri = f"sip:{NUMBER}@sip.example.com;transport=tls"
    ch = parse_challenge(challenge)
    return answer_challenge(ch, "INVITE", ruri, NUMBER[1:], password, nc=nc).to_header()


def guess(port: int, seconds: float, source: str = GUESSER) -> dict[str, Any]:
    """Wrong digests, one after the other as fast as they are answered, each on the
    latest nonce the daemon gave out (a failed nonce is dead after its first use)."""
    sock = _tls(source, port)
    first = _exchange(sock, _invite(source, 0))
    challenge = _challenge(first[-1])
    nonce = parse_challenge(challenge).nonce
    status: Counter[int] = Counter()
    on_first_nonce: list[int] = []
    checked_at: list[float] = []
    start = time.monotonic()
    end = start + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        data = _invite(source, n, auth=_creds(challenge, f"guess-{n}"), cseq=2)
        try:
            answers = _exchange(sock, data, timeout=1.0)
        except TimeoutError:
            status[0] += 1  # dropped (over the source's INVITE budget)
            continue
        codes = _status(answers)
        final = codes[-1] if codes else 0
        status[final] += 1
        if len(on_first_nonce) < 5:
            on_first_nonce.append(final)
        if 100 in codes and final == 403:
            checked_at.append(time.monotonic() - start)  # statefully answered: checked
        if final == 407:
            challenge = _challenge(answers[-1])
    sock.close()
    return {
        "sent": n,
        "seconds": seconds,
        "status": {str(k): v for k, v in sorted(status.items())},
        "first_nonce_answers": on_first_nonce,
        "checked_at": [round(t, 3) for t in checked_at[:20]],
        "checked": len(checked_at),
        "nonce": nonce,
        "challenge": _challenge(first[-1]),
    }


# ---------------------------------------------------------------------------
# Child processes, so the attack does not share the emulator's loop or GIL


def _child(mode: str, port: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.hostile.test_overload",
        "child",
        mode,
        str(port),
        str(seconds),
        str(out),
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metrics(gw: GatewayProcess, timeout: float = 1.0) -> dict[str, float] | None:
    url = f"http://127.0.0.1:{gw.ports['http']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            out[head] = float(value)
    return out


@contextlib.contextmanager
def _daemon(tmp: Path, **overrides: Any) -> Iterator[GatewayProcess]:
    gw_port = free_port()
    with ExitStack() as stack:
        pbx = stack.enter_context(AsteriskPbx(gw_port=gw_port, log_dir=tmp / "ast"))
        cfg: dict[str, Any] = {
            "whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}},
            "pbx": {
                "address": f"127.0.0.1:{pbx.ast_port}",
                "listen": f"127.0.0.1:{gw_port}",
                "request_uri_user": "tone",
            },
            "logging": {"level": "info"},
        }
        for key, value in overrides.items():
            cfg.setdefault(key, {}).update(value)
        (tmp / "gw").mkdir(exist_ok=True)
        gw = GatewayProcess(tmp / "gw", cfg)
        stack.callback(gw.stop)
        gw.start()
        yield gw


def _call_in_thread(
    gw: GatewayProcess, talk: float, arrivals: list[tuple[int, float]] | None = None
) -> tuple[threading.Thread, list[CallResult]]:
    """One emulator call in a thread of its own; ``arrivals`` gets (RTP timestamp, arrival
    time) of every audio packet the emulator receives."""
    out: list[CallResult] = []
    original = MediaEndpoint._audio

    def run() -> None:
        caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
        try:
            out.append(
                asyncio.run(caller.call(tone_hz=440.0, talk_seconds=talk, answer_timeout=10))
            )
        finally:
            MediaEndpoint._audio = original  # type: ignore[method-assign]

    if arrivals is not None:

        def audio(self: MediaEndpoint, pkt: RtpPacket, now: float) -> None:
            arrivals.append((pkt.ts, time.monotonic()))
            original(self, pkt, now)

        MediaEndpoint._audio = audio  # type: ignore[method-assign]
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def media_figures(arrivals: list[tuple[int, float]], rate: int = 48000) -> dict[str, float]:
    """What a listener lost, from RTP timestamps and arrival times (the gateway numbers
    its packets without gaps even after a stall, so sequence gaps say little).

    ``missing``: share of the call's time (RTP timestamps or arrival times, the longer)
    no packet covers. ``late``: share of
    packets more than 100 ms behind the earliest schedule of the 2 s before them, what an
    adaptive jitter buffer 100 ms deep would discard. ``media_loss``: the two together.
    """
    if len(arrivals) < 2:
        return {"missing": 1.0, "late": 1.0, "media_loss": 1.0}
    ts0 = arrivals[0][0]
    offsets = [((ts - ts0) & 0xFFFFFFFF) / rate for ts, _ in arrivals]
    frame = min((b - a for a, b in itertools.pairwise(offsets) if b > a), default=0.02)
    expected = offsets[-1] / frame + 1
    delays = [t - off for off, (_, t) in zip(offsets, arrivals, strict=True)]
    late, lo = 0, 0
    window: deque[tuple[float, float]] = deque()  # (arrival, delay), minimum at the left
    for (_, t), d in zip(arrivals, delays, strict=True):
        while window and window[0][0] < t - 2.0:
            window.popleft()
        if window and min(w for _, w in window) < d - 0.1:
            late += 1
        window.append((t, d))
        lo += 1
    span = arrivals[-1][1] - arrivals[0][1]
    expected = max(expected, span / frame + 1)  # a stalled sender skips time, not numbers
    missing = max(0.0, 1 - len(arrivals) / expected)
    return {
        "missing": round(missing, 4),
        "late": round(late / lo, 4),
        "media_loss": round(missing + (1 - missing) * late / lo, 4),
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


def measure_flood(tmp: Path, seconds: float = 15.0, attack: bool = True) -> dict[str, Any]:
    with _daemon(tmp) as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        rss0 = _rss_mb(pid)
        arrivals: list[tuple[int, float]] = []
        thread, results = _call_in_thread(gw, talk=seconds + 7.0, arrivals=arrivals)
        time.sleep(3.0)  # the call is up and talking
        fl = _child("flood" if attack else "idle", gw.ports["tls"], seconds, tmp / "flood.json")
        op = _child("options", gw.ports["tls"], seconds, tmp / "options.json")
        rss, tx, lag = [rss0], [], []
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rss.append(_rss_mb(pid))
                m = _metrics(gw)
                if m is not None:
                    tx.append(m.get("wagw_sip_transactions", 0.0))
                    lag.append(m.get("wagw_event_loop_lag_seconds", 0.0))
                time.sleep(0.5)
        finally:
            _reap(fl, seconds + 30)
            _reap(op, seconds + 30)
        thread.join(seconds + 40)
        after = _metrics(gw, timeout=10.0) or {}
        rss.append(_rss_mb(pid))
    flood_out = json.loads((tmp / "flood.json").read_text())
    opts = json.loads((tmp / "options.json").read_text())
    call = results[0] if results else None
    lost = call.packets_lost if call else 0
    got = call.packets_received if call else 0
    return {
        "flood": flood_out,
        "options_p95_ms": round(1000 * _p95(opts["latencies"]), 1),
        "options_max_ms": round(1000 * max(opts["latencies"], default=0.0), 1),
        "options_sent": len(opts["latencies"]),
        "options_timeouts": opts["timeouts"],
        "call_status": call.status if call else None,
        "call_violations": call.violations if call else None,
        "packets_received": got,
        "packets_lost": lost,
        "loss": lost / (got + lost) if got + lost else 1.0,
        "max_media_gap_ms": round(1000 * call.max_media_gap, 1) if call else None,
        **media_figures(arrivals),
        "transactions_max": max(tx, default=None),
        "metrics_answered": len(tx),
        "loop_lag_max_s": max([*lag, after.get("wagw_event_loop_lag_seconds", 0.0)]),
        "rss_start_mb": round(rss0, 1),
        "rss_max_mb": round(max(rss), 1),
        "rss_end_mb": round(rss[-1], 1),
        "metrics_after": {
            k: v
            for k, v in after.items()
            if "overload" in k
            or "rate_limited" in k
            or "stateless" in k
            or k.startswith("wagw_sip_transactions")
        },
    }


def measure_guessing(tmp: Path, seconds: float = 5.0, max_backoff: float = 3.0) -> dict[str, Any]:
    # WAGW_BEFORE=1: a daemon from before overload control (no such config key)
    overrides = (
        {}
        if os.environ.get("WAGW_BEFORE")
        else {"sip": {"digest_throttle": {"max_backoff": max_backoff}}}
    )
    with _daemon(tmp, **overrides) as gw:
        port = gw.ports["tls"]
        g = _child("guess", port, seconds, tmp / "guess.json")
        time.sleep(seconds / 2)  # the guesser is in backoff by now
        thread, results = _call_in_thread(gw, talk=2.0)  # Meta's own address: not refused
        _reap(g, seconds + 30)
        thread.join(30)
        guessed = json.loads((tmp / "guess.json").read_text())
        # The right password on the nonce the guesser failed with, from another address.
        with contextlib.closing(_tls(BYSTANDER, port)) as sock:
            creds = _creds(guessed["challenge"], PASSWORD)
            on_dead = _exchange(sock, _invite(BYSTANDER, 1, auth=creds, body="", cseq=2))
        fresh = None
        if _status(on_dead)[-1:] == [407]:
            fresh = parse_challenge(_challenge(on_dead[-1])).nonce
        time.sleep(max_backoff + 0.5)  # the guesser's backoff runs out
        with contextlib.closing(_tls(GUESSER, port)) as sock:
            ch = _exchange(sock, _invite(GUESSER, 10))
            creds = _creds(_challenge(ch[-1]), PASSWORD)
            after = _exchange(sock, _invite(GUESSER, 11, auth=creds, body="", cseq=2))
        m = _metrics(gw, timeout=5.0) or {}
    call = results[0] if results else None
    forbidden = int(guessed["status"].get("403", 0))
    return {
        "guess": {k: v for k, v in guessed.items() if k != "challenge"},
        "rate_403_per_s": round(forbidden / guessed["seconds"], 1),
        "dead_nonce_status": _status(on_dead),
        "fresh_nonce": fresh is not None and fresh != guessed["nonce"],
        "bystander_call_status": call.status if call else None,
        "bystander_call_violations": call.violations if call else None,
        "guesser_after_backoff": _status(after),
        "metrics": {k: v for k, v in m.items() if k.startswith("wagw_digest") or "stateless" in k},
    }


# ---------------------------------------------------------------------------
# The tests


def test_invite_flood_spares_the_call_and_options(tmp_path: Path) -> None:
    fig = measure_flood(tmp_path)
    print(json.dumps(fig, indent=1))
    flood_out = fig["flood"]
    assert fig["call_status"] == 200 and fig["call_violations"] == [], fig
    # The flood was refused: stateless 503s with Retry-After, and counted.
    assert flood_out["status"].get("503", 0) > 0, fig
    assert flood_out["retry_after_503"] == flood_out["status"]["503"], fig
    refused = sum(v for k, v in fig["metrics_after"].items() if 'action="503"' in k)
    assert refused >= flood_out["status"]["503"], fig
    assert flood_out["status"].get("100", 0) == 0, fig  # no transaction for a challenge
    # Open transactions and memory stay bounded; /metrics answered throughout.
    assert fig["transactions_max"] is not None and fig["transactions_max"] < 200, fig
    assert fig["metrics_answered"] >= 20, fig
    assert fig["rss_max_mb"] - fig["rss_start_mb"] < 40, fig
    # The call and Meta's health probes go on.
    assert fig["options_timeouts"] == 0 and fig["options_p95_ms"] < 200, fig
    assert fig["media_loss"] < 0.01, fig


def test_digest_guessing_is_throttled(tmp_path: Path) -> None:
    fig = measure_guessing(tmp_path)
    print(json.dumps(fig, indent=1))
    m = fig["metrics"]
    checked = sum(v for k, v in m.items() if k.startswith("wagw_digest_failures_total"))
    # 5 free failures, then one per backoff (1 s, 2 s, 3 s): a handful in 5 s, not hundreds.
    assert 5 <= checked <= 9 and fig["guess"]["checked"] == checked, fig
    assert m["wagw_digest_throttled_total"] > 0, fig
    assert fig["rate_403_per_s"] < 80, fig  # the INVITE budget bounds them too (50/s)
    # One nonce, many guesses: one is checked, then it is dead (challenged again).
    assert fig["guess"]["first_nonce_answers"][:2] == [403, 407], fig
    assert m["wagw_digest_nonces_invalidated_total"] == checked, fig
    # The failed nonce is dead: the right password on it is challenged again, freshly.
    assert fig["dead_nonce_status"][-1] == 407 and fig["fresh_nonce"], fig
    # Meta's address was never refused; the guesser's gets in after its backoff
    # (488: authenticated, then refused for the missing SDP offer).
    assert fig["bystander_call_status"] == 200 and fig["bystander_call_violations"] == [], fig
    assert fig["guesser_after_backoff"][-1] == 488, fig


def _main(argv: list[str]) -> None:
    if argv[0] == "child":
        mode, port, seconds, out = argv[1], int(argv[2]), float(argv[3]), Path(argv[4])
        fn = {"flood": flood, "options": probe_options, "guess": guess, "idle": idle}[mode]
        out.write_text(json.dumps(fn(port, seconds)))
        return
    tmp = Path(argv[1])
    tmp.mkdir(parents=True, exist_ok=True)
    if argv[0] in ("flood", "baseline"):
        fig = measure_flood(tmp, attack=argv[0] == "flood")
    else:
        fig = measure_guessing(tmp)
    print(json.dumps(fig, indent=1))


if __name__ == "__main__":
    _main(sys.argv[1:])
