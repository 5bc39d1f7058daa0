"""Graceful drain: what a replica does between SIGTERM and its exit.

Readiness turns false at once (``GET /readyz`` answers 503, so the load balancer stops sending
new work); voice webhooks are answered 503 with ``Retry-After`` (the provider retries or uses
its fallback URL) and media-socket claims are refused; running calls may go on for
``cluster.drain_seconds``; the calls still up then are ended (reason ``shutdown``: hung up at
the provider, ``call-hangup`` recorded); due webhook deliveries and buffered spans are flushed;
then the server exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from callbridge.calls.state import EndReason
from callbridge.runtime import SHUTDOWN_GRACE_SECONDS, Runtime
from callbridge.webhooks.service import WebhookService

log = structlog.get_logger("callbridge.drain")

FLUSH_SECONDS = 5.0
"""At most this long for the last webhook deliveries and for the span export."""


class Drain:
    """The drain of one server; :meth:`begin` starts it (once), ``on_done`` ends the server."""

    def __init__(self, runtime: Runtime, webhooks: WebhookService) -> None:
        self._runtime = runtime
        self._webhooks = webhooks
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def begin(self, on_done: Callable[[], None]) -> None:
        """Start draining (on the event loop); a second call does nothing."""
        if self._task is not None:
            return
        self._runtime.draining = True
        self._task = asyncio.get_running_loop().create_task(self._run(on_done), name="drain")

    async def wait(self) -> None:
        """Until the drain is over (tests)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self, on_done: Callable[[], None]) -> None:
        runtime = self._runtime
        cap = runtime.settings.cluster.drain_seconds
        log.info(
            "draining: no new calls; running calls may finish",
            calls=len(runtime.active_calls),
            cap_s=cap,
        )
        try:
            deadline = time.monotonic() + cap
            while pending := {task for task in runtime.call_tasks if not task.done()}:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait(pending, timeout=left)
            if runtime.active_calls or any(not task.done() for task in runtime.call_tasks):
                log.info(
                    "drain cap reached: ending the calls still up", calls=len(runtime.active_calls)
                )
                await runtime.end_calls(EndReason.SHUTDOWN, SHUTDOWN_GRACE_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await self._webhooks.flush()
            await asyncio.to_thread(runtime.tracer_provider.force_flush, int(FLUSH_SECONDS * 1000))
        except Exception:  # the server must exit whatever happened
            log.exception("drain failed")
        finally:
            log.info("drained: stopping")
            on_done()
