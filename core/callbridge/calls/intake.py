"""The voice webhook: find the connector, verify, parse, route, issue a ref, answer with markup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.routing import route_call
from callbridge.protocols import (
    CallInfo,
    ConnectorView,
    Provider,
    RefRecord,
    Route,
    RoutingContext,
    StreamOptions,
    WebhookError,
    WebhookRequest,
)
from callbridge.runtime import Runtime
from callbridge.store.repository import DuplicateCallError, transaction
from callbridge.telemetry import current_trace_parent

log = structlog.get_logger("callbridge.intake")


@dataclass(frozen=True)
class WebhookAnswer:
    """What the HTTP layer sends back to the provider."""

    status: int
    body: str
    media_type: str
    found: bool = True


NOT_FOUND = WebhookAnswer(404, "", "application/json", found=False)


def _error(exc: WebhookError) -> WebhookAnswer:
    return WebhookAnswer(exc.status, json.dumps({"message": str(exc)}), "application/json")


async def handle_voice_webhook(
    runtime: Runtime, provider_name: str, webhook_key: str, request: WebhookRequest
) -> WebhookAnswer:
    """Run the intake of one voice webhook. Unknown provider or key → :data:`NOT_FOUND`."""
    provider = runtime.providers.get(provider_name)
    if provider is None or not webhook_key.startswith("whk_"):
        return NOT_FOUND
    async with transaction(runtime.db, runtime.clock) as repo:
        connector = await repo.find_connector_by_webhook_key(provider_name, webhook_key)
    if connector is None:
        return NOT_FOUND

    with (
        runtime.tracer.start_as_current_span("call.webhook", kind=SpanKind.SERVER) as span,
        structlog.contextvars.bound_contextvars(provider=provider_name, connector_id=connector.id),
    ):
        span.set_attribute("callbridge.provider", provider_name)
        span.set_attribute("callbridge.connector_id", connector.id)
        try:
            if connector.verify_signatures:
                provider.verify_webhook(request, runtime.credentials_of(connector))
            call = provider.parse_webhook(request)
        except WebhookError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            log.warning("webhook rejected", reason=str(exc), status=exc.status)
            return _error(exc)
        view = ConnectorView(
            id=connector.id,
            apikey=connector.apikey,
            provider=connector.provider,
            default_room_id=connector.default_room_id,
            default_rule_id=connector.default_rule_id,
            region=connector.region,
        )
        query = {name: values[0] for name, values in _query_params(request).items() if values}
        outcome = await route_call(runtime.routing_chain, RoutingContext(call, view, query))
        route = outcome.route
        async with transaction(runtime.db, runtime.clock) as repo:
            try:
                row = await repo.create_call(
                    apikey=connector.apikey,
                    connector_id=connector.id,
                    provider=provider_name,
                    provider_call_id=call.provider_call_id,
                    from_number=call.from_number,
                    to_number=call.to_number,
                    room_id=route.room_id if route else None,
                    account_id=call.account_id,
                )
                retry = False
            except DuplicateCallError as duplicate:
                row, retry = duplicate.call, True
            if route is None:
                await repo.mark_call_ended(row.id, outcome.reason, failed=True)
        span.set_attribute("callbridge.call_id", row.id)
        with structlog.contextvars.bound_contextvars(call_id=row.id):
            if route is None:
                log.warning("call not routed", reason=outcome.reason)
                span.set_status(Status(StatusCode.ERROR, outcome.reason))
                markup = provider.reject_markup(runtime.settings.routing.reject_message)
                return WebhookAnswer(200, markup.body, markup.media_type)
            record = RefRecord(
                call_id=row.id,
                apikey=connector.apikey,
                connector_id=connector.id,
                provider=provider_name,
                provider_call_id=call.provider_call_id,
                room_id=route.room_id,
                transport=route.transport,
                options=stream_options(provider, connector, route),
                account_id=call.account_id,
                from_number=call.from_number,
                to_number=call.to_number,
                verify_signatures=bool(connector.verify_signatures),
                trace_parent=current_trace_parent(),
                metadata=dict(route.metadata),
            )
            return await _answer(runtime, provider, record, call, route, retry)


def stream_options(provider: Provider, connector: Any, route: Route) -> StreamOptions:
    """The codec (route, else connector, else the provider's default) and markup style."""
    supported = provider.supported_codecs
    codec = supported[0]
    connector_codec = [
        spec
        for spec in supported
        if spec.name == connector.codec and connector.sample_rate in (None, spec.sample_rate)
    ]
    if connector_codec:
        codec = connector_codec[0]
    if route.codec is not None:
        if route.codec in supported:
            codec = route.codec
        else:
            log.warning(
                "route codec not supported by provider; using the connector's",
                codec=f"{route.codec.name}/{route.codec.sample_rate}",
            )
    return StreamOptions(codec=codec, markup_style=connector.markup_style)


async def _answer(
    runtime: Runtime,
    provider: Provider,
    record: RefRecord,
    call: CallInfo,
    route: Route,
    retry: bool,
) -> WebhookAnswer:
    ref = await runtime.ref_store.issue(
        record,
        runtime.settings.refs.ttl_seconds,
        idempotency_key=f"{record.connector_id}:{call.provider_call_id}",
    )
    stream_url = provider.stream_url(runtime.settings.server.ingest_url, ref)
    markup = provider.answer_markup(call, stream_url, route, record.options)
    span = trace.get_current_span()
    span.set_attribute("callbridge.room_id", route.room_id)
    span.set_attribute(
        "callbridge.codec", f"{record.options.codec.name}/{record.options.codec.sample_rate}"
    )
    log.info(
        "call routed",
        room_id=route.room_id,
        strategy=route.strategy,
        codec=record.options.codec.name,
        retry=retry,
    )
    return WebhookAnswer(200, markup.body, markup.media_type)


def _query_params(request: WebhookRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.public_url).query, keep_blank_values=True)
