import numpy as np
import pytest

from callbridge.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from callbridge.media.tones import ToneGenerator

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
PER_LAW = pytest.mark.parametrize(
    ("encode", "decode"),
    [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)],
    ids=["ulaw", "alaw"],
)


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = decoded.astype(np.float64) - reference
    return 10 * np.log10(np.sum(reference**2) / np.sum(noise**2))


@pytest.mark.parametrize(
    ("code", "value"), [(0x00, -32124), (0x80, 32124), (0xFF, 0), (0x7F, 0), (0x7E, -8)]
)
def test_ulaw_decode_known_values(code, value):
    assert ulaw_decode(bytes([code]))[0] == value


@pytest.mark.parametrize(
    ("code", "value"), [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0x80, 5504)]
)
def test_alaw_decode_known_values(code, value):
    assert alaw_decode(bytes([code]))[0] == value


def test_encode_known_values():
    pcm = np.array([0, 32767, -32768, 1, -1], dtype=np.int16)
    assert ulaw_encode(pcm) == bytes([0xFF, 0x80, 0x00, 0xFF, 0x7F])
    assert alaw_encode(pcm[:3]) == bytes([0xD5, 0xAA, 0x2A])


def test_silence_encodes_to_standard_silence_bytes():
    silence = np.zeros(160, dtype=np.int16)
    assert ulaw_encode(silence) == b"\xff" * 160
    assert alaw_encode(silence) == b"\xd5" * 160


def test_decode_returns_int16_of_input_length():
    for decode in (ulaw_decode, alaw_decode):
        out = decode(b"\x12" * 160)
        assert out.dtype == np.int16
        assert out.shape == (160,)


def test_empty_input():
    empty = np.zeros(0, dtype=np.int16)
    assert ulaw_encode(empty) == b""
    assert alaw_encode(empty) == b""
    assert ulaw_decode(b"").size == 0
    assert alaw_decode(b"").size == 0


def test_encode_rejects_non_int16():
    with pytest.raises(ValueError, match="int16"):
        ulaw_encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        alaw_encode(np.zeros(4, dtype=np.int32))


def test_encode_accepts_strided_views():
    pcm = ToneGenerator(440, 8000).next_frame(320)
    assert ulaw_encode(pcm[::2]) == ulaw_encode(pcm[::2].copy())


def test_ulaw_is_sign_symmetric():
    positive = ALL_INT16[32769:]  # 1 .. 32767
    codes_positive = np.frombuffer(ulaw_encode(positive), dtype=np.uint8)
    codes_negative = np.frombuffer(ulaw_encode(-positive), dtype=np.uint8)
    assert np.array_equal(codes_negative, codes_positive & 0x7F)


@PER_LAW
def test_round_trip_error_is_bounded(encode, decode):
    decoded = decode(encode(ALL_INT16)).astype(np.int64)
    original = ALL_INT16.astype(np.int64)
    error = np.abs(decoded - original)
    assert np.all(error <= np.abs(original) / 31 + 8)


@PER_LAW
def test_decoded_values_are_fixed_points(encode, decode):
    levels = decode(ALL_CODES)
    assert np.array_equal(decode(encode(levels)), levels)


@PER_LAW
@pytest.mark.parametrize("frequency", [440, 1000])
def test_tone_round_trip_snr_above_30_db(encode, decode, frequency):
    tone = ToneGenerator(frequency, 8000, amplitude=0.5).next_frame(8000)
    assert snr_db(tone, decode(encode(tone))) > 30


def test_matches_audioop_where_the_reference_agrees():
    audioop = pytest.importorskip("audioop")
    raw = ALL_INT16.tobytes()
    assert np.array_equal(
        ulaw_decode(ALL_CODES), np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    )
    assert np.array_equal(
        alaw_decode(ALL_CODES), np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    )
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(raw, 2)
    # audioop shifts negatives right before taking the magnitude, which rounds a few boundary
    # values one code away; for non-negative input the two agree exactly.
    non_negative = ALL_INT16[32768:]
    assert ulaw_encode(non_negative) == audioop.lin2ulaw(non_negative.tobytes(), 2)
