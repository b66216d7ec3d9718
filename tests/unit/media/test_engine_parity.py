"""The native and the Python media engine give the same packets and counters (issue 12).

One recorded call (fixed SRTP keys, SSRCs, sequence numbers and timestamps, a fake
clock) goes through a bridge of each engine: audio in order both ways, reordered,
lost, a 60 ms gap, RFC 4733 events both ways, RTCP both ways, SRTP packets that do
not authenticate, a replay, foreign sources, corrupt Opus, 30 ms PBX packets, hold
and resume. Every datagram either bridge sends, and every counter it keeps, must
be identical; and the native bridge must have taken the steady state itself.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from gateway.media.native import NativeBridge, load_native, native_error
from gateway.media.rtcp import ReceiveStats, build_report
from gateway.media.rtp import RtpSender
from gateway.sdp.negotiate import SrtpParams
from tests.unit.media.bridge_fakes import (
    META_ADDR,
    META_IP,
    PBX_ADDR,
    PBX_IP,
    SUITE,
    MetaPeer,
    PbxPeer,
    Rig,
    pbx_params,
    tone_frames,
    wa_params,
)

pytestmark = pytest.mark.skipif(
    load_native() is None, reason=f"native media engine not built: {native_error()}"
)

LOCAL_KEY = bytes(range(30))
REMOTE_KEY = bytes(range(100, 130))

# One step of a recording: ("meta" | "pbx", datagram, source address) arrives, or
# ("tick", n) the media clock ticks n times, or ("call", f) f(rig) changes the call.
Step = tuple[Any, ...]


def _rig(engine: str, monkeypatch: pytest.MonkeyPatch) -> Rig:
    # The bridge's own RTP senders draw their SSRC, sequence and timestamp at random:
    # the same draws for both engines.
    draws = random.Random(12)
    monkeypatch.setattr("gateway.media.rtp.secrets.randbits", draws.getrandbits)
    wa = wa_params(srtp=SrtpParams(SUITE, LOCAL_KEY, REMOTE_KEY, 1))
    rig = Rig(wa=wa, pbx=pbx_params(), engine=engine)
    rig.answer()
    return rig


def _recording() -> list[Step]:
    """The call: what Meta and the PBX send, and when the clock ticks."""
    meta = MetaPeer(wa_params(srtp=SrtpParams(SUITE, LOCAL_KEY, REMOTE_KEY, 1)))
    pbx = PbxPeer()
    steps: list[Step] = []
    meta_tone = tone_frames(440, 400)
    pbx_tone = tone_frames(800, 400, 320)
    m = p = 0

    def both(count: int) -> None:
        nonlocal m, p
        for _ in range(count):
            steps.append(("meta", meta.audio(meta_tone[m]), META_ADDR))
            steps.append(("pbx", pbx.audio(pbx_tone[p]), PBX_ADDR))
            steps.append(("tick", 1))
            m += 1
            p += 1

    both(30)  # in order
    # Reordered: the next two from Meta swapped; one from the PBX swapped too.
    a, b = meta.audio(meta_tone[m]), meta.audio(meta_tone[m + 1])
    steps += [("meta", b, META_ADDR), ("meta", a, META_ADDR), ("tick", 1)]
    m += 2
    c, d = pbx.audio(pbx_tone[p]), pbx.audio(pbx_tone[p + 1])
    steps += [("pbx", d, PBX_ADDR), ("pbx", c, PBX_ADDR), ("tick", 1)]
    p += 2
    both(10)
    # Lost: one packet, then three (FEC from the next, PLC before it), then a held one
    # released by the tick.
    meta.audio(meta_tone[m])
    m += 1
    both(5)
    for k in range(3):
        meta.audio(meta_tone[m + k])
    m += 3
    both(5)
    meta.audio(meta_tone[m])
    steps += [("meta", meta.audio(meta_tone[m + 1]), META_ADDR), ("tick", 3)]
    m += 2
    both(5)
    # SRTP: a forged tag, a replay, an SRTCP report with a forged tag.
    good = meta.audio(meta_tone[m])
    m += 1
    steps += [("meta", good[:-1] + bytes([good[-1] ^ 1]), META_ADDR), ("meta", good, META_ADDR)]
    steps += [("meta", good, META_ADDR), ("tick", 1)]
    both(3)
    # Foreign sources: another host, the peers' hosts on other ports.
    steps += [("meta", meta.audio(meta_tone[m]), ("198.51.100.7", 3480))]
    steps += [("pbx", pbx.audio(pbx_tone[p]), (PBX_IP, 31000))]
    steps += [("meta", meta.audio(meta_tone[m + 1]), (META_IP, 3481))]
    m += 2
    p += 1
    both(5)
    # Corrupt Opus (authentic SRTP), an empty payload, a wrong payload type.
    steps += [("meta", meta.payload(b"\xff\xff\xff"), META_ADDR)]
    steps += [("meta", meta.payload(b""), META_ADDR)]
    steps += [("meta", meta.payload(b"\x01" * 20, pt=99), META_ADDR)]
    steps += [("pbx", pbx.payload(b"\xff" * 160, pt=8), PBX_ADDR), ("tick", 1)]
    both(5)
    # RFC 4733 events both ways, in the audio's sequence spaces.
    steps += [("meta", pkt, META_ADDR) for pkt in meta.dtmf_event(5)]
    steps += [("pbx", pkt, PBX_ADDR) for pkt in pbx.dtmf_event(7)]
    steps.append(("tick", 2))
    both(5)
    # RTCP both ways: Meta's (SRTCP) receiver report, the PBX's sender report.
    meta_rx, pbx_rx = ReceiveStats(48000), ReceiveStats(8000)
    meta_rr = build_report(None, meta_rx, 5.0, "meta", ssrc=meta.sender.ssrc)
    steps += [("meta", meta.rtcp(meta_rr), META_ADDR)]
    steps += [("pbx", build_report(pbx.sender, pbx_rx, 5.0, "pbx"), (PBX_IP, PBX_ADDR[1] + 1))]
    # A forged SRTCP tag.
    rr = meta.rtcp(meta_rr)
    steps += [("meta", rr[:-1] + bytes([rr[-1] ^ 1]), META_ADDR), ("tick", 1)]
    both(5)
    # The PBX sends 30 ms packets for a while (re-framed to 20 ms), then 20 ms again.
    pbx30 = tone_frames(600, 10, 480)
    pbx_sender = RtpSender(8000, ssrc=pbx.sender.ssrc, sequence=pbx.sender.sequence)
    pbx_sender.timestamp = pbx.sender.timestamp
    for frame in pbx30:
        steps.append(("pbx", pbx_sender.next_packet(0, pbx.encoder.encode(frame), 240), PBX_ADDR))
        steps.append(("tick", 1))
    pbx.sender.sequence, pbx.sender.timestamp = pbx_sender.sequence, pbx_sender.timestamp
    both(5)
    # Hold (the PBX goes sendonly: nothing toward it), then resume.
    steps.append(("call", lambda rig: rig.set_pbx(direction="recvonly")))
    both(5)
    steps.append(("call", lambda rig: rig.set_pbx(direction="sendrecv")))
    both(5)
    # A 3 s silence from both (the filler runs, then a report is due), and on again.
    steps.append(("tick", 150))
    both(20)
    return steps


def _play(rig: Rig, steps: list[Step]) -> None:
    for step in steps:
        kind = step[0]
        if kind == "meta":
            rig.advance(0.0005)
            rig.from_meta(step[1], step[2])
        elif kind == "pbx":
            rig.advance(0.0005)
            rig.from_pbx(step[1], step[2])
        elif kind == "tick":
            rig.tick(step[1])
        else:
            call: Callable[[Rig], None] = step[1]
            call(rig)


def _state(rig: Rig) -> dict[str, Any]:
    """Every counter the bridge keeps, and the state of its RTP and RTCP machinery."""
    bridge = rig.bridge
    out: dict[str, Any] = {"stats": dataclasses.asdict(bridge.stats())}
    for name, leg in (("wa", bridge.wa), ("pbx", bridge.pbx)):
        for slot in ("sender", "rx", "reorder"):
            obj = getattr(leg, slot)
            out[f"{name}.{slot}"] = {s: getattr(obj, s) for s in type(obj).__slots__}
        if leg.srtp is not None:
            out[f"{name}.srtp"] = (leg.srtp.auth_failures, leg.srtp.replays)
    out["wa_src_ts"] = bridge._wa_src_ts
    return out


def test_both_engines_send_the_same_packets_and_count_the_same(
    monkeypatch: pytest.MonkeyPatch, srtp_backend: str
) -> None:
    """On either libsrtp the native sessions may run on (srtp_backend)."""
    steps = _recording()
    python = _rig("python", monkeypatch)
    _play(python, steps)
    native = _rig("native", monkeypatch)
    assert isinstance(native.bridge, NativeBridge)
    _play(native, steps)

    assert len(native.wa_sock.sent) == len(python.wa_sock.sent) > 200
    assert native.wa_sock.sent == python.wa_sock.sent  # toward Meta: SRTP and SRTCP
    assert len(native.pbx_sock.sent) == len(python.pbx_sock.sent) > 100
    assert native.pbx_sock.sent == python.pbx_sock.sent  # toward the PBX: RTP and RTCP
    assert _state(native) == _state(python)
    stats = python.bridge.stats()
    # The recording exercised what it says it does.
    assert stats.whatsapp.srtp_auth_failures == 3 and stats.whatsapp.foreign_packets == 1
    assert stats.whatsapp.relatch_refused == 1 and stats.pbx.relatch_refused == 1
    assert stats.whatsapp.bad_packets >= 2 and stats.pbx.bad_packets >= 1
    assert stats.dtmf_events_to_pbx == 1 and stats.dtmf_events_to_whatsapp == 1
    assert python.bridge.wa.reorder.reordered >= 1 and python.bridge.wa.reorder.lost >= 5
    # The native engine took the steady state itself, and only that.
    native_bridge = native.bridge
    assert isinstance(native_bridge, NativeBridge)
    taken, handed = native_bridge.fast_packets, native_bridge.slow_packets
    assert taken + handed == sum(1 for s in steps if s[0] in ("meta", "pbx"))
    assert taken > 200 and 30 < handed < 80


def test_a_different_recording_gives_different_packets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: one lost packet more changes what is sent."""
    steps = _recording()
    python = _rig("python", monkeypatch)
    _play(python, steps)
    native = _rig("native", monkeypatch)
    dropped = next(i for i, s in enumerate(steps) if s[0] == "meta" and i > 100)
    _play(native, steps[:dropped] + steps[dropped + 1 :])
    assert native.pbx_sock.sent != python.pbx_sock.sent
