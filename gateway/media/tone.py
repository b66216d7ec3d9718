"""Test, benchmark and demo helpers: generate a tone, measure one.

:func:`sine_pcm` needs only the standard library; :func:`measure` imports
numpy when called (numpy is a test/bench dependency, not a runtime one).
"""

from __future__ import annotations

import array
import math
import sys

__all__ = ["measure", "sine_pcm"]


def sine_pcm(freq: float, ms: float, rate: int = 8000, amplitude: float = 0.5) -> bytes:
    """16-bit little-endian mono PCM of a sine at ``amplitude`` of full scale."""
    count = int(rate * ms / 1000)
    step = 2.0 * math.pi * freq / rate
    peak = max(0.0, min(1.0, amplitude)) * 32767.0
    samples = array.array("h", [round(peak * math.sin(step * i)) for i in range(count)])
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def measure(pcm: bytes, rate: int) -> tuple[float, float]:
    """(dominant frequency in Hz, RMS level in dBFS) of 16-bit mono PCM.

    dBFS is relative to a full-scale square wave (RMS 32768), so a full-scale
    sine reads about -3 dBFS.  Silence gives ``(0.0, -inf)``.
    """
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return 0.0, float("-inf")
    rms = float(np.sqrt(np.mean(samples * samples)))
    if rms == 0.0:
        return 0.0, float("-inf")
    level = 20.0 * math.log10(rms / 32768.0)
    windowed = (samples - samples.mean()) * np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(windowed))
    peak = int(np.argmax(spectrum[1:])) + 1 if spectrum.size > 1 else 0
    # Parabolic interpolation of the log magnitude around the peak bin.
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        a, b, c = (math.log(float(spectrum[i]) + 1e-12) for i in (peak - 1, peak, peak + 1))
        denominator = a - 2.0 * b + c
        if denominator:
            offset = 0.5 * (a - c) / denominator
    return (peak + offset) * rate / samples.size, level
