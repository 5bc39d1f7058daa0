"""Keeping call records true while the server runs: this process's heartbeat, calls whose ref
expired unclaimed, and calls of processes that died; and, once an hour, lifecycle events older
than ``events.keep_days`` (with their finished deliveries) are deleted.

Every replica runs one sweeper. Each finding is closed through the state machine, whose
transitions are atomic, so a call found by two sweepers is closed once, and only the sweeper
that closed it hangs it up at the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from callbridge.calls.hangup import hang_up_at_provider
from callbridge.calls.state import EndReason
from callbridge.store.repository import transaction
from callbridge.webhooks.store import prune_events

if TYPE_CHECKING:
    from callbridge.runtime import Runtime

log = structlog.get_logger("callbridge.calls.sweeper")

EXPIRY_GRACE_SECONDS = 2.0
"""A ref that expired this recently is left alone: a claim that won the race for it at the
last moment is still recording itself."""
INTERRUPTED_DETAIL = "the server process holding the call stopped"
PRUNE_INTERVAL_SECONDS = 3600.0
"""How often old lifecycle events are looked for."""
PRUNE_BATCHES = 20
"""At most this many batches (of 1000 events) are deleted per pass; the next pass goes on."""


@dataclass
class SweepReport:
    """What one sweep closed."""

    expired: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    pruned_events: int = 0


class CallSweeper:
    """Heartbeats for this process and closes stale calls, on a timer and once at start-up."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings.calls
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self.failures = 0

    async def start(self) -> None:
        """Heartbeat, sweep once (calls left by a previous run), then keep doing both."""
        await self._runtime.lifecycle.heartbeat()
        await self._sweep_logged()
        self._task = asyncio.create_task(self._run(), name="call-sweeper")

    async def stop(self) -> None:
        """Stop the timer and forget this process's instance row."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._runtime.lifecycle.retire()

    async def sweep(self) -> SweepReport:
        """Close every call whose ref expired unclaimed and every call of a dead process."""
        lifecycle = self._runtime.lifecycle
        report = SweepReport()
        for call_id in await lifecycle.unclaimed_expired(EXPIRY_GRACE_SECONDS):
            call = await lifecycle.expire(call_id)
            if call is None:
                continue
            report.expired.append(call_id)
            with structlog.contextvars.bound_contextvars(call_id=call_id):
                log.warning("call failed: its media socket never came", reason="ref-expired")
                await hang_up_at_provider(self._runtime, call)
        for call_id in await lifecycle.orphaned(self._settings.owner_timeout_seconds):
            if await lifecycle.end(call_id, EndReason.INTERRUPTED, INTERRUPTED_DETAIL):
                report.interrupted.append(call_id)
                log.warning("call interrupted: its server stopped", call_id=call_id)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
            report.pruned_events = await self.prune_events()
        return report

    async def prune_events(self) -> int:
        """Delete the events older than ``events.keep_days`` whose deliveries are finished."""
        runtime = self._runtime
        pruned = 0
        for _ in range(PRUNE_BATCHES):
            async with transaction(runtime.db, runtime.clock, write=True) as repo:
                before = repo.now() - timedelta(days=runtime.settings.events.keep_days)
                batch = await prune_events(repo.session, before)
            pruned += batch
            if batch < 1000:
                break
        if pruned:
            log.info("old lifecycle events deleted", events=pruned)
        return pruned

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep()
        except Exception:  # the next sweep tries again
            self.failures += 1
            log.exception("call sweep failed")

    async def _run(self) -> None:
        settings = self._settings
        next_heartbeat = time.monotonic() + settings.heartbeat_seconds
        next_sweep = time.monotonic() + settings.sweep_interval_seconds
        while True:
            await asyncio.sleep(max(0.0, min(next_heartbeat, next_sweep) - time.monotonic()))
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + settings.heartbeat_seconds
                try:
                    await self._runtime.lifecycle.heartbeat()
                except Exception:
                    self.failures += 1
                    log.exception("heartbeat failed")
            if now >= next_sweep:
                next_sweep = now + settings.sweep_interval_seconds
                await self._sweep_logged()
