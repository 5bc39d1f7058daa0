"""The process's one media clock: every room's mix and every leg's paced output run on its ticks.

One task wakes every 20 ms on absolute deadlines (``start + k * period``) and calls each
registered :class:`Ticker` in registration order. Nothing else on the media path keeps time:
there are no per-room timers, per-call pacers or per-leg wake-up events. A new kind of leg
(agent WebSocket, RTP, WebRTC) is a leg of a room, and rooms are the clock's tickers.

Late wake-ups are counted: a tick that starts more than :attr:`MediaClock.late_after` past its
deadline is *late*; when the loop falls more than :attr:`MediaClock.max_catch_up` ticks behind
(a stall of the event loop), the missed ticks are *skipped* rather than run in a burst, and the
schedule carries on from the current time, so a stall never turns into lasting delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("callbridge.media.clock")

FRAME_SECONDS = 0.02
"""The period of the clock: one 20 ms audio frame."""


class Ticker(Protocol):
    """Something the media clock drives once per 20 ms tick (a room)."""

    def on_tick(self, tick: int) -> None:
        """Do this tick's work without blocking; ``tick`` counts up from the clock's start.

        A raising ticker is logged (at most once a second per clock) and counted; the clock and
        the other tickers carry on.
        """
        ...


@dataclass
class ClockStats:
    """What the clock has done since it was created.

    Attributes:
        ticks: ticks run.
        late_ticks: ticks that started more than ``late_after`` seconds past their deadline.
        skipped_ticks: ticks not run because the loop had fallen too far behind.
        max_lateness: the largest lateness of a run tick, in seconds.
        failed_ticks: ticker calls that raised.
    """

    ticks: int = 0
    late_ticks: int = 0
    skipped_ticks: int = 0
    max_lateness: float = 0.0
    failed_ticks: int = 0


class Registration:
    """A ticker's place on the clock; :meth:`cancel` takes it off (idempotent)."""

    __slots__ = ("_clock", "ticker")

    def __init__(self, clock: MediaClock, ticker: Ticker) -> None:
        self._clock = clock
        self.ticker = ticker

    def cancel(self) -> None:
        self._clock._unregister(self)


class MediaClock:
    """One 20 ms clock for the whole process (see the module docstring).

    The task runs only while tickers are registered: the first :meth:`register` starts it (a
    running event loop is required), and it ends when the last registration is cancelled.

    Args:
        period: seconds per tick.
        now: monotonic seconds; defaults to the running loop's clock. Tests inject a fake.
        sleep: ``asyncio.sleep`` by default; a test clock advances its fake time instead.
        late_after: lateness beyond which a tick is counted late.
        max_catch_up: ticks run back to back to catch up after a late wake-up; further missed
            ticks are skipped.
        autostart: start the task on the first registration; ``False`` for tests that call
            :meth:`run_tick` by hand.
    """

    def __init__(
        self,
        *,
        period: float = FRAME_SECONDS,
        now: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        late_after: float = 0.005,
        max_catch_up: int = 2,
        autostart: bool = True,
    ) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.period = period
        self.late_after = late_after
        self.max_catch_up = max_catch_up
        self.stats = ClockStats()
        self._now = now
        self._autostart = autostart
        self._sleep = sleep
        self._registrations: list[Registration] = []
        self._task: asyncio.Task[None] | None = None
        self._tick = 0
        self._last_failure_log = float("-inf")

    @property
    def running(self) -> bool:
        """Whether the clock's task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Whether the clock does its job: idle with nothing registered, or its task alive
        (a hand-driven clock always is)."""
        return not self._registrations or not self._autostart or self.running

    def now(self) -> float:
        """The clock's time in seconds (monotonic). A hand-driven clock's time is its tick
        count times the period, so tests see time move only when they tick."""
        if not self._autostart:
            return self._tick * self.period
        return (self._now or time.monotonic)()

    @property
    def tickers(self) -> int:
        """How many tickers are registered."""
        return len(self._registrations)

    def register(self, ticker: Ticker) -> Registration:
        """Drive ``ticker`` from the next tick on; starts the clock if it is idle."""
        registration = Registration(self, ticker)
        self._registrations.append(registration)
        if self._autostart and not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")
        return registration

    def _unregister(self, registration: Registration) -> None:
        try:
            self._registrations.remove(registration)
        except ValueError:
            return
        if not self._registrations and self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        """Stop the task and forget every ticker."""
        self._registrations.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def run_tick(self) -> None:
        """Run one tick now (the clock's task does this; tests may too)."""
        tick = self._tick
        self._tick += 1
        self.stats.ticks += 1
        # A ticker may cancel its registration (or another's) while ticking.
        for registration in tuple(self._registrations):
            try:
                registration.ticker.on_tick(tick)
            except Exception:
                self._ticker_failed()

    def _ticker_failed(self) -> None:
        self.stats.failed_ticks += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 1.0:
            self._last_failure_log = now
            log.exception("media clock ticker failed", failed_ticks=self.stats.failed_ticks)

    async def _run(self) -> None:
        now = self._now or asyncio.get_running_loop().time
        period = self.period
        deadline = now()
        while True:
            lateness = now() - deadline
            behind = int((lateness + 1e-9) // period)
            if behind > self.max_catch_up:
                skipped = behind - self.max_catch_up
                self.stats.skipped_ticks += skipped
                deadline += skipped * period
                lateness -= skipped * period
            if lateness > self.late_after:
                self.stats.late_ticks += 1
            self.stats.max_lateness = max(self.stats.max_lateness, lateness)
            self.run_tick()
            deadline += period
            wait = deadline - now()
            if wait > 0:
                await self._sleep(wait)
            else:
                # Behind schedule: still let sockets run between catch-up ticks.
                await self._sleep(0)
