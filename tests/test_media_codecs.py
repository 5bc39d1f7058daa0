import numpy as np
import pytest

from callbridge.media.codecs import Codec, get_codec
from callbridge.media.g711 import alaw_encode, ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import CodecSpec


@pytest.mark.parametrize(
    ("name", "rate", "frame_samples", "frame_bytes"),
    [
        ("PCMU", 8000, 160, 160),
        ("PCMA", 8000, 160, 160),
        ("L16", 8000, 160, 320),
        ("L16", 16000, 320, 640),
    ],
)
def test_frame_sizes(name, rate, frame_samples, frame_bytes):
    codec = get_codec(CodecSpec(name, rate))
    assert codec.frame_samples == frame_samples
    assert codec.frame_bytes == frame_bytes


def test_default_spec_is_pcmu_8k():
    assert get_codec(CodecSpec()) == Codec("PCMU", 8000)


def test_name_is_case_insensitive():
    assert get_codec(CodecSpec("pcma", 8000)).name == "PCMA"


@pytest.mark.parametrize(
    ("name", "rate", "message"),
    [
        ("PCMU", 16000, "PCMU does not support 16000 Hz"),
        ("PCMA", 48000, "PCMA does not support 48000 Hz"),
        ("L16", 24000, "L16 does not support 24000 Hz"),
        ("OPUS", 48000, "unsupported codec 'OPUS'"),
    ],
)
def test_unsupported_specs_raise_clear_errors(name, rate, message):
    with pytest.raises(ValueError, match=message):
        get_codec(CodecSpec(name, rate))


def test_g711_codecs_use_g711():
    pcm = ToneGenerator(440, 8000).next_frame(160)
    assert get_codec(CodecSpec("PCMU")).encode(pcm) == ulaw_encode(pcm)
    assert get_codec(CodecSpec("PCMA")).encode(pcm) == alaw_encode(pcm)


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_frame_round_trip(name):
    codec = get_codec(CodecSpec(name))
    pcm = ToneGenerator(1000, 8000).next_frame(codec.frame_samples)
    payload = codec.encode(pcm)
    assert len(payload) == codec.frame_bytes
    decoded = codec.decode(payload)
    assert decoded.dtype == np.int16
    assert np.max(np.abs(decoded.astype(int) - pcm)) < 600


def test_l16_is_little_endian():
    codec = get_codec(CodecSpec("L16", 16000))
    assert codec.encode(np.array([1, -2, 0x1234], dtype=np.int16)) == b"\x01\x00\xfe\xff\x34\x12"
    assert codec.decode(b"\x01\x00\xfe\xff\x34\x12").tolist() == [1, -2, 0x1234]


def test_l16_round_trip_is_exact():
    codec = get_codec(CodecSpec("L16", 16000))
    pcm = np.random.default_rng(7).integers(-32768, 32768, 640, dtype=np.int16)
    payload = codec.encode(pcm)
    assert len(payload) == 2 * codec.frame_bytes
    assert np.array_equal(codec.decode(payload), pcm)


def test_l16_decode_drops_trailing_odd_byte():
    codec = get_codec(CodecSpec("L16", 8000))
    assert codec.decode(b"\x01\x00\x02").tolist() == [1]
    assert codec.decode(b"\x07").size == 0


def test_l16_decode_returns_writable_copy():
    decoded = get_codec(CodecSpec("L16", 8000)).decode(b"\x01\x00\x02\x00")
    decoded[0] = 5
    assert decoded.tolist() == [5, 2]


def test_l16_encode_rejects_float():
    with pytest.raises(ValueError, match="int16"):
        get_codec(CodecSpec("L16", 8000)).encode(np.zeros(160))
