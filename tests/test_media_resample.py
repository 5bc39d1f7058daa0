import numpy as np
import pytest

from callbridge.media.analysis import dominant_frequency, level_dbfs
from callbridge.media.resample import StreamResampler
from callbridge.media.tones import ToneGenerator


def stream(resampler: StreamResampler, pcm: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces, start = [], 0
    while start < len(pcm):
        size = int(rng.integers(1, 500))
        pieces.append(resampler.process(pcm[start : start + size]))
        start += size
    pieces.append(resampler.flush())
    return np.concatenate(pieces)


def steady(pcm: np.ndarray, rate: int) -> np.ndarray:
    # Skip the filter's start-up and tail so only the steady tone is measured.
    return pcm[rate // 10 : -rate // 10]


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "frequency"),
    [(8000, 16000, 440), (16000, 8000, 1000), (8000, 48000, 440), (48000, 16000, 1000)],
)
def test_streamed_tone_keeps_frequency_and_level(in_rate, out_rate, frequency):
    tone = ToneGenerator(frequency, in_rate, amplitude=0.5).next_frame(in_rate)
    out = stream(StreamResampler(in_rate, out_rate), tone)
    assert out.dtype == np.int16
    assert len(out) == out_rate
    measured = steady(out, out_rate)
    assert abs(dominant_frequency(measured, out_rate) - frequency) < 2
    assert abs(level_dbfs(measured) - level_dbfs(steady(tone, in_rate))) < 1


def test_fixed_rate_engine_also_streams_correctly():
    tone = ToneGenerator(440, 8000).next_frame(8000)
    out = stream(StreamResampler(8000, 16000, low_latency=False, quality="MQ"), tone)
    assert len(out) == 16000
    assert abs(dominant_frequency(steady(out, 16000), 16000) - 440) < 2


def test_low_latency_mode_returns_audio_for_every_frame():
    resampler = StreamResampler(8000, 16000)
    tone = ToneGenerator(440, 8000)
    sizes = [len(resampler.process(tone.next_frame(160))) for _ in range(50)]
    assert all(size > 0 for size in sizes[2:])
    assert sum(sizes) >= 50 * 320 - 2 * 320


def test_downsampling_removes_content_above_the_new_nyquist():
    tone = ToneGenerator(5000, 16000, amplitude=0.5).next_frame(16000)
    out = stream(StreamResampler(16000, 8000), tone)
    assert level_dbfs(steady(out, 8000)) < -60


def test_equal_rates_pass_input_through():
    resampler = StreamResampler(16000, 16000)
    pcm = ToneGenerator(440, 16000).next_frame(320)
    assert resampler.process(pcm) is pcm
    assert resampler.flush().size == 0


def test_resampler_is_reusable_after_flush():
    resampler = StreamResampler(8000, 16000)
    tone = ToneGenerator(440, 8000).next_frame(8000)
    first = stream(resampler, tone)
    second = stream(resampler, tone)
    assert np.array_equal(first, second)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000)
    with pytest.raises(ValueError, match="int16"):
        StreamResampler(8000, 16000).process(np.zeros(160, dtype=np.float32))


def test_silence_stays_exactly_silent():
    resampler = StreamResampler(8000, 16000)
    out = np.concatenate([resampler.process(np.zeros(160, dtype=np.int16)) for _ in range(50)])
    assert out.size > 0
    assert not out.any()


def test_full_scale_overshoot_clips_instead_of_wrapping():
    square = np.where(np.arange(8000) % 16 < 8, 32767, -32768).astype(np.int16)
    out = stream(StreamResampler(8000, 16000), square)
    middle = steady(out, 16000)
    # Where the input sits at +full scale for a while, the output must not flip negative.
    expected_positive = np.repeat(square > 0, 2)[16000 // 10 : -16000 // 10]
    settled = np.convolve(expected_positive, np.ones(9), "same") == 9
    assert np.all(middle[settled] > 0)
    assert middle.max() == 32767
