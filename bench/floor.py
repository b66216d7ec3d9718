"""python -m bench.floor: what one forwarded pair costs at the least, measured in isolation.

The work the gateway cannot avoid for one packet each way of a transcoded call,
each part timed alone on this machine (best of ``--rounds`` runs of ``--count``):
Opus decode of the benchmark's WhatsApp stream and Opus encode toward Meta (the
gateway's default complexity, no FEC planned), G.711 both ways, SRTP unprotect and
protect (pylibsrtp's libsrtp, the native engine's default, and the system's
libsrtp2 when the native engine is built), and the kernel's share: a non-blocking
``recvfrom`` and ``sendto`` pair on loopback per packet (no sleeping reader woken).
Compare with the daemon's CPU per forwarded pair in ``python -m bench`` (CPU per
call-second / 50).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable

from bench import media
from gateway.media.codecs import codec_for
from gateway.media.native import load_native
from gateway.media.rtp import RtpSender
from gateway.media.srtp import SrtpContext, SrtpSession, new_key_material
from gateway.media.tone import sine_pcm

SUITE = "AES_CM_128_HMAC_SHA1_80"


def best_us(fn: Callable[[int], None], count: int, rounds: int) -> float:
    """Microseconds per call of ``fn(i)``, the best of ``rounds`` runs of ``count``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        best = min(best, (time.perf_counter() - start) / count)
    return 1e6 * best


def measure(count: int, rounds: int) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    opus_in = media.opus_tone_frames()  # what the benchmark's WhatsApp side sends
    decoder = codec_for("opus")
    out.append(
        (
            "Opus decode (WhatsApp -> PBX)",
            best_us(lambda i: decoder.decode(opus_in[i % len(opus_in)]), count, rounds),
        )
    )
    pcm = sine_pcm(800, 20 * 50)
    frames = [pcm[k * 320 : (k + 1) * 320] for k in range(50)]
    encoder = codec_for("opus", bitrate=20000, complexity=1, packet_loss_perc=0)
    out.append(
        (
            "Opus encode (PBX -> WhatsApp)",
            best_us(lambda i: encoder.encode(frames[i % 50]), count, rounds),
        )
    )
    pcmu = codec_for("PCMU")
    ulaw = [pcmu.encode(f) for f in frames]
    out.append(
        (
            "G.711 decode + encode",
            best_us(lambda i: pcmu.encode(pcmu.decode(ulaw[i % 50])), count, rounds),
        )
    )
    a, b = new_key_material(SUITE), new_key_material(SUITE)
    native = load_native()
    makers: list[tuple[str, Callable[[str, bytes, bytes], SrtpSession]]] = [
        ("pylibsrtp", SrtpContext)
    ]
    if native is not None:
        makers.append(("system libsrtp2", native.Srtp))
    sender = RtpSender(48000, ssrc=1, sequence=0, timestamp=0)
    plain = [sender.next_packet(111, opus_in[k % len(opus_in)], 960) for k in range(count)]
    for name, make in makers:
        before = native.use_srtp("system")[0] if native is not None else ""
        ours, peer = make(SUITE, a, b), SrtpContext(SUITE, b, a)
        if native is not None:
            native.use_srtp(before)
        incoming = [peer.protect(p) for p in plain]
        start = time.perf_counter()
        for i in range(count):
            ours.unprotect(incoming[i])
            ours.protect(plain[i])
        us = 1e6 * (time.perf_counter() - start) / count
        out.append((f"SRTP unprotect + protect ({name})", us))
    rx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx_sock.bind(("127.0.0.1", 0))
    rx_sock.setblocking(False)
    dest = rx_sock.getsockname()
    payload = b"\x80" * 100

    def kernel(i: int) -> None:
        tx_sock.sendto(payload, dest)
        rx_sock.recvfrom(2048)

    out.append(
        ("kernel: sendto + recvfrom, loopback (x2 per pair)", 2 * best_us(kernel, count, rounds))
    )
    rx_sock.close()
    tx_sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    rows = measure(args.count, args.rounds)
    print("| per forwarded pair (one packet each way) | us |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")
    core = [us for name, us in rows if not name.startswith("SRTP") or "pylibsrtp" in name]
    print(f"| **floor (pylibsrtp's SRTP)** | **{sum(core):.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
