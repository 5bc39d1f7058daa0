"""The media socket: claim the ref, verify, adapt the provider socket, and run the call
(:mod:`callbridge.calls.session`), ending it at the provider when the bridge (not the caller)
ends it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.hangup import hang_up_at_provider
from callbridge.calls.session import CallSession, call_attributes, run_call
from callbridge.calls.state import EndReason
from callbridge.protocols import RefRecord, SocketChannel, WebhookError
from callbridge.runtime import Runtime
from callbridge.store.repository import transaction
from callbridge.telemetry import context_from_trace_parent

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
    """Bridge one accepted media socket until the call ends, then tear it down, end the call
    at the provider when the bridge (not the caller) ended it, and record the end. Never
    raises, except the cancellation of a server that stops."""
    provider = runtime.providers[record.provider]

    async def hang_up_if_needed(reason: EndReason) -> None:
        # The provider ended the stream: the call is over there too, unless it keeps the
        # call up after its stream ends (Telnyx ``start`` style).
        if reason in STREAM_END_REASONS and provider.call_ends_with_stream(record.options):
            return
        await hang_up_at_provider(runtime, record)

    session = CallSession(
        runtime,
        record,
        lambda: provider.open_stream(channel, record.options),
        channel.close,
        hang_up_if_needed,
        echoes_marks_on_clear=provider.echoes_marks_on_clear,
    )
    await run_call(runtime, record, session)
