"""Opus in-band FEC end to end in the bridge (fake clock), and in what the Meta
emulator sends: a lost WhatsApp packet comes back from the next packet's LBRR
data when that packet carries some, by PLC otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.media.codecs import PCM_FRAME_BYTES, OpusCodec
from tests.emulator.rtp import MediaScript, opus_encoder
from tests.peers.audio import speech_like
from tests.unit.media.bridge_fakes import Rig

LOST = (20, 45, 70, 95, 120)  # single losses, each well after the one before
FRAMES = 140

pytestmark = pytest.mark.usefixtures("media_engine")  # both engines (conftest.py)


def snr_db(test: bytes, reference: bytes) -> float:
    a = np.frombuffer(test, "<i2").astype(float)
    b = np.frombuffer(reference, "<i2").astype(float)
    return float(10 * np.log10(np.mean(b * b) / max(np.mean((a - b) ** 2), 1e-9)))


def speech_frames(rate: int = 8000) -> list[bytes]:
    pcm = speech_like(rate, FRAMES * 0.02 + 0.1, seed=3)
    size = rate // 50 * 2
    return [pcm[i * size : (i + 1) * size] for i in range(FRAMES)]


class Spy:
    """The WhatsApp leg's codec, recording each ``conceal`` call's next payload;
    ``fec=False`` withholds it (PLC only)."""

    def __init__(self, codec: Any, fec: bool) -> None:
        self._codec = codec
        self._fec = fec
        self.calls: list[bytes | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        self.calls.append(next_payload)
        return bytes(self._codec.conceal(next_payload if self._fec else None))


def run(lost: tuple[int, ...], fec: bool = True) -> tuple[bytes, list[bytes], Spy]:
    """Meta's speech through the bridge with ``lost`` packets missing: the PBX's PCM,
    the Opus payloads sent, and the spy."""
    rig = Rig()
    rig.answer()
    rig.to_meta()
    spy = Spy(rig.bridge.wa.codec, fec)
    rig.bridge.wa.codec = spy  # type: ignore[assignment]
    payloads = []
    for i, pcm in enumerate(speech_frames()):
        payload = rig.meta.encoder.encode(pcm)
        payloads.append(payload)
        packet = rig.meta.payload(payload)
        if i not in lost:
            rig.from_meta(packet)
        rig.tick()
    sent = rig.to_pbx()
    return rig.pbx.decode_pcm(sent), payloads, spy


def frame(pcm: bytes, i: int) -> bytes:
    return pcm[i * PCM_FRAME_BYTES : (i + 1) * PCM_FRAME_BYTES]


def test_a_lost_packet_is_rebuilt_from_the_next_packets_fec() -> None:
    clean, _, spy = run(())
    assert spy.calls == [] and len(clean) == FRAMES * PCM_FRAME_BYTES
    with_fec, payloads, spy = run(LOST)
    # The slow path hands each gap's following packet to the codec, and the PBX
    # stream has no hole: one concealed frame per lost packet, in its slot.
    assert spy.calls == [payloads[i + 1] for i in LOST]
    assert len(with_fec) == len(clean)
    plc_only, _, _ = run(LOST, fec=False)
    fec_snr = np.mean([snr_db(frame(with_fec, i), frame(clean, i)) for i in LOST])
    plc_snr = np.mean([snr_db(frame(plc_only, i), frame(clean, i)) for i in LOST])
    assert fec_snr > plc_snr + 4, (fec_snr, plc_snr)
    # and the frames after each gap decode as in the clean run (the state is right)
    after = [
        snr_db(with_fec[(i + 2) * 320 : (i + 6) * 320], clean[(i + 2) * 320 : (i + 6) * 320])
        for i in LOST
    ]
    assert min(after) > 10, after


def test_a_burst_uses_fec_for_its_last_frame_only() -> None:
    _, payloads, spy = run((60, 61, 62))
    assert spy.calls == [None, None, payloads[63]]


def _fec_gain_db(script: MediaScript) -> float:
    """dB by which the gateway's decoder rebuilds a lost frame better from the next
    packet's FEC than by PLC, for what the emulator's encoder sends."""
    encoder = opus_encoder(48000, 20000, script)
    frames = speech_frames(48000)
    payloads = [encoder.encode(f, 960) for f in frames]
    full = OpusCodec()
    reference = [full.decode(p) for p in payloads]
    gains = []
    for lost in LOST:
        snr = []
        for use_fec in (True, False):
            decoder = OpusCodec()
            for p in payloads[:lost]:
                decoder.decode(p)
            rebuilt = decoder.conceal(payloads[lost + 1] if use_fec else None)
            snr.append(snr_db(rebuilt, reference[lost]))
        gains.append(snr[0] - snr[1])
    return float(np.mean(gains))


def test_the_emulator_sends_fec_when_asked_and_none_when_not() -> None:
    assert _fec_gain_db(MediaScript()) > 4  # the default: as WhatsApp clients send
    assert abs(_fec_gain_db(MediaScript(opus_fec=False))) < 0.01  # FEC decode is PLC
