import wave

import numpy as np
import pytest

from callbridge.media.tones import ToneGenerator
from callbridge.media.wav import read_wav, write_wav


def test_round_trip(tmp_path):
    pcm = ToneGenerator(440, 16000).next_frame(16000)
    path = tmp_path / "tone.wav"
    write_wav(path, pcm, 16000)
    read, rate = read_wav(path)
    assert rate == 16000
    assert read.dtype == np.int16
    assert np.array_equal(read, pcm)


def test_written_file_is_mono_16_bit(tmp_path):
    path = tmp_path / "x.wav"
    write_wav(path, np.arange(10, dtype=np.int16), 8000)
    with wave.open(str(path), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        assert reader.getnframes() == 10


def test_stereo_is_averaged_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left = np.array([100, -200, 32767, -32768], dtype=np.int16)
    right = np.array([300, -400, 32767, -32768], dtype=np.int16)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())
    mono, rate = read_wav(path)
    assert rate == 8000
    assert mono.tolist() == [200, -300, 32767, -32768]


def test_eight_bit_is_rejected(tmp_path):
    path = tmp_path / "8bit.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8000)
        writer.writeframes(b"\x80" * 100)
    with pytest.raises(ValueError, match="only 16-bit PCM"):
        read_wav(path)


def test_non_wav_is_rejected(tmp_path):
    path = tmp_path / "not.wav"
    path.write_bytes(b"this is not a wav file at all")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(path)


def test_write_rejects_float(tmp_path):
    with pytest.raises(ValueError, match="int16"):
        write_wav(tmp_path / "f.wav", np.zeros(4), 8000)
