"""What the load generator sends: one second of a tone, pre-encoded, reused in a loop.

Meta side: Opus as a WhatsApp client sends it (48 kHz mono, 20 kbit/s, in-band
FEC, 20 ms frames, RTP clock 48000). PBX side: PCMU, 160 octets per 20 ms.
Whole periods per second, so the loop has no click. Also the checks run on
what came back: the dominant frequency of a decoded stream.
"""

from __future__ import annotations

import numpy as np

from gateway.media.codecs import codec_for

FRAMES_PER_SECOND = 50
META_TONE_HZ = 440.0  # WhatsApp user -> PBX
PBX_TONE_HZ = 800.0  # PBX -> WhatsApp user
AMPLITUDE = 0.25  # of full scale (-12 dBFS)


def _tone(rate: int, hz: float, seconds: float = 1.0) -> np.ndarray:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    return (np.sin(2 * np.pi * hz * t) * AMPLITUDE * 32767).astype("<i2")


def opus_tone_frames(hz: float = META_TONE_HZ) -> list[bytes]:
    """50 Opus payloads (one second) of a tone, encoded like a WhatsApp client."""
    import opuslib_next  # type: ignore[import-untyped]

    enc = opuslib_next.Encoder(48000, 1, opuslib_next.APPLICATION_VOIP)
    enc.bitrate = 20000
    enc.inband_fec = 1
    enc.packet_loss_perc = 10
    enc.signal = opuslib_next.SIGNAL_VOICE
    pcm = _tone(48000, hz, 2.0).tobytes()
    frames = [enc.encode(pcm[i * 1920 : (i + 1) * 1920], 960) for i in range(100)]
    return frames[50:]  # the second second: past the encoder's start-up


def pcmu_tone_frames(hz: float = PBX_TONE_HZ) -> list[bytes]:
    """50 PCMU payloads (one second, 160 octets each) of a tone."""
    codec = codec_for("PCMU")
    pcm = _tone(8000, hz).tobytes()
    return [codec.encode(pcm[i * 320 : (i + 1) * 320]) for i in range(FRAMES_PER_SECOND)]


def opus_silence() -> bytes:
    """The frame the gateway sends toward Meta when the PBX is quiet (same encoder)."""
    return codec_for("opus").silence()


def dominant_hz(pcm: bytes, rate: int) -> tuple[float, float]:
    """(frequency of the strongest FFT bin, RMS in dBFS) of 16-bit mono PCM."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size < rate // 10:
        return 0.0, -120.0
    rms = float(np.sqrt(np.mean(samples**2))) / 32768.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    freq = float(np.argmax(spectrum[1:]) + 1) * rate / samples.size
    return freq, 20 * float(np.log10(max(rms, 1e-6)))


def decode_opus(payloads: list[bytes], rate: int = 16000) -> bytes:
    import opuslib_next

    dec = opuslib_next.Decoder(rate, 1)
    return b"".join(dec.decode(p, rate // 50) for p in payloads)


def decode_pcmu(payloads: list[bytes]) -> bytes:
    codec = codec_for("PCMU")
    return b"".join(codec.decode(p) for p in payloads)
