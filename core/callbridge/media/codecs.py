"""Codecs on the provider leg: G.711 μ-law (PCMU), A-law (PCMA) and little-endian L16."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callbridge.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from callbridge.protocols import CodecSpec

FRAMES_PER_SECOND = 50
"""20 ms frames."""

_SUPPORTED_RATES: dict[str, tuple[int, ...]] = {
    "PCMU": (8000,),
    "PCMA": (8000,),
    "L16": (8000, 16000),
}
_L16 = np.dtype("<i2")


@dataclass(frozen=True)
class Codec:
    """One supported codec at one sample rate; encodes and decodes int16 mono PCM.

    Attributes:
        name: ``PCMU``, ``PCMA`` or ``L16`` (little-endian signed 16-bit).
        sample_rate: samples per second (8000 for G.711; 8000 or 16000 for L16).
    """

    name: str
    sample_rate: int

    def __post_init__(self) -> None:
        rates = _SUPPORTED_RATES.get(self.name)
        if rates is None:
            raise ValueError(
                f"unsupported codec {self.name!r}; supported: {', '.join(_SUPPORTED_RATES)}"
            )
        if self.sample_rate not in rates:
            allowed = " or ".join(str(rate) for rate in rates)
            raise ValueError(
                f"codec {self.name} does not support {self.sample_rate} Hz; use {allowed} Hz"
            )

    @property
    def bytes_per_sample(self) -> int:
        """1 for G.711, 2 for L16."""
        return 2 if self.name == "L16" else 1

    @property
    def frame_samples(self) -> int:
        """Samples in one 20 ms frame."""
        return self.sample_rate // FRAMES_PER_SECOND

    @property
    def frame_bytes(self) -> int:
        """Encoded bytes in one 20 ms frame."""
        return self.frame_samples * self.bytes_per_sample

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """Encode int16 PCM (any length) to this codec's bytes."""
        if self.name == "PCMU":
            return ulaw_encode(pcm)
        if self.name == "PCMA":
            return alaw_encode(pcm)
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise ValueError(f"L16 encodes int16 PCM, got {pcm.dtype}")
        return pcm.astype(_L16, copy=False).tobytes()

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        """Decode bytes to a new int16 PCM array; a trailing odd byte of L16 is dropped."""
        if self.name == "PCMU":
            return ulaw_decode(data)
        if self.name == "PCMA":
            return alaw_decode(data)
        samples = np.frombuffer(data, dtype=_L16, count=len(data) // 2)
        return samples.astype(np.int16)


def get_codec(spec: CodecSpec) -> Codec:
    """The :class:`Codec` for ``spec``; the name is case-insensitive.

    Raises:
        ValueError: the name or the sample rate is not supported.
    """
    return Codec(name=spec.name.upper(), sample_rate=spec.sample_rate)
