"""A bridged call's life, whatever brought it in (a provider's media socket, a SIP dialog):
wait for its stream's start, join the room, bridge, move between rooms, record its events, and
a supervised teardown.

Every status change goes through :class:`~callbridge.calls.state.CallLifecycle`. The teardown
of a call is supervised: each of its steps (close the stream, leave the room, end the call at
its far side, record the end) runs even when an earlier one failed, and a failure is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.bridge import BridgeEnd, CallBridge
from callbridge.calls.state import EndReason
from callbridge.protocols import (
    MediaStream,
    Participant,
    PluginError,
    RefRecord,
    RoomLeg,
    StreamStarted,
    StreamStopped,
)
from callbridge.runtime import Runtime
from callbridge.telemetry import context_from_trace_parent

EVENT_DRAIN_SECONDS = 10.0
"""How long the end of a call waits for its earlier events to be recorded."""

log = structlog.get_logger("callbridge.calls")


def call_attributes(record: RefRecord) -> dict[str, str]:
    """The attribute scheme's names of one call, from its record."""
    attributes = {
        "callbridge.call.id": record.call_id,
        "callbridge.room.id": record.room_id,
        "callbridge.connector.id": record.connector_id,
        "callbridge.provider": record.provider,
    }
    if record.region is not None:
        attributes["callbridge.region"] = record.region
    return attributes


async def run_call(runtime: Runtime, record: RefRecord, call: CallSession) -> None:
    """Bridge ``call`` until it ends, then tear it down and record the end, in the call's
    ``call.media`` span. Never raises, except the cancellation of a server that stops."""
    task = asyncio.current_task()
    if task is not None:
        runtime.call_tasks.add(task)
    context = context_from_trace_parent(record.trace_parent)
    with (
        runtime.tracer.start_as_current_span(
            "call.media", context=context, kind=SpanKind.SERVER, attributes=call_attributes(record)
        ) as span,
        structlog.contextvars.bound_contextvars(
            call_id=record.call_id, provider=record.provider, connector_id=record.connector_id
        ),
    ):
        started_at = time.monotonic()
        end = BridgeEnd(EndReason.ERROR)
        try:
            end = await call.run(span)
        except asyncio.CancelledError:
            end = BridgeEnd(EndReason.SHUTDOWN, "the server stopped")
            raise
        except Exception as exc:
            end = BridgeEnd(EndReason.ERROR, f"unexpected {type(exc).__name__}")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.exception("call failed")
        finally:
            span.set_attribute("callbridge.end_reason", end.reason.value)
            await call.tear_down(end)
            log.info(
                "call ended",
                reason=end.reason.value,
                detail=end.detail,
                duration_s=round(time.monotonic() - started_at, 3),
            )
            if task is not None:
                runtime.call_tasks.discard(task)


class CallSession:
    """One call from its stream's ``start`` to its recorded end: the room join, the bridge,
    transfers, the call's events and a teardown whose every step runs.

    Args:
        runtime: the server.
        record: the call (for a provider call, its claimed ref's record).
        open_stream: opens the call's media stream (called once, when the call runs).
        close_unopened: closes what carries the media when ``open_stream`` failed.
        far_end: ends the call at its far side (a provider's REST hang-up, a SIP BYE) when
            the bridge ended it; given the end reason, it decides whether anything is needed.
        echoes_marks_on_clear: the stream echoes every pending mark when it clears.
        on_joined: called once the call is in its room, before it is recorded answered (a
            SIP dialog sends its 200 OK then, so a room that refuses the call is a refusal,
            not an answered call that hangs up); ``False``: the caller gave up meanwhile (a
            SIP CANCEL), the call ends ``cancelled`` without being answered.
    """

    def __init__(
        self,
        runtime: Runtime,
        record: RefRecord,
        open_stream: Callable[[], MediaStream],
        close_unopened: Callable[[], Awaitable[object]],
        far_end: Callable[[EndReason], Awaitable[object]],
        *,
        echoes_marks_on_clear: bool = True,
        on_joined: Callable[[], bool] | None = None,
    ) -> None:
        self.runtime = runtime
        self.record = record
        self._open_stream = open_stream
        self._close_unopened = close_unopened
        self.stream: MediaStream | None = None
        self.far_end = far_end
        self.echoes_marks_on_clear = echoes_marks_on_clear
        self._on_joined = on_joined
        self.leg: RoomLeg | None = None
        self.bridge: CallBridge | None = None
        self.ended_elsewhere = False
        self.room_id = record.room_id
        self._moving: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._event_writer: asyncio.Task[None] | None = None
        self.media: dict[str, int] | None = None

    async def run(self, span: trace.Span) -> BridgeEnd:
        runtime, record = self.runtime, self.record
        self.stream = self._open_stream()
        started = await _wait_for_start(self.stream, runtime.settings.server.start_timeout_seconds)
        if started is None:
            return BridgeEnd(EndReason.NO_START, "the media socket sent no start")
        span.set_attribute("callbridge.stream.id", started.stream_id)
        transport_name = record.transport or runtime.settings.rooms.default
        transport = runtime.room_transports.get(transport_name)
        if transport is None:
            return BridgeEnd(EndReason.NO_ROOM, f"unknown room transport {transport_name!r}")
        self.bridge = CallBridge(
            record.call_id,
            self.stream,
            started,
            transport.sample_rate,
            echoes_marks_on_clear=self.echoes_marks_on_clear,
        )
        try:
            self.leg = await transport.join(
                record.apikey, record.room_id, _participant(record), self.bridge
            )
        except PluginError as exc:
            log.warning("room join failed", reason=str(exc))
            return BridgeEnd(EndReason.NO_ROOM, str(exc))
        self.bridge.attach(self.leg)
        self.bridge.on_transfer = self._request_transfer
        self.bridge.on_event = self._queue_event
        self._event_writer = asyncio.create_task(self._write_events())
        if self._on_joined is not None and not self._on_joined():
            return BridgeEnd(EndReason.CANCELLED)
        if await runtime.lifecycle.answer(record.call_id) is None:
            log.info("call was ended before its media arrived")
            self.ended_elsewhere = True
            return BridgeEnd(EndReason.API_HANGUP)
        log.info(
            "call answered",
            room_id=record.room_id,
            stream_id=started.stream_id,
            codec=f"{started.codec.name}/{started.codec.sample_rate}",
        )
        runtime.active_calls[record.call_id] = self.bridge
        active = runtime.metrics.active_calls
        active.add(1, {"provider": record.provider})
        try:
            return await self.bridge.run(runtime.settings.server.max_call_seconds)
        finally:
            runtime.active_calls.pop(record.call_id, None)
            active.add(-1, {"provider": record.provider})

    def _queue_event(self, event_type: str, data: dict[str, Any]) -> None:
        self._events.put_nowait((event_type, data))

    async def _write_events(self) -> None:
        """Record the call's events one after another, in the order they happened."""
        record = self.runtime.lifecycle.record_event
        while (item := await self._events.get()) is not None:
            event_type, data = item
            try:
                await record(self.record.call_id, event_type, data)
            except Exception:
                log.exception("recording a call event failed", event_type=event_type)

    def _request_transfer(self, room_id: str, transport_name: str | None) -> None:
        """A room member asked to move the call (called from the room; must not block)."""
        if self._moving is not None and not self._moving.done():
            log.warning("transfer ignored: the call is already moving", room_id=room_id)
            return
        self._moving = asyncio.create_task(self._transfer(room_id, transport_name))

    async def _transfer(self, room_id: str, transport_name: str | None) -> None:
        """Leave the current room and join ``room_id`` on ``transport_name`` (the default
        when ``None``); the caller hears silence for the moment in between. A transport that
        does not exist leaves the call where it is; a room that refuses the call ends it."""
        runtime, record, bridge = self.runtime, self.record, self.bridge
        assert bridge is not None
        name = transport_name or runtime.settings.rooms.default
        transport = runtime.room_transports.get(name)
        if transport is None:
            log.warning("transfer refused: no such room transport", transport=name)
            return
        previous, self.leg = self.leg, None
        bridge.detach()
        if previous is not None:
            await _step("leave the room", previous.leave)
        bridge.retune(transport.sample_rate)
        try:
            leg = await transport.join(record.apikey, room_id, _participant(record), bridge)
        except PluginError as exc:
            log.warning("transfer failed: the room refused the call", reason=str(exc))
            bridge.request_hangup(EndReason.NO_ROOM)
            return
        self.leg = leg
        bridge.attach(leg)
        log.info("call transferred", from_room=self.room_id, room_id=room_id, transport=name)
        self.room_id = room_id
        await runtime.lifecycle.move(record.call_id, room_id)

    async def tear_down(self, end: BridgeEnd) -> None:
        """Every step runs, whatever the others do."""
        if self._moving is not None and not self._moving.done():
            self._moving.cancel()
            await asyncio.gather(self._moving, return_exceptions=True)
        if self._event_writer is not None:  # the call's events before its end
            self._events.put_nowait(None)
            await _step("record the call's events", lambda: _finish(self._event_writer))
        stream, leg, bridge = self.stream, self.leg, self.bridge
        await _step("close the stream", stream.close if stream else self._close_unopened)
        if leg is not None:
            await _step("leave the room", leg.leave)
        if bridge is not None and stream is not None:
            stats = bridge.stats.as_dict(stream.malformed, bridge.far_end.dropped)
            if leg is not None:
                stats.update({f"playout_{k}": v for k, v in leg.media_stats().items()})
            stream_figures = getattr(stream, "media_figures", None)
            if stream_figures is not None:
                stats.update(stream_figures())
            span = trace.get_current_span()
            for key, value in stats.items():
                span.set_attribute(f"callbridge.media.{key}", value)
            log.info("call media ended", reason=end.reason.value, **stats)
            self.media = stats
            self.runtime.metrics.call_media(self.record.provider, stats)
        if self.ended_elsewhere:  # whoever ended it (the calls API) hung up and recorded it
            return
        await _step("end the call at its far side", lambda: self.far_end(end.reason))
        await _step(
            "record the end",
            lambda: self.runtime.lifecycle.end(
                self.record.call_id, end.reason, end.detail, self.media
            ),
        )


async def _finish(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        async with asyncio.timeout(EVENT_DRAIN_SECONDS):
            await asyncio.shield(task)


async def _step(name: str, action: Callable[[], Awaitable[object]]) -> None:
    try:
        await action()
    except Exception:
        log.exception("call teardown step failed", step=name)


def _participant(record: RefRecord) -> Participant:
    return Participant(
        participant_id=record.call_id,
        kind="caller",
        display_name=record.from_number or "caller",
        metadata={
            "callId": record.call_id,
            "provider": record.provider,
            "from": record.from_number or "",
            "to": record.to_number or "",
            **record.metadata,
        },
    )


async def _wait_for_start(stream: MediaStream, limit_seconds: float) -> StreamStarted | None:
    try:
        async with asyncio.timeout(limit_seconds):
            while True:
                event = await stream.receive()
                if isinstance(event, StreamStarted):
                    return event
                if isinstance(event, StreamStopped):
                    return None
    except TimeoutError:
        log.warning("media socket sent no start", timeout_s=limit_seconds)
        return None
