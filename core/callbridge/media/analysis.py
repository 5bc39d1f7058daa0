"""Measuring audio: dominant frequency, level and silence trimming (tests and diagnostics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

SILENCE_DBFS = -120.0
"""What :func:`level_dbfs` reports for digital silence (and the floor of any level)."""

_FULL_SCALE = 32768.0
_BLOCK_SECONDS = 0.02
_DEFAULT_BLOCK = 160


def dominant_frequency(pcm: npt.NDArray[Any], sample_rate: int) -> float:
    """The frequency in Hz of the strongest spectral peak, or 0.0 for silence or no audio.

    Hann window, zero-padded real FFT, and a parabola through the log magnitudes of the peak
    bin and its neighbours; for a one-second tone the error is far below 1 Hz. DC is removed
    first and never reported.
    """
    samples = np.asarray(pcm, dtype=np.float64)
    if samples.size < 4 or np.ptp(samples) == 0:
        return 0.0
    samples = samples - samples.mean()
    size = 1 << int(2 * samples.size - 1).bit_length()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size), n=size))
    peak = int(np.argmax(spectrum[1:-1])) + 1
    left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float((peak + offset) * sample_rate / size)


def level_dbfs(pcm: npt.NDArray[Any]) -> float:
    """RMS level in dB relative to int16 full scale: ``20 * log10(rms / 32768)``.

    A full-scale sine therefore reads about -3.01 dBFS and a half-scale sine -9.03 dBFS.
    Silence and empty input read :data:`SILENCE_DBFS` (-120.0), which is also the floor.
    """
    samples = np.asarray(pcm, dtype=np.float64)
    if samples.size == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples))))
    if rms == 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * float(np.log10(rms / _FULL_SCALE)))


def summarize(pcm: npt.NDArray[Any], sample_rate: int) -> dict[str, Any]:
    """A JSON-able summary: ``samples``, ``seconds``, ``level_dbfs`` and ``dominant_hz``."""
    samples = np.asarray(pcm)
    return {
        "samples": int(samples.size),
        "seconds": round(samples.size / sample_rate, 3),
        "level_dbfs": round(level_dbfs(samples), 2),
        "dominant_hz": round(dominant_frequency(samples, sample_rate), 1),
    }


def trim_silence(
    pcm: npt.NDArray[np.int16], sample_rate: int | None = None, threshold_dbfs: float = -50.0
) -> npt.NDArray[np.int16]:
    """Drop leading and trailing 20 ms blocks quieter than ``threshold_dbfs``.

    Without ``sample_rate`` the blocks are 160 samples (20 ms at 8 kHz). Returns a view of
    ``pcm`` (empty when every block is quiet).
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    block = _DEFAULT_BLOCK if sample_rate is None else max(1, int(sample_rate * _BLOCK_SECONDS))
    blocks = -(-len(pcm) // block)
    if blocks == 0:
        return pcm[:0]
    padded = np.zeros(blocks * block, dtype=np.float64)
    padded[: len(pcm)] = pcm
    power = np.mean(np.square(padded.reshape(blocks, block)), axis=1)
    threshold = (_FULL_SCALE * 10.0 ** (threshold_dbfs / 20.0)) ** 2
    loud = np.flatnonzero(power >= threshold)
    if loud.size == 0:
        return pcm[:0]
    return pcm[loud[0] * block : (loud[-1] + 1) * block]
