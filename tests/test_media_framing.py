import asyncio

import numpy as np
import pytest

from callbridge.media import framing
from callbridge.media.framing import ByteFramer, FrameAssembler, Pacer


def uneven_chunks(data, seed: int, largest: int):
    rng = np.random.default_rng(seed)
    start = 0
    while start < len(data):
        size = int(rng.integers(0, largest))
        yield data[start : start + size]
        start += size


def test_frame_assembler_loses_and_duplicates_nothing():
    pcm = np.random.default_rng(1).integers(-32768, 32768, 10_007, dtype=np.int16)
    assembler = FrameAssembler(160)
    frames = []
    for chunk in uneven_chunks(pcm, seed=2, largest=700):
        frames.extend(assembler.push(chunk))
    assert all(frame.shape == (160,) and frame.dtype == np.int16 for frame in frames)
    assert len(frames) == len(pcm) // 160
    assert assembler.pending == len(pcm) % 160
    assert np.array_equal(np.concatenate(frames), pcm[: len(frames) * 160])


def test_frame_assembler_small_and_exact_pushes():
    assembler = FrameAssembler(4)
    assert assembler.push(np.array([1, 2], dtype=np.int16)) == []
    assert assembler.pending == 2
    frames = assembler.push(np.array([3, 4, 5, 6, 7, 8, 9, 10, 11], dtype=np.int16))
    assert [frame.tolist() for frame in frames] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert assembler.pending == 3
    assert [f.tolist() for f in assembler.push(np.array([12], dtype=np.int16))] == [[9, 10, 11, 12]]
    assert assembler.pending == 0
    assert assembler.push(np.zeros(0, dtype=np.int16)) == []


def test_frame_assembler_frames_are_independent_copies():
    assembler = FrameAssembler(3)
    source = np.arange(7, dtype=np.int16)
    frames = assembler.push(source)
    source[:] = -1
    frames[0][:] = 99
    assert frames[1].tolist() == [3, 4, 5]
    assert [f.tolist() for f in assembler.push(np.array([7, 8], dtype=np.int16))] == [[6, 7, 8]]


def test_frame_assembler_clear_drops_remainder():
    assembler = FrameAssembler(4)
    assembler.push(np.array([1, 2, 3], dtype=np.int16))
    assembler.clear()
    assert assembler.pending == 0
    assert [f.tolist() for f in assembler.push(np.arange(4, dtype=np.int16))] == [[0, 1, 2, 3]]


def test_byte_framer_loses_and_duplicates_nothing():
    data = np.random.default_rng(4).integers(0, 256, 5_003, dtype=np.uint8).tobytes()
    framer = ByteFramer(160)
    frames = []
    for chunk in uneven_chunks(data, seed=5, largest=500):
        frames.extend(framer.push(chunk))
    assert all(len(frame) == 160 for frame in frames)
    assert b"".join(frames) == data[: len(frames) * 160]
    assert framer.pending == len(data) % 160
    framer.clear()
    assert framer.pending == 0
    assert framer.push(b"x" * 160) == [b"x" * 160]


def test_framers_reject_nonpositive_sizes():
    with pytest.raises(ValueError):
        FrameAssembler(0)
    with pytest.raises(ValueError):
        ByteFramer(-1)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class FakeAsyncio:
    """Stands in for the asyncio module inside framing: a clock that only sleeps move."""

    def __init__(self) -> None:
        self.loop = FakeLoop()

    def get_running_loop(self) -> FakeLoop:
        return self.loop

    async def sleep(self, seconds: float) -> None:
        self.loop.now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeAsyncio()
    monkeypatch.setattr(framing, "asyncio", fake)
    return fake.loop


async def send_times(pacer: Pacer, loop: FakeLoop, count: int) -> list[float]:
    times = []
    for _ in range(count):
        await pacer.wait()
        times.append(round(loop.now - 100.0, 6))
    return times


async def test_pacer_sends_lead_at_once_then_real_time(fake_clock):
    times = await send_times(Pacer(interval=0.02, lead=3), fake_clock, 8)
    assert times == [0.0, 0.0, 0.0, 0.0, 0.02, 0.04, 0.06, 0.08]


async def test_pacer_does_not_drift_when_sender_is_slightly_late(fake_clock):
    pacer = Pacer(interval=0.02, lead=0)
    await pacer.wait()
    fake_clock.now += 0.05  # the sender was busy for 2.5 intervals
    times = await send_times(pacer, fake_clock, 4)
    # Frames 1 and 2 were due already; frame 3 and 4 keep the original schedule.
    assert times == [0.05, 0.05, 0.06, 0.08]


async def test_pacer_reanchors_when_far_behind(fake_clock):
    pacer = Pacer(interval=0.02, lead=2)
    await send_times(pacer, fake_clock, 5)
    fake_clock.now += 1.0
    start = fake_clock.now - 100.0
    times = await send_times(pacer, fake_clock, 5)
    assert times == pytest.approx([start, start, start, start + 0.02, start + 0.04])


async def test_pacer_reset_restarts_the_lead(fake_clock):
    pacer = Pacer(interval=0.02, lead=1)
    assert await send_times(pacer, fake_clock, 4) == [0.0, 0.0, 0.02, 0.04]
    pacer.reset()
    assert await send_times(pacer, fake_clock, 3) == [0.04, 0.04, 0.06]


async def test_pacer_never_runs_ahead_of_real_time():
    interval, lead = 0.005, 2
    pacer = Pacer(interval=interval, lead=lead)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = []
    for _ in range(12):
        await pacer.wait()
        sent.append(loop.time() - start)
    for index, moment in enumerate(sent):
        assert moment >= (index - lead) * interval - 1e-3
    assert sent == sorted(sent)


def test_pacer_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Pacer(interval=0)
    with pytest.raises(ValueError):
        Pacer(lead=-1)
