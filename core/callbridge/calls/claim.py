"""The media socket: claim the ref, verify, adapt the provider socket, join the room, bridge,
and end the call at the provider when the bridge (not the caller) ends it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.bridge import CallBridge
from callbridge.protocols import (
    HangupResult,
    HangupTarget,
    MediaStream,
    Participant,
    PluginError,
    Provider,
    RefRecord,
    SocketChannel,
    StreamStarted,
    StreamStopped,
    WebhookError,
)
from callbridge.runtime import Runtime
from callbridge.store.repository import transaction
from callbridge.telemetry import context_from_trace_parent

log = structlog.get_logger("callbridge.claim")

STREAM_END_REASONS = frozenset({"caller-hangup", "stream-closed"})
"""End reasons that mean the provider side ended the stream."""
ENDED_BEFORE_ANSWER = "ended-before-answer"
"""The call was ended (e.g. through the calls API) before its media socket arrived."""


async def claim_ref(
    runtime: Runtime,
    provider_name: str,
    ref: str,
    *,
    public_url: str = "",
    headers: Mapping[str, str] | None = None,
) -> RefRecord | None:
    """Consume ``ref`` for ``provider_name`` and check the handshake signature when the
    connector asks for it; ``None`` (logged, without the ref) if refused."""
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
    if record.verify_signatures:
        try:
            async with transaction(runtime.db, runtime.clock) as repo:
                connector = await repo.get_connector(record.apikey, record.connector_id)
            if connector is None:
                raise WebhookError("the connector no longer exists", 403)
            runtime.providers[provider_name].verify_handshake(
                public_url, headers or {}, runtime.credentials_of(connector)
            )
        except WebhookError as exc:
            log.warning(
                "media claim refused",
                provider=provider_name,
                call_id=record.call_id,
                reason=str(exc),
            )
            async with transaction(runtime.db, runtime.clock) as repo:
                await repo.mark_call_ended(record.call_id, f"handshake refused: {exc}", failed=True)
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
        provider = runtime.providers[record.provider]
        stream = provider.open_stream(channel, record.options)
        started_at = time.monotonic()
        reason = "unknown"
        try:
            reason = await _bridge(runtime, record, provider, stream, span)
        except Exception as exc:
            reason = "error"
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.exception("call failed")
        finally:
            await stream.close()
            span.set_attribute("callbridge.end_reason", reason)
            await _hang_up_if_needed(runtime, record, provider, reason)
            async with transaction(runtime.db, runtime.clock) as repo:
                await repo.mark_call_ended(record.call_id, reason, failed=reason == "error")
            log.info(
                "call ended", reason=reason, duration_s=round(time.monotonic() - started_at, 3)
            )


async def _bridge(
    runtime: Runtime, record: RefRecord, provider: Provider, stream: MediaStream, span: trace.Span
) -> str:
    started = await _wait_for_start(stream, runtime.settings.server.start_timeout_seconds)
    if started is None:
        return "no-start"
    span.set_attribute("callbridge.stream_id", started.stream_id)
    transport_name = record.transport or runtime.settings.rooms.default
    transport = runtime.room_transports.get(transport_name)
    if transport is None:
        log.warning("unknown room transport", transport=transport_name)
        return "no-room"
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
        log.warning("room join failed", reason=str(exc))
        return "no-room"
    async with transaction(runtime.db, runtime.clock) as repo:
        answered = await repo.mark_call_answered(record.call_id)
    if answered is None:
        await leg.leave()
        log.info("call was ended before its media arrived")
        return ENDED_BEFORE_ANSWER
    log.info(
        "call answered",
        room_id=record.room_id,
        stream_id=started.stream_id,
        codec=f"{started.codec.name}/{started.codec.sample_rate}",
    )
    bridge = CallBridge(
        record.call_id,
        stream,
        started,
        leg,
        echoes_marks_on_clear=provider.echoes_marks_on_clear,
    )
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
    return reason


async def _hang_up_if_needed(
    runtime: Runtime, record: RefRecord, provider: Provider, reason: str
) -> None:
    """End the call at the provider when the bridge ended it, or when the provider keeps the
    call up after its stream ends (Telnyx ``start`` style)."""
    if reason in STREAM_END_REASONS and provider.call_ends_with_stream(record.options):
        return
    if reason == ENDED_BEFORE_ANSWER:  # whoever ended it (the calls API) hung up already
        return
    await hang_up_at_provider(
        runtime,
        apikey=record.apikey,
        connector_id=record.connector_id,
        provider_name=record.provider,
        target=HangupTarget(record.provider_call_id, record.account_id),
    )


async def hang_up_at_provider(
    runtime: Runtime, *, apikey: str, connector_id: str, provider_name: str, target: HangupTarget
) -> HangupResult | None:
    """Ask the provider's REST API to end the call, with the connector's credentials.

    Returns ``None`` when it could not be asked (no credentials, unknown provider).
    """
    provider = runtime.providers.get(provider_name)
    if provider is None:
        return None
    try:
        async with transaction(runtime.db, runtime.clock) as repo:
            connector = await repo.get_connector(apikey, connector_id)
        credentials = runtime.optional_credentials(connector) if connector else None
    except WebhookError as exc:
        log.warning("provider hang-up skipped", reason=str(exc))
        return None
    if credentials is None:
        log.info("provider hang-up skipped", reason="connector holds no provider credentials")
        return None
    result = await provider.hangup(target, credentials)
    trace.get_current_span().add_event(
        "provider hang-up",
        {"ok": result.ok, "status": result.status, "already_ended": result.already_ended},
    )
    if result.ok:
        log.info("provider hang-up done", status=result.status, already_ended=result.already_ended)
    else:
        log.warning("provider hang-up failed", status=result.status, detail=result.detail)
    return result


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
