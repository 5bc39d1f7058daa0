"""``/v2/webhooks`` (and VideoSDK's ``/v2/sip/webhooks``): where an API key's lifecycle events
are delivered, a signed ``ping`` to test one, and what was delivered.

A URL is checked against the SSRF rules when it is registered (and again, with the resolved
address pinned, every time it is sent to). The endpoint secret of an HMAC signer is shown once,
when it is made; list and get show the URL without its query string, which may hold a token.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from urllib.parse import urlsplit, urlunsplit

from litestar import Controller, Request, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Body
from msgspec import UNSET
from sqlalchemy import select

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.connector_shapes import MessageResponse
from callbridge.api.errors import ApiError
from callbridge.api.shapes import (
    UNAUTHORIZED,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
    request_clock,
    runtime_of,
)
from callbridge.api.webhook_shapes import (
    AttemptData,
    CreateWebhookRequest,
    DeliveryData,
    DeliveryListResponse,
    RedeliverRequest,
    RedeliverResponse,
    RedeliverResult,
    TestResponse,
    TestResult,
    UpdateWebhookRequest,
    WebhookData,
    WebhookListResponse,
    WebhookResponse,
    WebhookSecretResponse,
    WebhookWithSecret,
)
from callbridge.redaction import remember_secrets
from callbridge.store.ids import new_event_id, new_subscription_id
from callbridge.store.models import Delivery, Event, WebhookSubscription
from callbridge.store.repository import Repository, transaction
from callbridge.webhooks import store
from callbridge.webhooks.delivery import AttemptResult, open_secret, seal_secret
from callbridge.webhooks.events import PING, encode
from callbridge.webhooks.service import WebhookService
from callbridge.webhooks.ssrf import UrlRefused, check_url

_NO_EXTRA_FIELDS: Final = {"additional_properties": False}
MAX_REDELIVER_DAYS: Final = 14
_BAD_REQUEST = error_spec(
    "Invalid request: a field the schema refuses, an unknown signer, or a URL the SSRF rules "
    "refuse (not public, cannot be resolved); the message says which."
)
_NOT_FOUND = error_spec("No such webhook (or delivery) for this API key.")


def _service(request: Request[Any, Any, Any]) -> WebhookService:
    service: WebhookService = request.app.state.webhooks
    return service


def shown_url(url: str) -> str:
    """``url`` without its query string and fragment (which may hold a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def _subscription(repo: Repository, apikey: str, webhook_id: str) -> WebhookSubscription:
    """The key's subscription ``webhook_id``; 404 when it has none of that id."""
    row = await store.get_subscription(repo.session, apikey, webhook_id)
    if row is None:
        raise ApiError(404, "Not found")
    return row


def _data(row: WebhookSubscription, default_signer: str) -> WebhookData:
    return WebhookData(
        id=row.id,
        url=shown_url(row.url),
        events=json.loads(row.events),
        signer=row.signer or default_signer,
        has_secret=row.secret is not None,
        enabled=row.disabled_at is None,
        disabled_reason=row.disabled_reason,
        created_at=format_timestamp(row.created_at),
        updated_at=format_timestamp(row.updated_at),
    )


def _with_secret(
    row: WebhookSubscription, default_signer: str, secret: str | None
) -> WebhookWithSecret:
    data = _data(row, default_signer)
    return WebhookWithSecret(**{f: getattr(data, f) for f in data.__struct_fields__}, secret=secret)


async def _check_url(request: Request[Any, Any, Any], url: str) -> None:
    service = _service(request)
    try:
        await check_url(url, service.sender.policy, service.resolver)
    except UrlRefused as exc:
        raise ApiError(400, f"url: {exc}") from None


def _signer_name(request: Request[Any, Any, Any], name: str | None) -> str:
    settings = runtime_of(request).settings.webhooks
    chosen = name or settings.signer
    if chosen not in settings.signers:
        raise ApiError(400, f"signer: must be one of: {', '.join(settings.signers)}")
    return chosen


def _new_secret(request: Request[Any, Any, Any], signer: str, given: str | None) -> str | None:
    if given is not None:
        remember_secrets([given])
        return given
    made = runtime_of(request).signers[signer].new_endpoint_secret()
    if made is not None:
        remember_secrets([made])
    return made


class WebhookController(Controller):
    """The Webhooks API."""

    path = "/v2/webhooks"
    tags = ["webhooks"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT

    @post(
        "/",
        status_code=201,
        summary="Subscribe a URL to lifecycle events",
        description="Returns the endpoint secret once (HMAC signers), when one is used.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def create_webhook(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[CreateWebhookRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> WebhookSecretResponse:
        signer = _signer_name(request, data.signer)
        await _check_url(request, data.url)
        secret = _new_secret(request, signer, data.secret)
        subscription_id = new_subscription_id()
        box = runtime_of(request).credential_box
        clock = request_clock(request)
        async with transaction(request.app.state.db, clock, write=True) as repo:
            now = repo.now()
            row = WebhookSubscription(
                id=subscription_id,
                apikey=principal.apikey,
                url=data.url,
                events=json.dumps(sorted(set(data.events))),
                signer=signer,
                secret=None if secret is None else seal_secret(box, secret, subscription_id),
                created_at=now,
                updated_at=now,
            )
            repo.session.add(row)
        default = runtime_of(request).settings.webhooks.signer
        return WebhookSecretResponse(
            "Webhook created successfully", _with_secret(row, default, secret)
        )

    @get("/", summary="List webhooks", responses={400: _BAD_REQUEST, 401: UNAUTHORIZED})
    async def list_webhooks(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: PageNumber = 1,
        perPage: PerPage = 20,
    ) -> WebhookListResponse:
        async with transaction(request.app.state.db) as repo:
            total, rows = await store.list_subscriptions(
                repo.session, principal.apikey, limit=perPage, offset=(page - 1) * perPage
            )
        default = runtime_of(request).settings.webhooks.signer
        return WebhookListResponse(
            "Webhooks fetched successfully",
            PageInfo.of(page, perPage, total),
            [_data(row, default) for row in rows],
        )

    @get(
        "/{webhook_id:str}",
        summary="Get a webhook",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def get_webhook(
        self, request: Request[Any, Any, Any], principal: Principal, webhook_id: str
    ) -> WebhookResponse:
        async with transaction(request.app.state.db) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
        default = runtime_of(request).settings.webhooks.signer
        return WebhookResponse("Webhook fetched successfully", _data(row, default))

    @patch(
        "/{webhook_id:str}",
        summary="Update a webhook",
        description="A new `secret` or `rotateSecret: true` keeps the old secret signing "
        "alongside the new one for `webhooks.secret_grace_seconds`; the new one is shown once.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def update_webhook(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        webhook_id: str,
        data: Annotated[UpdateWebhookRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> WebhookSecretResponse:
        runtime = runtime_of(request)
        if data.url is not UNSET:
            await _check_url(request, data.url)
        signer = None if data.signer is UNSET else _signer_name(request, data.signer)
        shown_secret: str | None = None
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
            now = repo.now()
            if data.url is not UNSET:
                row.url = data.url
            if data.events is not UNSET:
                row.events = json.dumps(sorted(set(data.events)))
            if signer is not None:
                row.signer = signer
            if data.secret is not UNSET or data.rotate_secret:
                given = None if data.secret is UNSET else data.secret
                shown_secret = _new_secret(
                    request, row.signer or runtime.settings.webhooks.signer, given
                )
                if shown_secret is not None:
                    box = runtime.credential_box
                    if row.secret is not None:
                        row.previous_secret = row.secret
                        row.previous_secret_until = now + timedelta(
                            seconds=runtime.settings.webhooks.secret_grace_seconds
                        )
                    row.secret = seal_secret(box, shown_secret, row.id)
            if data.enabled is not UNSET:
                row.disabled_at = None if data.enabled else now
                row.disabled_reason = None if data.enabled else "disabled through the API"
            row.updated_at = now
        default = runtime.settings.webhooks.signer
        body = _with_secret(row, default, shown_secret)
        return WebhookSecretResponse("Webhook updated successfully", body)

    @delete(
        "/{webhook_id:str}",
        status_code=200,
        summary="Delete a webhook",
        description="Pending deliveries to it are dropped.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def delete_webhook(
        self, request: Request[Any, Any, Any], principal: Principal, webhook_id: str
    ) -> MessageResponse:
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
            await repo.session.delete(row)
        return MessageResponse(message="Webhook deleted successfully")

    @post(
        "/{webhook_id:str}/test",
        status_code=200,
        summary="Send a signed ping",
        description='POSTs `{"webhookType": "ping", …}` now, signed like every event, and '
        "returns what the receiver answered (nothing is retried).",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def test_webhook(
        self, request: Request[Any, Any, Any], principal: Principal, webhook_id: str
    ) -> TestResponse:
        clock = request_clock(request)
        async with transaction(request.app.state.db, clock) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
        event_id = new_event_id()
        body = encode(
            {
                "webhookType": PING,
                "data": {
                    "eventId": event_id,
                    "webhookId": row.id,
                    "timestamp": format_timestamp(datetime.fromtimestamp(clock(), UTC)),
                },
            }
        )
        result = await _service(request).sender.send(row, event_id, body, PING)
        return TestResponse("Ping sent", _test_result(event_id, result))

    @get(
        "/{webhook_id:str}/deliveries",
        summary="List deliveries",
        description="Newest first, each with its attempts (status, latency, the first 20 kB "
        "of the answer).",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def list_deliveries(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        webhook_id: str,
        page: PageNumber = 1,
        perPage: PerPage = 20,
    ) -> DeliveryListResponse:
        async with transaction(request.app.state.db) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
            total = await store.count_deliveries(repo.session, row.id)
            deliveries = await store.deliveries_of(
                repo.session, row.id, limit=perPage, offset=(page - 1) * perPage
            )
            attempts = await store.attempts_of(repo.session, [d.id for d in deliveries])
            events = await repo.session.scalars(
                select(Event).where(Event.id.in_([d.event_id for d in deliveries]))
            )
            types = {event.id: event.type for event in events}
        by_delivery: dict[str, list[AttemptData]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt.delivery_id, []).append(
                AttemptData(
                    attempted_at=format_timestamp(attempt.attempted_at),
                    status_code=attempt.status_code,
                    latency_ms=attempt.latency_ms,
                    error=attempt.error,
                    response_body=attempt.response_body,
                    manual=attempt.manual,
                )
            )
        return DeliveryListResponse(
            "Deliveries fetched successfully",
            PageInfo.of(page, perPage, total),
            [
                _delivery(d, types.get(d.event_id, ""), by_delivery.get(d.id, []))
                for d in deliveries
            ],
        )

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver",
        status_code=200,
        summary="Redeliver one delivery now",
        description="Sends the event again, with its original id; a failure is recorded and "
        "not retried.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def redeliver_one(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        webhook_id: str,
        delivery_id: str,
    ) -> TestResponse:
        async with transaction(request.app.state.db) as repo:
            row = await store.get_subscription(repo.session, principal.apikey, webhook_id)
            delivery = await repo.session.get(Delivery, delivery_id)
            if row is None or delivery is None or delivery.subscription_id != row.id:
                raise ApiError(404, "Not found")
            event = await repo.session.scalar(select(Event).where(Event.id == delivery.event_id))
        if event is None:
            raise ApiError(404, "Not found")
        service = _service(request)
        result = await service.sender.send(
            row, event.id, event.body, event.type, event.trace_parent
        )
        await service.worker.settle(delivery.id, result, manual=True)
        return TestResponse("Redelivered", _test_result(event.id, result))

    @post(
        "/{webhook_id:str}/redeliver",
        status_code=200,
        summary="Redeliver every failed delivery since a time",
        description=f"At most {MAX_REDELIVER_DAYS} days back (an earlier `since` counts from "
        "then); the deliveries are queued with their original event ids and follow the retry "
        "schedule again.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def redeliver_failed(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        webhook_id: str,
        data: Annotated[RedeliverRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> RedeliverResponse:
        try:
            since = datetime.fromisoformat(data.since.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "since: not an ISO 8601 timestamp") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        clock = request_clock(request)
        now = datetime.fromtimestamp(clock(), UTC)
        since = max(since, now - timedelta(days=MAX_REDELIVER_DAYS))
        async with transaction(request.app.state.db, clock, write=True) as repo:
            row = await _subscription(repo, principal.apikey, webhook_id)
            queued = await store.requeue_failed(repo.session, row.id, since, repo.now())
        _service(request).worker.poke()
        return RedeliverResponse("Failed deliveries queued", RedeliverResult(queued=queued))


class SipWebhookController(WebhookController):
    """The same API at VideoSDK's SIP path."""

    path = "/v2/sip/webhooks"
    tags = ["webhooks"]


def _delivery(row: Delivery, event_type: str, attempts: list[AttemptData]) -> DeliveryData:
    return DeliveryData(
        id=row.id,
        event_id=row.event_id,
        event_type=event_type,
        call_id=row.call_id,
        sequence=row.seq,
        status=row.status,  # type: ignore[arg-type]
        attempts=attempts,
        next_attempt_at=None
        if row.next_attempt_at is None
        else format_timestamp(row.next_attempt_at),
        delivered_at=None if row.delivered_at is None else format_timestamp(row.delivered_at),
        created_at=format_timestamp(row.created_at),
    )


def _test_result(event_id: str, result: AttemptResult) -> TestResult:
    return TestResult(
        event_id=event_id,
        delivered=result.ok,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        error=result.error,
    )


__all__ = ["SipWebhookController", "WebhookController", "open_secret"]
