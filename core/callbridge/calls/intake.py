"""The voice webhook: find the connector, verify, parse, route, issue a ref, answer with markup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.state import CallStatus, DuplicateCallError, EndReason
from callbridge.cluster.homes import Home
from callbridge.cluster.relay import HomedRooms
from callbridge.protocols import (
    CallInfo,
    ConnectorView,
    PluginError,
    Provider,
    RefRecord,
    RefStoreFull,
    Route,
    RoutingContext,
    StreamOptions,
    WebhookError,
    WebhookRequest,
)
from callbridge.routing.chain import RoutingOutcome, route_call
from callbridge.routing.numbers import address
from callbridge.routing.regions import RegionChoice, choose_region, home_country
from callbridge.routing.rules import CallFacts
from callbridge.runtime import Runtime
from callbridge.store.ids import new_call_id
from callbridge.store.repository import transaction
from callbridge.telemetry import current_trace_parent

log = structlog.get_logger("callbridge.intake")


RETRY_AFTER_SECONDS = 5
WEBHOOK_ROUTE = "/v2/hooks/{provider}/{webhook_key}"
"""The voice webhook's route template (never the path itself: it holds the webhook key)."""
"""``Retry-After`` of a 503 answered while the ref store is full."""


@dataclass(frozen=True)
class WebhookAnswer:
    """What the HTTP layer sends back to the provider."""

    status: int
    body: str
    media_type: str
    found: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)


NOT_FOUND = WebhookAnswer(404, "", "application/json", found=False)


def _error(status: int, message: str) -> WebhookAnswer:
    return WebhookAnswer(status, json.dumps({"message": message}), "application/json")


async def handle_voice_webhook(
    runtime: Runtime, provider_name: str, webhook_key: str, request: WebhookRequest
) -> WebhookAnswer:
    """Run the intake of one voice webhook. Unknown provider or key → :data:`NOT_FOUND`.

    A retried webhook (same provider call id on the same connector) routes nothing again: while
    its ref is unclaimed it gets the same answer as the first, with the same ref; once a media
    socket has claimed the call, or the call is over, it gets ``409`` and nothing changes.
    """
    provider = runtime.providers.get(provider_name)
    if provider is None or not webhook_key.startswith("whk_"):
        return NOT_FOUND
    async with transaction(runtime.db, runtime.clock) as repo:
        connector = await repo.find_connector_by_webhook_key(provider_name, webhook_key)
    if connector is None:
        return NOT_FOUND
    if runtime.draining:
        log.info("webhook refused: the server is draining", provider=provider_name)
        return WebhookAnswer(
            503,
            json.dumps({"message": "this server is shutting down; try again"}),
            "application/json",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    attributes = {
        "http.request.method": request.method,
        "http.route": WEBHOOK_ROUTE,
        "callbridge.provider": provider_name,
        "callbridge.connector.id": connector.id,
    }
    with (
        runtime.tracer.start_as_current_span(
            "call.webhook", kind=SpanKind.SERVER, attributes=attributes
        ) as span,
        structlog.contextvars.bound_contextvars(provider=provider_name, connector_id=connector.id),
    ):
        answer = await _answer_webhook(runtime, provider, connector, request)
        span.set_attribute("http.response.status_code", answer.status)
        if answer.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return answer


async def _answer_webhook(
    runtime: Runtime, provider: Provider, connector: Any, request: WebhookRequest
) -> WebhookAnswer:
    """Verify, parse, route and answer (in the ``call.webhook`` span)."""
    span = trace.get_current_span()
    try:
        if connector.verify_signatures:
            provider.verify_webhook(request, runtime.credentials_of(connector))
        call = provider.parse_webhook(request)
    except WebhookError as exc:
        span.set_status(Status(StatusCode.ERROR, str(exc)))
        log.warning("webhook rejected", reason=str(exc), status=exc.status)
        return _error(exc.status, str(exc))
    existing = await _existing_call(runtime, connector.id, call.provider_call_id)
    if existing is not None:
        return await _answer_retry(runtime, provider, existing)
    query = {name: values[0] for name, values in _query_params(request).items() if values}
    context = routing_context(runtime, call, connector, query)
    outcome = await traced_route(runtime, context)
    span.set_attribute("callbridge.route.decided", outcome.route is not None)
    if outcome.route is None:
        return await _refuse(runtime, provider, connector, call, outcome.reason)
    span.set_attribute("callbridge.route.strategy", outcome.route.strategy)
    if outcome.route.rule_id is not None:
        span.set_attribute("callbridge.route.rule_id", outcome.route.rule_id)
    region = call_region(runtime, outcome.route, context)
    return await _route(runtime, provider, connector, call, outcome.route, region)


async def traced_route(runtime: Runtime, context: RoutingContext) -> RoutingOutcome:
    """Run the routing chain in a ``call.route`` span: the strategies asked, each one's
    decision and reasons as events, the deciding strategy and rule."""
    with runtime.tracer.start_as_current_span("call.route") as route_span:
        outcome = await route_call(runtime.routing_chain, context)
        route_span.set_attribute(
            "callbridge.route.strategies", [step.strategy for step in outcome.steps]
        )
        for step in outcome.steps:
            route_span.add_event(
                step.strategy,
                {
                    "callbridge.route.decided": step.decided,
                    "callbridge.route.why": step.summary(),
                },
            )
        if outcome.route is not None:
            route_span.set_attribute("callbridge.route.strategy", outcome.route.strategy)
            if outcome.route.rule_id is not None:
                route_span.set_attribute("callbridge.route.rule_id", outcome.route.rule_id)
    return outcome


def call_region(runtime: Runtime, route: Route, context: RoutingContext) -> RegionChoice:
    """The region of a routed call (its rule's, its connector's, its caller's country's…)."""
    return choose_region(
        runtime.settings.routing,
        runtime.settings.server.ingest_url,
        rule_region=route.region,
        connector_region=context.connector.region,
        caller=None if context.facts is None else context.facts.from_,
    )


def routing_context(
    runtime: Runtime,
    call: CallInfo,
    connector: Any,
    query: Mapping[str, str],
    at: datetime | None = None,
) -> RoutingContext:
    """What the routing chain looks at for ``call`` on ``connector``: numbers normalised with
    the connector's region's country (else ``routing.default_country``), the moment ``at``
    (default: now)."""
    view = ConnectorView(
        id=connector.id,
        apikey=connector.apikey,
        provider=connector.provider,
        default_room_id=connector.default_room_id,
        default_rule_id=connector.default_rule_id,
        region=connector.region,
    )
    country = home_country(runtime.settings.routing, connector.region)
    facts = CallFacts(
        connector_id=connector.id,
        provider=connector.provider,
        from_=address(call.from_number, country),
        to=address(call.to_number, country),
        at=at or datetime.fromtimestamp(runtime.clock(), UTC),
    )
    return RoutingContext(call, view, query, facts)


async def _refuse(
    runtime: Runtime, provider: Provider, connector: Any, call: CallInfo, reason: str
) -> WebhookAnswer:
    try:
        row = await runtime.lifecycle.refuse(
            apikey=connector.apikey,
            connector_id=connector.id,
            provider=provider.name,
            provider_call_id=call.provider_call_id,
            from_number=call.from_number,
            to_number=call.to_number,
            account_id=call.account_id,
            detail=reason,
        )
    except DuplicateCallError as duplicate:  # a retry raced the first request
        return await _answer_retry(runtime, provider, duplicate.call)
    span = trace.get_current_span()
    span.set_attribute("callbridge.call.id", row.id)
    span.set_status(Status(StatusCode.ERROR, reason))
    log.warning("call not routed", call_id=row.id, reason=reason)
    return _reject(runtime, provider)


async def _route(
    runtime: Runtime,
    provider: Provider,
    connector: Any,
    call: CallInfo,
    route: Route,
    region: RegionChoice,
) -> WebhookAnswer:
    # The ref is issued before the call row exists, keyed by the provider's call id: a
    # duplicate request racing this one gets the same ref and record (whose call id names the
    # row), and a full ref store refuses before anything is recorded.
    ttl = runtime.settings.refs.ttl_seconds
    span = trace.get_current_span()
    offered = RefRecord(
        call_id=new_call_id(),
        apikey=connector.apikey,
        connector_id=connector.id,
        provider=provider.name,
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
        region=region.name,
        ingest_url=await _home_ingest_url(runtime, connector.apikey, route) or region.ingest_url,
    )
    key = _ref_key(offered.connector_id, offered.provider_call_id)
    try:
        await runtime.ref_store.issue(offered, ttl, idempotency_key=key)
    except RefStoreFull as exc:
        log.warning("call refused: the ref store is full", reason=str(exc))
        span.set_status(Status(StatusCode.ERROR, "ref store full"))
        return WebhookAnswer(
            503,
            json.dumps({"message": "too many calls are waiting to connect; try again later"}),
            "application/json",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    issued = await runtime.ref_store.find(key)
    if issued is None:  # claimed or expired already: only a duplicate request could have
        return await _answer_existing(runtime, provider, connector.id, call.provider_call_id)
    ref, record = issued
    try:
        row = await runtime.lifecycle.route(
            call_id=record.call_id,
            apikey=connector.apikey,
            connector_id=connector.id,
            provider=provider.name,
            provider_call_id=call.provider_call_id,
            room_id=record.room_id,
            ref_ttl_seconds=ttl,
            from_number=call.from_number,
            to_number=call.to_number,
            account_id=call.account_id,
            region=region.name,
            route_strategy=route.strategy,
            route_rule_id=route.rule_id,
            metadata=route.metadata,
        )
    except DuplicateCallError as duplicate:
        return await _answer_retry(runtime, provider, duplicate.call)
    span.set_attribute("callbridge.call.id", row.id)
    if region.name is not None:
        span.set_attribute("callbridge.region", region.name)
    span.set_attribute("callbridge.room.id", record.room_id)
    span.set_attribute(
        "callbridge.codec", f"{record.options.codec.name}/{record.options.codec.sample_rate}"
    )
    log.info(
        "call routed",
        call_id=row.id,
        room_id=record.room_id,
        strategy=route.strategy,
        rule_id=route.rule_id,
        region=region.name,
        codec=record.options.codec.name,
    )
    return _connect(runtime, provider, record, ref)


async def home_elsewhere(runtime: Runtime, tenant: str, route: Route) -> Home | None:
    """``direct`` room mode: the room's home replica when another replica is home (this one
    takes the home when nobody holds it); else ``None`` (also when the home is unknown: the
    call is taken here)."""
    if runtime.settings.cluster.room_mode != "direct":
        return None
    transport = runtime.room_transports.get(route.transport or runtime.settings.rooms.default)
    if not isinstance(transport, HomedRooms):
        return None
    try:
        home = await transport.home_of(tenant, route.room_id)
    except PluginError as exc:
        log.warning("room home unknown: the call is taken here", reason=str(exc))
        return None
    return None if transport.is_me(home) else home


async def _home_ingest_url(runtime: Runtime, tenant: str, route: Route) -> str | None:
    """The public media-socket URL of the room's home replica when it is another one."""
    home = await home_elsewhere(runtime, tenant, route)
    return home.ingest_url if home is not None and home.ingest_url else None


async def _existing_call(runtime: Runtime, connector_id: str, provider_call_id: str) -> Any:
    """The call this connector already has for the provider's call id, or ``None``."""
    async with transaction(runtime.db, runtime.clock) as repo:
        return await repo.get_call_by_provider_id(connector_id, provider_call_id)


async def _answer_existing(
    runtime: Runtime, provider: Provider, connector_id: str, provider_call_id: str
) -> WebhookAnswer:
    existing = await _existing_call(runtime, connector_id, provider_call_id)
    if existing is None:
        return _error(409, "the call is being connected by another request")
    return await _answer_retry(runtime, provider, existing)


async def _answer_retry(runtime: Runtime, provider: Provider, existing: Any) -> WebhookAnswer:
    """The answer to a retried webhook: the first answer while it still applies, else 409."""
    span = trace.get_current_span()
    span.set_attribute("callbridge.call.id", existing.id)
    span.set_attribute("callbridge.retry", True)
    with structlog.contextvars.bound_contextvars(call_id=existing.id):
        if existing.status == CallStatus.FAILED and existing.end_reason == EndReason.NO_ROUTE:
            log.info("retried webhook answered again", status=existing.status)
            return _reject(runtime, provider)
        if existing.status == CallStatus.ROUTED and existing.claimed_at is None:
            found = await runtime.ref_store.find(
                _ref_key(existing.connector_id, existing.provider_call_id)
            )
            if found is not None:
                ref, record = found
                log.info("retried webhook answered again", status=existing.status)
                return _connect(runtime, provider, record, ref)
        log.warning(
            "retried webhook refused: the call is already connected or over",
            status=existing.status,
        )
        over = existing.status in (CallStatus.ENDED, CallStatus.FAILED)
        message = (
            f"call {existing.id} is already over"
            if over
            else f"call {existing.id} is already connected"
        )
        return _error(409, message)


def _connect(runtime: Runtime, provider: Provider, record: RefRecord, ref: str) -> WebhookAnswer:
    """The provider's markup sending the call's media to the socket that ``ref`` opens; built
    from ``record`` alone, so a retried webhook gets exactly the first answer."""
    call = CallInfo(
        provider=record.provider,
        provider_call_id=record.provider_call_id,
        from_number=record.from_number,
        to_number=record.to_number,
        account_id=record.account_id,
    )
    route = Route(
        room_id=record.room_id,
        strategy="",
        transport=record.transport,
        codec=record.options.codec,
        metadata=record.metadata,
    )
    stream_url = provider.stream_url(record.ingest_url or runtime.settings.server.ingest_url, ref)
    markup = provider.answer_markup(call, stream_url, route, record.options)
    return WebhookAnswer(200, markup.body, markup.media_type)


def _reject(runtime: Runtime, provider: Provider) -> WebhookAnswer:
    markup = provider.reject_markup(runtime.settings.routing.reject_message)
    return WebhookAnswer(200, markup.body, markup.media_type)


def _ref_key(connector_id: str, provider_call_id: str) -> str:
    """The idempotency key of a call's ref: one live ref per provider call and connector."""
    return f"{connector_id}:{provider_call_id}"


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
        # A rule names a codec without a rate: the exact spec, else the codec's first rate.
        chosen = [spec for spec in supported if spec == route.codec] or [
            spec for spec in supported if spec.name == route.codec.name
        ]
        if chosen:
            codec = chosen[0]
        else:
            log.warning(
                "route codec not supported by provider; using the connector's",
                codec=f"{route.codec.name}/{route.codec.sample_rate}",
            )
    return StreamOptions(codec=codec, markup_style=connector.markup_style)


def _query_params(request: WebhookRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.public_url).query, keep_blank_values=True)
