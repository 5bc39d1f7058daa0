import itertools
import math

import numpy as np
import pytest

from callbridge.media.analysis import dominant_frequency, level_dbfs
from callbridge.media.resample import (
    SUPPORTED_RATES,
    FrameResampler,
    StreamResampler,
    kaiser_prototype,
)
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


# --- FrameResampler: fixed-ratio polyphase filter for 20 ms frames ---------------------------

PAIRS = list(itertools.permutations(SUPPORTED_RATES, 2))
UP_PAIRS = [(a, b) for a, b in PAIRS if b > a]
DOWN_PAIRS = [(a, b) for a, b in PAIRS if b < a]
ALL_PAIRS = list(itertools.product(SUPPORTED_RATES, repeat=2))  # with equal rates


def frames_of(pcm: np.ndarray, rate: int) -> np.ndarray:
    return pcm.reshape(-1, rate // 50)


def run_frames(resampler: FrameResampler, pcm: np.ndarray) -> np.ndarray:
    return np.concatenate([resampler.process(f) for f in frames_of(pcm, resampler.in_rate)])


def filtered_at_once(resampler: FrameResampler, pcm: np.ndarray) -> np.ndarray:
    """The whole signal at once in float64: zero-stuff by L, convolve with the prototype,
    keep every M-th sample (no rounding)."""
    stuffed = np.zeros(len(pcm) * resampler.up)
    stuffed[:: resampler.up] = pcm
    return np.convolve(stuffed, resampler.taps)[: len(stuffed)][:: resampler.down]


def one_shot(resampler: FrameResampler, pcm: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(filtered_at_once(resampler, pcm)), -32768, 32767)


def tone(frequency: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return ToneGenerator(frequency, rate, amplitude=amplitude).next_frame(int(rate * seconds))


def component_dbfs(pcm: np.ndarray, rate: int, frequency: float) -> float:
    """Level of one sinusoid in ``pcm`` (peak amplitude, dB re full scale), Hann-windowed."""
    window = np.hanning(len(pcm))
    phasor = np.exp(-2j * np.pi * frequency * np.arange(len(pcm)) / rate)
    amplitude = 2 * abs(np.sum(pcm * window * phasor)) / window.sum()
    return 20 * np.log10(amplitude / 32768 + 1e-12)


def noise(rate: int, frames: int, scale: float = 6000, seed: int = 5) -> np.ndarray:
    samples = np.random.default_rng(seed).normal(0, scale, frames * rate // 50)
    return np.clip(samples, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize(("in_rate", "out_rate"), ALL_PAIRS)
def test_frame_resampler_returns_one_full_frame_per_call(in_rate, out_rate):
    resampler = FrameResampler(in_rate, out_rate)
    assert (resampler.in_samples, resampler.out_samples) == (in_rate // 50, out_rate // 50)
    for frame in frames_of(tone(440, in_rate, 0.2), in_rate):
        out = resampler.process(frame)
        assert out.dtype == np.int16
        assert out.shape == (out_rate // 50,)


def test_frame_resampler_equal_rates_return_the_input_itself():
    resampler = FrameResampler(16000, 16000)
    frame = tone(440, 16000, 0.02)
    assert resampler.process(frame) is frame
    assert resampler.delay_seconds == 0.0
    with pytest.raises(ValueError, match="320 samples"):
        resampler.process(frame[:160])


@pytest.mark.parametrize("frequency", [440, 1000])
@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frame_resampler_tone_keeps_frequency_and_level(in_rate, out_rate, frequency):
    pcm = tone(frequency, in_rate)
    out = run_frames(FrameResampler(in_rate, out_rate), pcm)
    assert len(out) == out_rate
    measured = out[out_rate // 25 :]  # after two frames the filter has settled
    assert abs(dominant_frequency(measured, out_rate) - frequency) < 1
    assert abs(level_dbfs(measured) - level_dbfs(pcm)) < 0.5


def test_frame_resampler_16k_to_8k_rejects_6khz():
    pcm = tone(6000, 16000)
    out = run_frames(FrameResampler(16000, 8000), pcm)
    # 6 kHz would alias to 2 kHz; the design puts it about 75 dB down.
    assert level_dbfs(out[160:]) < level_dbfs(pcm) - 40
    assert component_dbfs(out[160:], 8000, 2000) < component_dbfs(pcm, 16000, 6000) - 60


@pytest.mark.parametrize(("in_rate", "out_rate"), DOWN_PAIRS)
def test_frame_resampler_downsampling_rejects_aliases(in_rate, out_rate):
    # 1.2 x the new Nyquist: would alias to 0.8 x Nyquist, inside the passband.
    frequency = 0.6 * out_rate
    pcm = tone(frequency, in_rate)
    out = run_frames(FrameResampler(in_rate, out_rate), pcm)
    assert level_dbfs(out[out_rate // 25 :]) < level_dbfs(pcm) - 60


@pytest.mark.parametrize(("in_rate", "out_rate"), UP_PAIRS)
def test_frame_resampler_upsampling_rejects_images(in_rate, out_rate):
    frequency = 0.35 * in_rate  # 2.8 kHz at 8 kHz: the image lands at 5.2 kHz
    out = run_frames(FrameResampler(in_rate, out_rate), tone(frequency, in_rate))
    steady_out = out[out_rate // 25 :]
    wanted = component_dbfs(steady_out, out_rate, frequency)
    image = component_dbfs(steady_out, out_rate, in_rate - frequency)
    assert wanted > -9.5
    assert image < wanted - 60


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frame_by_frame_equals_one_shot_filtering(in_rate, out_rate):
    pcm = np.concatenate([noise(in_rate, 10), tone(1000, in_rate, 0.2, amplitude=0.9)])
    resampler = FrameResampler(in_rate, out_rate)
    out = run_frames(resampler, pcm)
    exact = filtered_at_once(resampler, pcm)
    differs = out != np.rint(exact)
    # float32 accumulation against float64: only values within a hair of k + 0.5 may round
    # the other way, and only by one.
    assert np.abs(out - np.rint(exact)).max() <= 1
    assert np.all(np.abs(exact[differs] - np.floor(exact[differs]) - 0.5) < 0.01)
    assert np.count_nonzero(differs) < len(out) / 20


@pytest.mark.parametrize("frequency", [440, 1000])
@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (16000, 24000)])
def test_frame_resampler_tone_is_continuous_across_frame_joins(in_rate, out_rate, frequency):
    out = run_frames(FrameResampler(in_rate, out_rate), tone(frequency, in_rate)).astype(int)
    steps = np.abs(np.diff(out[out_rate // 50 :]))
    size = out_rate // 50
    at_joins = steps[size - 1 :: size]
    inside = np.delete(steps, np.arange(size - 1, len(steps), size))
    assert at_joins.max() <= inside.max() + 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frame_resampler_delay_is_the_filter_group_delay(in_rate, out_rate):
    resampler = FrameResampler(in_rate, out_rate)
    assert resampler.delay_seconds == pytest.approx(8 / min(in_rate, out_rate))
    assert resampler.delay_seconds <= 0.001
    impulse_at = 10 * resampler.down
    frame = np.zeros(in_rate // 50, dtype=np.int16)
    frame[impulse_at] = 16000
    out = resampler.process(frame)
    expected = impulse_at * out_rate // in_rate + round(resampler.delay_seconds * out_rate)
    assert int(np.argmax(np.abs(out))) == expected


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frame_resampler_full_scale_square_clips_instead_of_wrapping(in_rate, out_rate):
    square = np.where(np.arange(in_rate) % (in_rate // 500) < in_rate // 1000, 32767, -32768)
    resampler = FrameResampler(in_rate, out_rate)
    out = run_frames(resampler, square.astype(np.int16))
    reference = one_shot(resampler, square)
    assert out.max() == 32767
    assert out.min() == -32768
    assert np.abs(out - reference).max() <= 1
    assert np.all(out[reference > 16384] > 0)
    assert np.all(out[reference < -16384] < 0)


@pytest.mark.parametrize(("in_rate", "out_rate"), ALL_PAIRS)
def test_frame_resampler_silence_stays_exactly_silent(in_rate, out_rate):
    resampler = FrameResampler(in_rate, out_rate)
    silent = np.zeros(in_rate // 50, dtype=np.int16)
    assert not np.concatenate([resampler.process(silent) for _ in range(10)]).any()
    # After audio, the filter's short tail ends within the first silent frame.
    run_frames(resampler, noise(in_rate, 3))
    resampler.process(silent)
    assert not np.concatenate([resampler.process(silent) for _ in range(5)]).any()


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frame_resampler_reset_forgets_earlier_audio(in_rate, out_rate):
    frame = noise(in_rate, 1, seed=11)
    fresh = FrameResampler(in_rate, out_rate).process(frame)
    resampler = FrameResampler(in_rate, out_rate)
    for _ in range(3):  # land on different slots of the internal ring
        run_frames(resampler, noise(in_rate, 5))
        assert not np.array_equal(resampler.process(frame), fresh)  # history matters...
        run_frames(resampler, noise(in_rate, 2, seed=9))
        resampler.reset()
        assert np.array_equal(resampler.process(frame), fresh)  # ...until reset
    resampler.reset()
    assert not resampler.process(np.zeros_like(frame)).any()


def test_frame_resampler_returns_a_new_array_each_call():
    resampler = FrameResampler(8000, 16000)
    first = resampler.process(tone(440, 8000, 0.02))
    kept = first.copy()
    second = resampler.process(tone(1000, 8000, 0.02))
    assert not np.shares_memory(first, second)
    assert np.array_equal(first, kept)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(0, 8000), (8000, -16000), (44100, 48000), (16000, 11025), (8000, 32000), (16000, None)],
)
def test_frame_resampler_rejects_unsupported_rates(in_rate, out_rate):
    with pytest.raises(ValueError, match="supports 8000, 16000, 24000, 48000 Hz"):
        FrameResampler(in_rate, out_rate)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros(159, dtype=np.int16), "160 samples"),
        (np.zeros(320, dtype=np.int16), "160 samples"),
        (np.zeros((160, 1), dtype=np.int16), "160 samples"),
        (np.zeros(160, dtype=np.float32), "int16"),
        (np.zeros(160, dtype=np.int32), "int16"),
        (np.zeros(160, dtype=">i2"), "int16"),
        ([0] * 160, "numpy array"),
    ],
)
def test_frame_resampler_rejects_bad_frames(frame, message):
    with pytest.raises(ValueError, match=message):
        FrameResampler(8000, 16000).process(frame)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_kaiser_prototype_shape_and_response(in_rate, out_rate):
    taps = kaiser_prototype(in_rate, out_rate)
    common = math.lcm(in_rate, out_rate)
    lower = min(in_rate, out_rate)
    up = out_rate // math.gcd(in_rate, out_rate)
    assert len(taps) == 2 * 8 * common // lower + 1
    assert np.allclose(taps, taps[::-1])
    assert taps.sum() == pytest.approx(up)
    response = np.abs(np.fft.rfft(taps / up, 1 << 16))
    frequencies = np.fft.rfftfreq(1 << 16, 1 / common)
    gain_db = 20 * np.log10(response + 1e-15)
    nyquist = lower / 2
    assert np.abs(gain_db[frequencies <= 0.65 * nyquist]).max() < 0.1
    assert gain_db[frequencies >= 1.15 * nyquist].max() < -60
