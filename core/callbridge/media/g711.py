"""ITU-T G.711 μ-law and A-law, encoded and decoded through numpy lookup tables.

The encode tables have one entry per int16 value (indexed by the sample's bit pattern as
uint16); the decode tables have one entry per code byte. All four are built once at import.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _all_int16() -> npt.NDArray[np.int32]:
    # Position i holds the int16 whose bit pattern is i, matching pcm.view(np.uint16) indexing.
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(magnitude: npt.NDArray[np.int32], first_edge: int) -> npt.NDArray[np.int32]:
    segment = np.zeros_like(magnitude)
    for step in range(7):
        segment += magnitude >= (first_edge << step)
    return segment


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16()
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + _ULAW_BIAS
    exponent = _segment(magnitude, 0x100)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    encoded: npt.NDArray[np.uint8] = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return encoded


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << exponent
    return np.where(code & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 3
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -pcm - 1, pcm)
    segment = _segment(magnitude, 0x20)
    shift = np.maximum(segment, 1)
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    # Magnitudes beyond the last segment saturate at the largest code.
    code = np.where(magnitude > 0xFFF, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    level = (code & 0x0F) << 4
    level = np.where(segment == 0, level + 8, (level + 0x108) << np.maximum(segment - 1, 0))
    return np.where(code & 0x80, level, -level).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_ENCODE = _build_alaw_encode()
_ALAW_DECODE = _build_alaw_decode()


def _bit_patterns(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise ValueError(f"G.711 encodes int16 PCM, got {pcm.dtype}")
    return pcm.view(np.uint16)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 PCM as G.711 μ-law, one byte per sample (silence encodes as ``0xFF``)."""
    return _ULAW_ENCODE[_bit_patterns(pcm)].tobytes()


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 μ-law bytes to a new int16 PCM array."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 PCM as G.711 A-law, one byte per sample (silence encodes as ``0xD5``)."""
    return _ALAW_ENCODE[_bit_patterns(pcm)].tobytes()


def alaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 A-law bytes to a new int16 PCM array."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
