"""The adaptive playout buffer: drains standing delay, plays silence on underrun, counts."""

import numpy as np
import pytest

from callbridge.media.playout import PlayoutBuffer

FRAME = 160


def frame(value: int) -> np.ndarray:
    return np.full(FRAME, value, dtype=np.int16)


def test_fifo_and_copying() -> None:
    buffer = PlayoutBuffer(FRAME)
    source = frame(1)
    buffer.push(source)
    source[:] = 9
    buffer.push(frame(2))
    out = np.empty(FRAME, dtype=np.int16)
    assert buffer.pop_into(out) and (out == 1).all()
    assert buffer.pop_into(out) and (out == 2).all()
    assert buffer.stats.frames_in == 2 and buffer.stats.frames_out == 2


def test_underrun_plays_silence_and_counts_once_per_dry_spell() -> None:
    buffer = PlayoutBuffer(FRAME)
    out = frame(7)
    assert not buffer.pop_into(out) and not out.any()
    assert buffer.stats.underruns == 0, "nothing was flowing yet"
    buffer.push(frame(3))
    assert buffer.pop_into(out)
    for _ in range(5):
        assert not buffer.pop_into(out)
        assert not out.any(), "silence, never the last frame again"
    assert buffer.stats.underruns == 1
    buffer.push(frame(4))
    buffer.pop_into(out)
    buffer.pop_into(out)
    assert buffer.stats.underruns == 2


def test_a_burst_drains_back_to_the_target_within_two_windows() -> None:
    buffer = PlayoutBuffer(FRAME, target=1, window=15)
    out = np.empty(FRAME, dtype=np.int16)
    for value in range(12):  # a 240 ms burst arrives at once
        buffer.push(frame(value))
    depths = []
    for tick in range(60):  # then one frame per tick, one played per tick
        buffer.push(frame(100 + tick))
        buffer.tick()
        depths.append(buffer.depth)
        buffer.pop_into(out)
    assert depths[0] == 13
    assert depths[30:] == [1] * 30, "back to just the frame each tick takes"
    assert buffer.stats.drained == 12
    assert buffer.stats.max_depth == 13


def test_jitter_within_the_target_is_never_drained() -> None:
    buffer = PlayoutBuffer(FRAME, target=1, window=10)
    out = np.empty(FRAME, dtype=np.int16)
    for tick in range(200):
        # frames arrive in pairs every other tick: depth swings 0..1
        if tick % 2 == 0:
            buffer.push(frame(1))
            buffer.push(frame(2))
        buffer.tick()
        buffer.pop_into(out)
    assert buffer.stats.drained == 0


def test_overflow_drops_the_oldest() -> None:
    buffer = PlayoutBuffer(FRAME, capacity=3)
    for value in range(5):
        buffer.push(frame(value))
    out = np.empty(FRAME, dtype=np.int16)
    values = []
    while buffer.pop_into(out):
        values.append(int(out[0]))
    assert values == [2, 3, 4]
    assert buffer.stats.overflowed == 2


def test_markers_follow_their_audio_even_when_it_is_dropped() -> None:
    buffer = PlayoutBuffer(FRAME)
    assert not buffer.add_marker("now"), "nothing waiting: deliver at once"
    buffer.push(frame(1))
    buffer.push(frame(2))
    assert buffer.add_marker("m1")
    buffer.push(frame(3))
    assert buffer.add_marker("m2")
    out = np.empty(FRAME, dtype=np.int16)
    buffer.pop_into(out)
    assert buffer.due_markers() == []
    buffer.pop_into(out)
    assert buffer.due_markers() == ["m1"]
    assert buffer.clear() == 1
    assert buffer.due_markers() == ["m2"]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PlayoutBuffer(FRAME, target=6, capacity=5)
    with pytest.raises(ValueError):
        PlayoutBuffer(FRAME, target=0)
    with pytest.raises(ValueError):
        PlayoutBuffer(0)


def test_the_ring_starts_small_and_grows_in_order_up_to_the_capacity() -> None:
    buffer = PlayoutBuffer(4, capacity=11, window=1000)
    buffer.push(np.full(4, 1, dtype=np.int16))
    assert buffer._frames is not None and len(buffer._frames) < 11, "a few frames at first"
    assert buffer.pop() is not None
    for value in range(2, 20):  # wraps the small ring, grows twice, then overflows
        buffer.push(np.full(4, value, dtype=np.int16))
        if value == 4:
            assert int(buffer.pop()[0]) == 2
    assert buffer.depth == 11 and buffer.stats.overflowed == 6
    assert [int(buffer.pop()[0]) for _ in range(11)] == list(range(9, 20)), "oldest first"


def test_a_grown_ring_is_given_back_once_a_window_leaves_it_empty() -> None:
    buffer = PlayoutBuffer(4, capacity=50, window=5)
    for value in range(20):  # a burst
        buffer.push(np.full(4, value, dtype=np.int16))
    assert buffer._frames is not None and len(buffer._frames) >= 20
    for _ in range(20):
        buffer.tick()
        buffer.pop()
    assert buffer.depth == 0 and buffer._frames is None, "released, not kept at the burst's size"
    buffer.push(np.full(4, 7, dtype=np.int16))
    assert len(buffer._frames) == 4 and int(buffer.pop()[0]) == 7
