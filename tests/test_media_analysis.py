import numpy as np
import pytest

from callbridge.media.analysis import (
    SILENCE_DBFS,
    dominant_frequency,
    level_dbfs,
    summarize,
    trim_silence,
)
from callbridge.media.tones import ToneGenerator, silence


def tone(frequency, rate=16000, seconds=1.0, amplitude=0.5):
    return ToneGenerator(frequency, rate, amplitude).next_frame(int(rate * seconds))


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("frequency", [440, 1000, 1234.5])
def test_dominant_frequency_of_one_second_tone(frequency, rate):
    assert dominant_frequency(tone(frequency, rate), rate) == pytest.approx(frequency, abs=0.5)


def test_dominant_frequency_of_short_tone():
    assert dominant_frequency(tone(1000, 8000, seconds=0.1), 8000) == pytest.approx(1000, abs=5)


def test_dominant_frequency_picks_the_louder_tone():
    mix = tone(440, amplitude=0.2).astype(np.int32) + tone(1000, amplitude=0.4)
    assert dominant_frequency(mix.astype(np.int16), 16000) == pytest.approx(1000, abs=1)


def test_dominant_frequency_ignores_dc_offset():
    shifted = tone(440, amplitude=0.1).astype(np.int32) + 20000
    assert dominant_frequency(shifted.astype(np.int16), 16000) == pytest.approx(440, abs=1)


def test_dominant_frequency_of_silence_and_empty_is_zero():
    assert dominant_frequency(silence(16000), 16000) == 0.0
    assert dominant_frequency(np.full(100, 7, dtype=np.int16), 16000) == 0.0
    assert dominant_frequency(np.zeros(0, dtype=np.int16), 16000) == 0.0


def test_level_of_half_scale_sine():
    assert level_dbfs(tone(1000, amplitude=0.5)) == pytest.approx(-9.03, abs=0.02)


def test_level_of_full_scale_square_is_zero_dbfs():
    square = np.where(np.arange(1600) % 20 < 10, 32767, -32768).astype(np.int16)
    assert level_dbfs(square) == pytest.approx(0.0, abs=0.01)


def test_level_follows_amplitude():
    assert level_dbfs(tone(440, amplitude=0.05)) - level_dbfs(tone(440, amplitude=0.5)) == (
        pytest.approx(-20.0, abs=0.05)
    )


def test_level_of_silence_is_the_floor():
    assert level_dbfs(silence(320)) == SILENCE_DBFS == -120.0
    assert level_dbfs(np.zeros(0, dtype=np.int16)) == SILENCE_DBFS


def test_summarize():
    summary = summarize(tone(440, 8000, seconds=0.5), 8000)
    assert summary == {"samples": 4000, "seconds": 0.5, "level_dbfs": -9.03, "dominant_hz": 440.0}


def test_trim_silence_keeps_the_loud_blocks():
    rate = 8000
    audio = np.concatenate([silence(800), tone(440, rate, 0.1), silence(480)])
    trimmed = trim_silence(audio, rate)
    assert len(trimmed) == 800
    assert np.array_equal(trimmed, audio[800:1600])
    assert trim_silence(silence(1000), rate).size == 0


def test_trim_silence_without_rate_uses_160_sample_blocks():
    audio = np.concatenate([silence(500), tone(440, 8000, 0.1), silence(500)])
    trimmed = trim_silence(audio)
    assert 800 <= len(trimmed) <= 800 + 2 * 160
    assert level_dbfs(trimmed) > -10
    with pytest.raises(ValueError, match="sample_rate"):
        trim_silence(audio, -50)


def test_trim_silence_threshold():
    quiet = tone(440, 8000, 0.1, amplitude=0.001)  # about -63 dBFS
    audio = np.concatenate([silence(320), quiet, silence(320)])
    assert len(trim_silence(audio, 8000)) == 0
    assert len(trim_silence(audio, 8000, threshold_dbfs=-70)) == 800


def test_tone_generator_is_phase_continuous():
    whole = ToneGenerator(997, 16000).next_frame(4000)
    generator = ToneGenerator(997, 16000)
    pieces = np.concatenate([generator.next_frame(size) for size in [1, 159, 320, 7, 3513]])
    assert np.max(np.abs(whole.astype(int) - pieces)) <= 1


def test_tone_generator_amplitude_and_validation():
    frame = ToneGenerator(1000, 8000, amplitude=1.0).next_frame(8000)
    assert frame.max() == 32767
    assert frame.min() == -32767
    with pytest.raises(ValueError):
        ToneGenerator(1000, 8000, amplitude=1.5)
