"""The media socket: claim the ref, verify, adapt the provider socket, join the room, bridge,
and end the call at the provider when the bridge (not the caller) ends it.

Every status change goes through :class:`~callbridge.calls.state.CallLifecycle`. The teardown
of a call is supervised: each of its steps (close the stream, leave the room, hang up at the
provider, record the end) runs even when an earlier one failed, and a failure is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.bridge import BridgeEnd, CallBridge
from callbridge.calls.hangup import hang_up_at_provider
from callbridge.calls.state import EndReason
from callbridge.protocols import (
    MediaStream,
    Participant,
    PluginError,
    Provider,
    RefRecord,
    RoomLeg,
    SocketChannel,
    StreamStarted,
    StreamStopped,
    WebhookError,
)
from callbridge.runtime import Runtime
from callbridge.store.repository import transaction
from callbridge.telemetry import context_from_trace_parent

EVENT_DRAIN_SECONDS = 10.0
"""How long the end of a call waits for its earlier events to be recorded."""

log = structlog.get_logger("callbridge.claim")

MAX_REF_CHARS = 256
INGEST_ROUTE = "/ingest/{provider}/{ref}"
"""The media socket's route template (never the path itself: it holds the ref)."""
STREAM_END_REASONS = frozenset({EndReason.CALLER_HANGUP, EndReason.STREAM_CLOSED})
"""End reasons that mean the provider side ended the stream."""


async def claim_ref(
    runtime: Runtime,
    provider_name: str,
    ref: str,
    *,
    public_url: str = "",
    headers: Mapping[str, str] | None = None,
) -> RefRecord | None:
    """Consume ``ref`` on ``provider_name``'s path, check the handshake signature when the
    connector asks for it, and record the claim; ``None`` (logged, without the ref) if refused.

    A ref presented on another provider's path is refused and stays claimable. A refused
    signature fails the call (``signature``); a call that is no longer waiting for its socket
    (hung up through the API, expired) is refused without a change.
    """
    if provider_name not in runtime.providers or not ref or len(ref) > MAX_REF_CHARS:
        log.warning(
            "media claim refused", provider=provider_name, reason="unknown provider or bad ref"
        )
        return None
    if runtime.draining:  # the ref stays claimable: a shared store lets another replica take it
        log.warning("media claim refused", provider=provider_name, reason="the server is draining")
        return None
    claim_started = time.monotonic()
    record = await runtime.ref_store.claim(ref, provider_name)
    claim_ms = round((time.monotonic() - claim_started) * 1000, 3)
    if record is None:
        log.warning(
            "media claim refused",
            provider=provider_name,
            reason="unknown, expired, used or another provider's ref",
        )
        return None
    # The claim is known to belong to a call only once the store answered: its span starts
    # here, in the trace of the webhook that issued the ref (possibly on another process).
    with (
        runtime.tracer.start_as_current_span(
            "call.claim",
            context=context_from_trace_parent(record.trace_parent),
            kind=SpanKind.SERVER,
            attributes={
                **call_attributes(record),
                "http.route": INGEST_ROUTE,
                "network.protocol.name": "websocket",
                "callbridge.instance.id": runtime.instance_id,
                "callbridge.ref_store": runtime.ref_store.name,
                "callbridge.ref_store.claim_ms": claim_ms,
            },
        ) as span,
        structlog.contextvars.bound_contextvars(call_id=record.call_id, provider=provider_name),
    ):
        if record.verify_signatures:
            refusal = await _verify_handshake(runtime, record, public_url, headers or {})
            if refusal is not None:
                reason, detail = refusal
                span.set_status(Status(StatusCode.ERROR, reason.value))
                log.warning("media claim refused", reason=reason.value, detail=detail)
                await runtime.lifecycle.end(record.call_id, reason, detail)
                return None
        claimed = await runtime.lifecycle.claim(record.call_id)
        if claimed is None:
            span.set_status(Status(StatusCode.ERROR, "the call is no longer waiting"))
            log.warning("media claim refused", reason="the call is no longer waiting for it")
            return None
        delay = max(0.0, runtime.clock() - claimed.created_at.timestamp())
        span.set_attribute("callbridge.call.claim_delay_ms", round(delay * 1000, 1))
        runtime.metrics.claim_delay.record(delay, {"provider": provider_name})
    return record


def call_attributes(record: RefRecord) -> dict[str, str]:
    """The attribute scheme's names of one call, from its ref record."""
    attributes = {
        "callbridge.call.id": record.call_id,
        "callbridge.room.id": record.room_id,
        "callbridge.connector.id": record.connector_id,
        "callbridge.provider": record.provider,
    }
    if record.region is not None:
        attributes["callbridge.region"] = record.region
    return attributes


async def _verify_handshake(
    runtime: Runtime, record: RefRecord, public_url: str, headers: Mapping[str, str]
) -> tuple[EndReason, str] | None:
    try:
        async with transaction(runtime.db, runtime.clock) as repo:
            connector = await repo.get_connector(record.apikey, record.connector_id)
        if connector is None:
            return EndReason.HANDSHAKE_REFUSED, "the connector no longer exists"
        credentials = runtime.credentials_of(connector)
    except WebhookError as exc:
        return EndReason.HANDSHAKE_REFUSED, str(exc)
    try:
        runtime.providers[record.provider].verify_handshake(public_url, headers, credentials)
    except WebhookError as exc:
        return EndReason.SIGNATURE, str(exc)
    return None


async def abandon_claimed_call(runtime: Runtime, record: RefRecord) -> None:
    """Record the end of a call whose claimed socket could not be accepted."""
    with structlog.contextvars.bound_contextvars(call_id=record.call_id):
        log.warning("media socket lost during its handshake")
        await runtime.lifecycle.end(
            record.call_id, EndReason.NO_START, "the media socket closed during its handshake"
        )


async def run_claimed_call(runtime: Runtime, record: RefRecord, channel: SocketChannel) -> None:
    """Bridge one accepted media socket until the call ends, then tear it down and record
    the end. Never raises, except the cancellation of a server that stops."""
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
        provider = runtime.providers[record.provider]
        started_at = time.monotonic()
        call = _ClaimedCall(runtime, record, provider, channel)
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


class _ClaimedCall:
    """One claimed call from its socket's ``start`` to its recorded end."""

    def __init__(
        self, runtime: Runtime, record: RefRecord, provider: Provider, channel: SocketChannel
    ) -> None:
        self.runtime = runtime
        self.record = record
        self.provider = provider
        self.channel = channel
        self.stream: MediaStream | None = None
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
        self.stream = self.provider.open_stream(self.channel, record.options)
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
            echoes_marks_on_clear=self.provider.echoes_marks_on_clear,
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
        await _step("close the stream", stream.close if stream else self.channel.close)
        if leg is not None:
            await _step("leave the room", leg.leave)
        if bridge is not None and stream is not None:
            stats = bridge.stats.as_dict(stream.malformed, bridge.far_end.dropped)
            if leg is not None:
                stats.update({f"playout_{k}": v for k, v in leg.media_stats().items()})
            span = trace.get_current_span()
            for key, value in stats.items():
                span.set_attribute(f"callbridge.media.{key}", value)
            log.info("call media ended", reason=end.reason.value, **stats)
            self.media = stats
            self.runtime.metrics.call_media(self.record.provider, stats)
        if self.ended_elsewhere:  # whoever ended it (the calls API) hung up and recorded it
            return
        await _step("hang up at the provider", lambda: self._hang_up_if_needed(end.reason))
        await _step(
            "record the end",
            lambda: self.runtime.lifecycle.end(
                self.record.call_id, end.reason, end.detail, self.media
            ),
        )

    async def _hang_up_if_needed(self, reason: EndReason) -> None:
        """End the call at the provider when the bridge ended it, or when the provider keeps
        the call up after its stream ends (Telnyx ``start`` style)."""
        record = self.record
        if reason in STREAM_END_REASONS and self.provider.call_ends_with_stream(record.options):
            return
        await hang_up_at_provider(self.runtime, record)


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
