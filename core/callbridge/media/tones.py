"""Test tones and silence as int16 frames."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

_FULL_SCALE = 32767.0


class ToneGenerator:
    """A sine at ``frequency`` Hz, produced frame by frame with continuous phase.

    ``amplitude`` is a fraction of full scale (0.5 is a half-scale sine, about -9 dBFS).
    """

    def __init__(self, frequency: float, sample_rate: int, amplitude: float = 0.5) -> None:
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"amplitude must be between 0 and 1, got {amplitude}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.frequency = frequency
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self._step = 2.0 * math.pi * frequency / sample_rate
        self._phase = 0.0
        self._ramp = np.zeros(0, dtype=np.float64)
        self._scratch = np.zeros(0, dtype=np.float64)

    def next_frame(self, n_samples: int) -> npt.NDArray[np.int16]:
        """The next ``n_samples`` of the tone as a new int16 array."""
        if len(self._ramp) < n_samples:
            self._ramp = np.arange(n_samples, dtype=np.float64)
            self._scratch = np.empty(n_samples, dtype=np.float64)
        scratch = self._scratch[:n_samples]
        np.multiply(self._ramp[:n_samples], self._step, out=scratch)
        scratch += self._phase
        np.sin(scratch, out=scratch)
        scratch *= self.amplitude * _FULL_SCALE
        self._phase = math.fmod(self._phase + self._step * n_samples, 2.0 * math.pi)
        return np.rint(scratch).astype(np.int16)


def silence(n_samples: int) -> npt.NDArray[np.int16]:
    """``n_samples`` of digital silence."""
    return np.zeros(n_samples, dtype=np.int16)
