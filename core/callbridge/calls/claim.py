"""The media socket: claim the ref, adapt the provider socket, join the room, bridge."""

from __future__ import annotations

import asyncio
import time

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.bridge import CallBridge
from callbridge.protocols import (
    MediaStream,
    Participant,
    PluginError,
    RefRecord,
    SocketChannel,
    StreamStarted,
    StreamStopped,
)
from callbridge.runtime import Runtime
from callbridge.store.repository import transaction
from callbridge.telemetry import context_from_trace_parent

log = structlog.get_logger("callbridge.claim")


async def claim_ref(runtime: Runtime, provider_name: str, ref: str) -> RefRecord | None:
    """Consume ``ref`` for ``provider_name``; ``None`` (logged, without the ref) if refused."""
    if provider_name not in runtime.providers or not ref or len(ref) > 256:
        log.warning(
            "media claim refused", provider=provider_name, reason="unknown provider or bad ref"
        )
        return None
    record = await runtime.ref_store.claim(ref)
    if record is None:
        log.warning(
            "media claim refused", provider=provider_name, reason="unknown, expired or used ref"
        )
        return None
    if record.provider != provider_name:
        log.warning(
            "media claim refused",
            provider=provider_name,
            call_id=record.call_id,
            reason="ref belongs to another provider",
        )
        return None
    return record


async def run_claimed_call(runtime: Runtime, record: RefRecord, channel: SocketChannel) -> None:
    """Bridge one accepted media socket until the call ends."""
    context = context_from_trace_parent(record.trace_parent)
    with (
        runtime.tracer.start_as_current_span(
            "call.media", context=context, kind=SpanKind.SERVER
        ) as span,
        structlog.contextvars.bound_contextvars(
            call_id=record.call_id, provider=record.provider, connector_id=record.connector_id
        ),
    ):
        span.set_attribute("callbridge.call_id", record.call_id)
        span.set_attribute("callbridge.room_id", record.room_id)
        span.add_event("ref claimed")
        stream = runtime.providers[record.provider].open_stream(channel)
        started_at = time.monotonic()
        reason = "unknown"
        try:
            started = await _wait_for_start(stream, runtime.settings.server.start_timeout_seconds)
            if started is None:
                reason = "no-start"
                return
            span.set_attribute("callbridge.stream_id", started.stream_id)
            transport_name = record.transport or runtime.settings.rooms.default
            transport = runtime.room_transports.get(transport_name)
            if transport is None:
                reason = f"unknown room transport {transport_name}"
                return
            participant = Participant(
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
            try:
                leg = await transport.join(record.apikey, record.room_id, participant)
            except PluginError as exc:
                reason = f"room join failed: {exc}"
                return
            async with transaction(runtime.db, runtime.clock) as repo:
                await repo.mark_call_answered(record.call_id)
            log.info("call answered", room_id=record.room_id, stream_id=started.stream_id)
            bridge = CallBridge(record.call_id, stream, started, leg)
            runtime.active_calls[record.call_id] = bridge
            try:
                reason = await bridge.run(runtime.settings.server.max_call_seconds)
            finally:
                runtime.active_calls.pop(record.call_id, None)
                await leg.leave()
                stats = bridge.stats.as_dict(stream.malformed)
                for key, value in stats.items():
                    span.set_attribute(f"callbridge.media.{key}", value)
                log.info("call media ended", reason=reason, **stats)
        except Exception as exc:
            reason = "error"
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.exception("call failed")
        finally:
            await stream.close()
            span.set_attribute("callbridge.end_reason", reason)
            duration = round(time.monotonic() - started_at, 3)
            async with transaction(runtime.db, runtime.clock) as repo:
                await repo.mark_call_ended(record.call_id, reason, failed=reason == "error")
            log.info("call ended", reason=reason, duration_s=duration)


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
