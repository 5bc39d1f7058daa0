"""Reading and writing 16-bit PCM WAV files (recordings, test fixtures)."""

from __future__ import annotations

import wave
from os import PathLike

import numpy as np
import numpy.typing as npt

_LE_INT16 = np.dtype("<i2")


def read_wav(path: str | PathLike[str]) -> tuple[npt.NDArray[np.int16], int]:
    """Read a 16-bit PCM WAV file as mono int16 and its sample rate.

    Multi-channel files are averaged to mono.

    Raises:
        ValueError: the file is not a 16-bit PCM WAV file.
    """
    try:
        with wave.open(str(path), "rb") as reader:
            width = reader.getsampwidth()
            channels = reader.getnchannels()
            rate = reader.getframerate()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file this reader supports ({exc})") from exc
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; only 16-bit PCM WAV is supported")
    frames = np.frombuffer(data, dtype=_LE_INT16, count=len(data) // (2 * channels) * channels)
    if channels == 1:
        return frames.astype(np.int16), rate
    summed = frames.reshape(-1, channels).sum(axis=1, dtype=np.int32)
    return np.rint(summed / channels).astype(np.int16), rate


def write_wav(path: str | PathLike[str], pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
    """Write int16 mono PCM as a 16-bit PCM WAV file."""
    samples = np.asarray(pcm)
    if samples.dtype != np.int16:
        raise ValueError(f"write_wav takes int16 PCM, got {samples.dtype}")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples.astype(_LE_INT16, copy=False).tobytes())
