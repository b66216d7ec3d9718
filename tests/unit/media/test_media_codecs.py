"""Codecs: tones through Opus and G.711, concealment, silence, bitrate, lookup; tone helpers."""

from __future__ import annotations

import array
import math
import random

import pytest

from gateway.media.codecs import (
    FEC_COMPLEXITY,
    PCM_FRAME_BYTES,
    AudioCodec,
    CodecError,
    OpusCodec,
    PcmaCodec,
    PcmuCodec,
    codec_for,
)
from gateway.media.tone import measure, sine_pcm

np = pytest.importorskip("numpy")


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + PCM_FRAME_BYTES] for i in range(0, len(pcm), PCM_FRAME_BYTES)]


def through(codec: AudioCodec, pcm: bytes) -> tuple[list[bytes], bytes]:
    payloads = [codec.encode(frame) for frame in frames(pcm)]
    return payloads, b"".join(codec.decode(p) for p in payloads)


def noise(seconds: float, sigma: float = 4000.0) -> bytes:
    rnd = random.Random(7)
    count = int(8000 * seconds)
    return array.array(
        "h", [max(-32768, min(32767, int(rnd.gauss(0.0, sigma)))) for _ in range(count)]
    ).tobytes()


def snr_db(test: bytes, reference: bytes) -> float:
    a = np.frombuffer(test, "<i2").astype(float)
    b = np.frombuffer(reference, "<i2").astype(float)
    return float(10 * np.log10(np.mean(b * b) / max(np.mean((a - b) ** 2), 1e-9)))


# --------------------------------------------------------------- tone helpers


def test_sine_and_measure() -> None:
    pcm = sine_pcm(440, 1000)
    assert len(pcm) == 16000
    freq, level = measure(pcm, 8000)
    assert freq == pytest.approx(440, rel=0.001)
    assert level == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)
    assert measure(sine_pcm(1000, 100, amplitude=1.0), 8000)[1] == pytest.approx(-3.01, abs=0.05)
    assert measure(sine_pcm(3000, 500, rate=16000), 16000)[0] == pytest.approx(3000, rel=0.001)
    assert measure(bytes(320), 8000) == (0.0, float("-inf"))
    assert measure(b"", 8000) == (0.0, float("-inf"))


# --------------------------------------------------------------- Opus


def test_opus_properties() -> None:
    codec = OpusCodec()
    assert (codec.name, codec.clock_rate, codec.samples_per_frame) == ("opus", 48000, 960)
    assert isinstance(codec_for("OPUS"), OpusCodec)


@pytest.mark.parametrize("bitrate", [12000, 20000, 32000])
def test_opus_tone_round_trip(bitrate: int) -> None:
    pcm = sine_pcm(440, 1000)
    codec = OpusCodec(bitrate=bitrate)
    _, decoded = through(codec, pcm)
    assert len(decoded) == len(pcm)  # 160 samples per 20 ms frame at 8 kHz
    steady = decoded[PCM_FRAME_BYTES * 10 :]  # past the codec's start-up
    freq, level = measure(steady, 8000)
    assert freq == pytest.approx(440, rel=0.02)
    assert level == pytest.approx(measure(pcm, 8000)[1], abs=2.0)


@pytest.mark.parametrize("bitrate", [12000, 20000, 32000, 40000])
def test_opus_honours_bitrate(bitrate: int) -> None:
    codec = OpusCodec(bitrate=bitrate)
    payloads, _ = through(codec, noise(2.0))
    mean = sum(len(p) for p in payloads[5:]) / len(payloads[5:])
    assert mean == pytest.approx(bitrate * 0.02 / 8, rel=0.25)


def test_opus_conceal_with_fec_beats_plc() -> None:
    pcm = b"".join(sine_pcm(f, 200) for f in (440, 600, 300, 800, 500))
    payloads, _ = through(OpusCodec(fec=True, packet_loss_perc=10), pcm)
    reference = OpusCodec()
    full = [reference.decode(p) for p in payloads]
    fec_snr, plc_snr = [], []
    for lost in range(10, 45, 5):
        for use_fec, results in ((True, fec_snr), (False, plc_snr)):
            decoder = OpusCodec()
            for payload in payloads[:lost]:
                decoder.decode(payload)
            concealed = decoder.conceal(payloads[lost + 1] if use_fec else None)
            assert len(concealed) == PCM_FRAME_BYTES
            results.append(snr_db(concealed, full[lost]))
            # and the stream carries on with the packet after the gap
            assert len(decoder.decode(payloads[lost + 1])) == PCM_FRAME_BYTES
    assert sum(fec_snr) / len(fec_snr) > sum(plc_snr) / len(plc_snr) + 6


def _fec_gain_db(codec: OpusCodec) -> float:
    """How much better (dB) a lost frame comes back from the next packet's FEC than
    from PLC, for what ``codec`` encodes now."""
    pcm = b"".join(sine_pcm(f, 200) for f in (440, 600, 300, 800, 500))
    payloads, _ = through(codec, pcm)
    reference = OpusCodec()
    full = [reference.decode(p) for p in payloads]
    gains = []
    for lost in range(10, 45, 5):
        snr = []
        for use_fec in (True, False):
            decoder = OpusCodec()
            for payload in payloads[:lost]:
                decoder.decode(payload)
            snr.append(snr_db(decoder.conceal(payloads[lost + 1] if use_fec else None), full[lost]))
        gains.append(snr[0] - snr[1])
    return sum(gains) / len(gains)


def test_opus_fec_follows_the_loss_the_peer_reports() -> None:
    codec = OpusCodec(complexity=1, fec=True, packet_loss_perc=5)
    # No report yet: FEC as configured, at a complexity libopus codes it at.
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (5, FEC_COMPLEXITY)
    assert _fec_gain_db(codec) > 6
    codec.peer_loss(0)  # one clean report: not yet
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (5, FEC_COMPLEXITY)
    codec.peer_loss(0)
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (0, 1)
    assert abs(_fec_gain_db(codec)) < 0.5  # no FEC in the packets: the same as PLC
    codec.peer_loss(26)  # 26/256 = 10.2 %: planned at once, rounded up
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (11, FEC_COMPLEXITY)
    assert _fec_gain_db(codec) > 6
    codec.peer_loss(1)  # any loss keeps some FEC planned
    assert codec.packet_loss_perc == 1
    codec.peer_loss(0)
    assert codec.packet_loss_perc == 1
    codec.peer_loss(3)  # a lossy report restarts the count of clean ones
    codec.peer_loss(0)
    assert codec.packet_loss_perc == 2
    codec.peer_loss(0)
    assert codec.packet_loss_perc == 0


def test_opus_complexity_floor_only_while_fec_is_planned() -> None:
    assert OpusCodec(complexity=5, fec=True).encoder_complexity == 5
    assert OpusCodec(complexity=0, fec=False).encoder_complexity == 0  # peer wants no FEC
    assert OpusCodec(complexity=0, fec=True, packet_loss_perc=0).encoder_complexity == 0
    from_fmtp = codec_for("opus", useinbandfec="1")
    assert isinstance(from_fmtp, OpusCodec) and from_fmtp.encoder_complexity == FEC_COMPLEXITY
    for codec in (PcmuCodec(), PcmaCodec()):
        codec.peer_loss(200)  # nothing to adapt


def test_opus_conceal_without_history_and_with_junk_next() -> None:
    codec = OpusCodec()
    assert len(codec.conceal()) == PCM_FRAME_BYTES
    assert len(codec.conceal(None)) == PCM_FRAME_BYTES
    codec.encode(bytes(PCM_FRAME_BYTES))
    assert len(codec.conceal(b"\xff\xff\xff")) == PCM_FRAME_BYTES  # falls back to PLC


def test_opus_conceal_follows_packet_duration() -> None:
    encoder = OpusCodec()
    payload = encoder.encode(sine_pcm(440, 40))  # one 40 ms packet
    decoder = OpusCodec()
    assert len(decoder.decode(payload)) == 2 * PCM_FRAME_BYTES
    assert len(decoder.conceal()) == 2 * PCM_FRAME_BYTES


def test_opus_silence() -> None:
    codec = OpusCodec()
    silence = codec.silence()
    assert 0 < len(silence) < 20
    assert codec.silence() is silence  # cached
    _, level = measure(b"".join(codec.decode(silence) for _ in range(10)), 8000)
    assert level < -60


def test_opus_errors() -> None:
    codec = OpusCodec()
    with pytest.raises(CodecError):
        codec.decode(b"")
    with pytest.raises(CodecError):
        codec.encode(bytes(300))  # 150 samples: not an Opus frame size
    with pytest.raises(CodecError):
        # code 3 packet (0x03) claiming 0 frames: invalid
        codec.decode(b"\x0b\x00")


# --------------------------------------------------------------- G.711


@pytest.mark.parametrize(("cls", "silence_octet"), [(PcmuCodec, 0xFF), (PcmaCodec, 0xD5)])
def test_g711_round_trip(cls: type[PcmuCodec | PcmaCodec], silence_octet: int) -> None:
    codec = cls()
    assert (codec.clock_rate, codec.samples_per_frame) == (8000, 160)
    pcm = sine_pcm(440, 1000)
    payloads, decoded = through(codec, pcm)
    assert all(len(p) == 160 for p in payloads)
    freq, level = measure(decoded, 8000)
    assert freq == pytest.approx(440, rel=0.02)
    assert level == pytest.approx(measure(pcm, 8000)[1], abs=0.5)
    # Re-encoding decoded G.711 is bit-exact.
    assert [codec.encode(codec.decode(p)) for p in payloads] == payloads
    assert codec.silence() == bytes([silence_octet]) * 160
    # mu-law has an exact zero; A-law's smallest step decodes to +-8
    assert max(abs(x) for x in array.array("h", codec.decode(codec.silence()))) <= 8


@pytest.mark.parametrize("cls", [PcmuCodec, PcmaCodec])
def test_g711_conceal_repeats_attenuated_then_silence(cls: type[PcmuCodec | PcmaCodec]) -> None:
    codec = cls()
    assert codec.conceal() == bytes(PCM_FRAME_BYTES)  # nothing to repeat yet
    tone = codec.decode(codec.encode(sine_pcm(440, 20)))
    _, level = measure(tone, 8000)
    levels = [measure(codec.conceal(b"next"), 8000)[1] for _ in range(codec.max_repeats)]
    assert levels == pytest.approx([level - 6.02 * (i + 1) for i in range(len(levels))], abs=0.1)
    assert codec.conceal() == bytes(PCM_FRAME_BYTES)
    codec.decode(codec.encode(tone))  # a real packet resets the loss run
    assert measure(codec.conceal(), 8000)[1] == pytest.approx(level - 6.02, abs=0.1)


# --------------------------------------------------------------- lookup


def test_codec_for_names_and_fmtp() -> None:
    assert isinstance(codec_for("PCMU"), PcmuCodec)
    assert isinstance(codec_for("pcma"), PcmaCodec)
    opus = codec_for(
        "opus",
        maxaveragebitrate="20000",
        useinbandfec="1",
        **{"sprop-maxcapturerate": "16000", "minptime": "20"},
    )
    assert isinstance(opus, OpusCodec)
    assert (opus.bitrate, opus.fec) == (20000, True)
    opus = codec_for("opus")
    assert isinstance(opus, OpusCodec) and (opus.bitrate, opus.fec) == (20000, False)
    opus = codec_for("opus", MaxAverageBitrate="999999", useinbandfec="0")
    assert isinstance(opus, OpusCodec) and (opus.bitrate, opus.fec) == (510000, False)
    opus = codec_for("opus", maxaveragebitrate="junk")
    assert isinstance(opus, OpusCodec) and opus.bitrate == 20000
    # Our own settings take precedence over the peer's fmtp.
    opus = codec_for("opus", maxaveragebitrate="40000", bitrate=16000, complexity=5, fec=True)
    assert isinstance(opus, OpusCodec) and (opus.bitrate, opus.fec) == (16000, True)
    with pytest.raises(CodecError, match="G729"):
        codec_for("G729")
