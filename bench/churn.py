"""python -m bench.churn [--calls 5000] [--batch 100] [--engine native]: memory over many calls.

In one process (no SIP): the media of ``--calls`` calls made by the daemon's own
BridgeFactory, ``--batch`` at a time, each with both legs negotiated (SRTP keys,
Opus, PCMU), ``--packets`` packets each way over loopback through the poller, then
closed. Prints the process's RSS after each batch, the RSS per open call, the growth
from the first tenth of the run to the end, the ports still in use (must be 0) and
the packets forwarded (must be all). Exit status 1 when a port or a packet is missing
or the RSS grew by more than ``--max-growth`` MiB after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
import time

from gateway.media.bridge import Bridge, BridgeFactory
from gateway.media.codecs import codec_for
from gateway.media.rtp import RtpSender
from gateway.media.settings import MediaSettings
from gateway.media.srtp import SrtpContext, new_key_material
from gateway.media.tone import sine_pcm
from gateway.sdp.negotiate import MediaParams, SrtpParams
from gateway.transport.rtp import MediaClock, PortAllocator

SUITE = "AES_CM_128_HMAC_SHA1_80"
HOST = "127.0.0.1"


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _params(addr: tuple[str, int], codec: str, keys: SrtpParams | None) -> MediaParams:
    opus = codec == "opus"
    return MediaParams(
        remote_address=addr[0],
        remote_port=addr[1],
        remote_rtcp_port=addr[1],
        codec=codec,
        payload_type=111 if opus else 0,
        clock_rate=48000 if opus else 8000,
        channels=2 if opus else 1,
        fmtp={"useinbandfec": "1"} if opus else {},
        dtmf_payload_type=None,
        dtmf_clock_rate=8000,
        ptime=20,
        maxptime=20,
        direction="sendrecv",
        rtcp_mux=True,
        srtp=keys,
    )


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


async def churn(calls: int, batch: int, packets: int, engine: str) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    clock = MediaClock(loop)
    ports = PortAllocator(HOST, 46000, 46000 + 4 * batch + 8)
    factory = BridgeFactory(loop, ports, clock, MediaSettings(engine=engine))  # type: ignore[arg-type]
    meta, pbx = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for s in (meta, pbx):
        s.bind((HOST, 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    pcm = sine_pcm(440, 20)  # one 20 ms frame
    opus = codec_for("opus").encode(pcm)
    pcmu = codec_for("PCMU").encode(pcm)
    forwarded = sent = 0
    samples: list[tuple[int, int]] = []  # (calls done, RSS KiB)
    open_rss: list[int] = []
    idle = rss_kib()
    done = 0
    while done < calls:
        bridges: list[tuple[Bridge, SrtpContext]] = []
        for k in range(min(batch, calls - done)):
            bridge = factory(f"churn-{done + k}", lambda leg: None)
            keys = SrtpParams(SUITE, new_key_material(SUITE), new_key_material(SUITE), 1)
            bridge.set_pbx(_params(pbx.getsockname(), "PCMU", None))
            bridge.set_whatsapp(_params(meta.getsockname(), "opus", keys))
            bridges.append((bridge, SrtpContext(SUITE, keys.remote_key, keys.local_key)))
        for i in range(packets):
            for n, (bridge, peer) in enumerate(bridges):
                wa = RtpSender(48000, ssrc=n + 1, sequence=i, timestamp=960 * i)
                wa.sequence, wa.timestamp = i, 960 * i
                meta.sendto(
                    peer.protect(wa.next_packet(111, opus, 960)), (HOST, bridge.whatsapp_port)
                )
                rtp = RtpSender(8000, ssrc=n + 1, sequence=i, timestamp=160 * i)
                pbx.sendto(rtp.next_packet(0, pcmu, 160), (HOST, bridge.pbx_port))
                sent += 2
            await asyncio.sleep(0.005)
            forwarded += _drain(meta) + _drain(pbx)
        await asyncio.sleep(0.02)
        forwarded += _drain(meta) + _drain(pbx)
        open_rss.append(rss_kib())
        for bridge, _peer in bridges:
            bridge.close()
        done += len(bridges)
        del bridges
        gc.collect()
        samples.append((done, rss_kib()))
    await asyncio.sleep(0.05)
    forwarded += _drain(meta) + _drain(pbx)
    meta.close()
    pbx.close()
    clock.close()
    return {
        "engine": factory.engine,
        "samples": samples,
        "idle": idle,
        "open_rss": open_rss,
        "ports_in_use": ports.in_use,
        "sent": sent,
        "forwarded": forwarded,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100, help="calls open at once")
    ap.add_argument("--packets", type=int, default=10, help="packets each way per call")
    ap.add_argument("--engine", default="native", choices=("auto", "native", "python"))
    ap.add_argument("--max-growth", type=float, default=4.0, metavar="MIB")
    args = ap.parse_args(argv)
    start = time.monotonic()
    r = asyncio.run(churn(args.calls, args.batch, args.packets, args.engine))
    samples: list[tuple[int, int]] = r["samples"]  # type: ignore[assignment]
    open_rss: list[int] = r["open_rss"]  # type: ignore[assignment]
    base = samples[max(0, len(samples) // 10 - 1)][1]
    end = samples[-1][1]
    # The first batch open against the process before any call: what a call holds
    # (later batches reuse what the allocator kept from the ones before).
    per_call = (open_rss[0] - r["idle"]) / min(args.batch, args.calls)  # type: ignore[operator]
    print(
        f"engine {r['engine']}, {args.calls} calls, {args.batch} at a time, "
        f"{args.packets} packets each way, {time.monotonic() - start:.0f} s"
    )
    print("calls done | RSS MiB")
    for done, kib in [*samples[:: max(1, len(samples) // 10)], samples[-1]]:
        print(f"{done:>10} | {kib / 1024:.1f}")
    growth = (end - base) / 1024
    print(f"RSS per open call: {per_call:.0f} KiB; growth after the first tenth: {growth:+.2f} MiB")
    print(
        f"ports still in use: {r['ports_in_use']}; packets forwarded {r['forwarded']} "
        f"of {r['sent']}"
    )
    ok = r["ports_in_use"] == 0 and r["forwarded"] >= r["sent"] and growth <= args.max_growth
    print(f"churn: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
