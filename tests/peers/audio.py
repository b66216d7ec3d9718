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
    data = data[int(skip_seconds * rate):]
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
