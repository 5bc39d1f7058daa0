"""The media clock under an injected clock: steady cadence on absolute deadlines, late ticks
counted, long stalls skipped rather than burst, failing tickers contained."""

import asyncio

import pytest

from callbridge.media.clock import MediaClock


class FakeTime:
    """Monotonic time that only moves when the clock sleeps; ``delays`` adds lateness to
    chosen wake-ups (the event loop was busy)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: dict[int, float] = {}
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(seconds, 0.0) + self.delays.get(self.sleeps, 0.0)
        await asyncio.sleep(0)


class Recorder:
    def __init__(self, fake: FakeTime) -> None:
        self.fake = fake
        self.times: list[float] = []
        self.ticks: list[int] = []

    def on_tick(self, tick: int) -> None:
        self.times.append(self.fake.now)
        self.ticks.append(tick)


async def run_until(recorder: Recorder, count: int) -> None:
    async with asyncio.timeout(5):
        while len(recorder.times) < count:  # noqa: ASYNC110 - the fake clock ticks on yields
            await asyncio.sleep(0)


async def test_ticks_keep_absolute_deadlines_without_drift() -> None:
    fake = FakeTime()
    fake.delays = {5: 0.004, 6: 0.003}  # small late wake-ups must not shift later ticks
    clock = MediaClock(now=fake, sleep=fake.sleep)
    recorder = Recorder(fake)
    registration = clock.register(recorder)
    await run_until(recorder, 200)
    registration.cancel()
    start = recorder.times[0]
    deadlines = [start + k * 0.02 for k in range(200)]
    late = [t - d for t, d in zip(recorder.times, deadlines, strict=True)]
    assert max(late) == pytest.approx(0.004, abs=1e-9)
    assert abs(late[-1]) < 1e-9, "no drift after 4 s"
    assert recorder.ticks == list(range(200))
    assert clock.stats.late_ticks == 0, "under late_after (5 ms) is on time"
    assert not clock.running


async def test_late_ticks_are_counted_and_long_stalls_skipped() -> None:
    fake = FakeTime()
    fake.delays = {10: 0.012, 20: 0.5}  # one late wake-up, one 500 ms stall
    clock = MediaClock(now=fake, sleep=fake.sleep, max_catch_up=2)
    recorder = Recorder(fake)
    clock.register(recorder)
    await run_until(recorder, 100)
    await clock.aclose()
    assert clock.stats.late_ticks >= 2
    assert clock.stats.skipped_ticks == 25 - 2, "a 25-tick stall: catch up two, skip the rest"
    gaps = [b - a for a, b in zip(recorder.times, recorder.times[1:], strict=False)]
    assert sum(1 for gap in gaps if gap == 0) <= 3, "no burst of catch-up ticks"
    start = recorder.times[0]
    after = recorder.times[-1] - start
    assert after == pytest.approx((99 + 23) * 0.02, abs=1e-6), "schedule resumes on the grid"


async def test_a_failing_ticker_is_contained() -> None:
    fake = FakeTime()
    clock = MediaClock(now=fake, sleep=fake.sleep)

    class Broken:
        def on_tick(self, tick: int) -> None:
            raise ValueError("boom")

    clock.register(Broken())
    recorder = Recorder(fake)
    clock.register(recorder)
    await run_until(recorder, 10)
    await clock.aclose()
    assert clock.stats.failed_ticks >= 10
    assert len(recorder.times) >= 10


async def test_the_clock_runs_only_while_something_is_registered() -> None:
    clock = MediaClock()
    first = clock.register(Recorder(FakeTime()))
    second = clock.register(Recorder(FakeTime()))
    assert clock.running and clock.tickers == 2
    first.cancel()
    first.cancel()
    assert clock.running
    second.cancel()
    assert not clock.running and clock.tickers == 0
    await asyncio.sleep(0)


async def test_manual_clock_only_ticks_when_told() -> None:
    clock = MediaClock(autostart=False)
    recorder = Recorder(FakeTime())
    clock.register(recorder)
    await asyncio.sleep(0.05)
    assert recorder.ticks == []
    clock.run_tick()
    clock.run_tick()
    assert recorder.ticks == [0, 1]
