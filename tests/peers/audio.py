"""Make test tones and measure what arrived: dominant frequency and level.

tone_wav(path, 440, 30)                      # 48 kHz mono 16-bit sine, -6 dBFS
freq, dbfs = analyse_wav(path, skip_seconds=1)
assert_tone(path, 440, tolerance=0.02, min_dbfs=-30)
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt


def tone_wav(
    path: Path | str,
    freq: float,
    seconds: float,
    rate: int = 48000,
    *,
    amplitude: float = 0.5,
    channels: int = 1,
) -> Path:
    """Write a sine of `freq` Hz (0 gives silence) as 16-bit PCM WAV; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    samples = amplitude * np.sin(2 * np.pi * freq * t) if freq else np.zeros(n)
    pcm = np.round(samples * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path | str) -> tuple[npt.NDArray[np.float64], int]:
    """Samples as floats in [-1, 1] (channels averaged) and the sample rate."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples not supported")
    if channels > 1:
        data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1)
    return data, rate


def analyse_wav(
    path: Path | str, skip_seconds: float = 0.5, max_seconds: float | None = None
) -> tuple[float, float]:
    """(dominant frequency in Hz, RMS level in dBFS) of the WAV after skipping
    `skip_seconds` (call setup, jitter buffer fill) and over at most
    `max_seconds`. The frequency is refined by parabolic interpolation of the
    Hann-windowed spectrum's peak; silence gives (0.0, -inf)."""
    data, rate = read_wav(path)
    data = data[int(skip_seconds * rate) :]
    if max_seconds is not None:
        data = data[: int(max_seconds * rate)]
    if data.size < 256:
        raise ValueError(f"{path}: only {data.size} samples left after skipping {skip_seconds} s")
    rms = float(np.sqrt(np.mean(data**2)))
    dbfs = 20 * np.log10(rms) if rms > 0 else float("-inf")
    if rms == 0:
        return 0.0, dbfs
    spectrum = np.abs(np.fft.rfft((data - data.mean()) * np.hanning(data.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    shift = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom else 0.0
    return float((k + shift) * rate / data.size), float(dbfs)


def assert_tone(
    path: Path | str,
    freq: float,
    tolerance: float = 0.02,
    min_dbfs: float = -30.0,
    *,
    skip_seconds: float = 0.5,
    max_seconds: float | None = None,
) -> tuple[float, float]:
    """Assert the WAV's dominant frequency is within `tolerance` (relative) of
    `freq` and its RMS is at least `min_dbfs`; returns (frequency, dBFS)."""
    found, dbfs = analyse_wav(path, skip_seconds=skip_seconds, max_seconds=max_seconds)
    assert dbfs >= min_dbfs, f"{path}: level {dbfs:.1f} dBFS below {min_dbfs} dBFS (silence?)"
    assert abs(found - freq) <= tolerance * freq, (
        f"{path}: dominant frequency {found:.1f} Hz, expected {freq} Hz ± {tolerance:.0%}"
    )
    return found, dbfs


# Formants (F1, F2, F3 in Hz) of seven vowels, for the speech-like test signal.
_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
    (660, 1720, 2410),
)


def speech_like(rate: int, seconds: float, *, seed: int = 11, level: float = 0.3) -> bytes:
    """A speech-like signal in the spirit of ITU-T P.501's artificial voice, as 16-bit
    mono PCM at ``rate``: voiced syllables (a harmonic series on a moving pitch of
    about 90-165 Hz, shaped by the formants of a vowel drawn per syllable) of
    120-300 ms with short gaps and some pauses. Every harmonic stays below 3400 Hz,
    so the same ``seed`` gives the same signal at 8000 and at 48000 Hz (the PESQ
    reference and what the WhatsApp side sends). Peak ``level`` of full scale."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 2.3 * t + 1)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    env = np.zeros(n)
    vowel = np.zeros(n, dtype=np.int64)
    pos = 0.3
    while pos < seconds - 0.3:
        dur = rng.uniform(0.12, 0.3)
        a, b = int(pos * rate), int(min(seconds, pos + dur) * rate)
        env[a:b] = np.sin(np.pi * np.linspace(0, 1, b - a)) ** 0.7 * rng.uniform(0.6, 1.0)
        vowel[a:b] = rng.integers(len(_VOWELS))
        pause = rng.random() < 0.25
        pos += dur + (rng.uniform(0.25, 0.5) if pause else rng.uniform(0.02, 0.06))
    out = np.zeros(n)
    for k in range(1, 40):
        fk = k * f0
        amp = np.zeros(n)
        for i, (f1, f2, f3) in enumerate(_VOWELS):
            m = vowel == i
            if m.any():
                f = fk[m]
                amp[m] = sum(
                    h / (1 + ((f - fc) / bw) ** 2)
                    for fc, bw, h in ((f1, 90, 1.0), (f2, 110, 0.5), (f3, 160, 0.25))
                )
        amp *= (fk < 3400) / np.sqrt(k)
        out += amp * np.sin(k * phase)
    out *= env
    out *= level / (np.max(np.abs(out)) + 1e-9)
    return np.round(out * 32767).astype("<i2").tobytes()


def align(reference: bytes, degraded: bytes, rate: int, max_shift: float = 1.0) -> bytes:
    """``degraded`` moved so that it lines up with ``reference`` (the delay found by
    cross-correlation within ``max_shift`` seconds) and cut or padded to its length."""
    ref = np.frombuffer(reference, dtype="<i2").astype(np.float64)
    deg = np.frombuffer(degraded, dtype="<i2").astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(ref) + len(deg))))
    corr = np.fft.irfft(np.fft.rfft(deg, size) * np.conj(np.fft.rfft(ref, size)), size)
    span = int(max_shift * rate)
    lags = np.concatenate([np.arange(0, span), np.arange(-span, 0)])
    values = np.concatenate([corr[:span], corr[-span:]])
    lag = int(lags[int(np.argmax(values))])
    out = np.zeros(len(ref), dtype="<i2")
    src = np.frombuffer(degraded, dtype="<i2")
    if lag >= 0:
        part = src[lag : lag + len(ref)]
        out[: len(part)] = part
    else:
        part = src[: len(ref) + lag]
        out[-lag : -lag + len(part)] = part
    return out.tobytes()


def pesq_nb(reference: bytes, degraded: bytes) -> float:
    """PESQ (ITU-T P.862) narrowband MOS-LQO of 8 kHz 16-bit PCM ``degraded`` against
    ``reference``, after :func:`align`. Needs the test-only ``pesq`` package."""
    from pesq import pesq  # type: ignore[import-untyped]

    ref = np.frombuffer(reference, dtype="<i2").astype(np.float64)
    deg = np.frombuffer(align(reference, degraded, 8000), dtype="<i2").astype(np.float64)
    return float(pesq(8000, ref, deg, "nb"))
