"""Durable webhook delivery: workers lease due deliveries from the store, send each signed
event through the SSRF-safe transport, and record what happened.

- Only 2xx is success. 3xx is a failure and is never followed.
- ``410 Gone`` gives up on the delivery and disables the subscription.
- 429, 502, 504 and timeouts push the next attempt to at least 60 s; ``Retry-After`` (up to
  24 h) is honoured on any failure.
- Otherwise the next attempt follows ``webhooks.retry_schedule_seconds``, each delay varied by
  ± ``webhooks.jitter``; after the last one the delivery is ``failed``.
- A manual redelivery that fails is not retried.
- Each call's events reach a subscription in order: a later event waits while an earlier one
  is pending (see :func:`callbridge.webhooks.store.lease_due`).
- A worker that dies leaves its leases to lapse after ``webhooks.lease_seconds``; another
  worker (or the next start) takes them over: at-least-once, with the same event id.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final

import httpx
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Tracer
from sqlalchemy import select

from callbridge import __version__
from callbridge.crypto import CredentialBox
from callbridge.metrics import Metrics
from callbridge.protocols import SignedMessage, WebhookSigner
from callbridge.settings import WebhookSettings
from callbridge.store.db import Database
from callbridge.store.models import Delivery, Event, WebhookSubscription
from callbridge.store.repository import transaction
from callbridge.telemetry import context_from_trace_parent
from callbridge.webhooks import store
from callbridge.webhooks.ssrf import (
    EgressPolicy,
    PinnedTransport,
    Resolver,
    SystemResolver,
    UrlRefused,
)

log = structlog.get_logger("callbridge.webhooks")

THROTTLED: Final = frozenset({429, 502, 504})
THROTTLE_SECONDS: Final = 60.0
MAX_RETRY_AFTER_SECONDS: Final = 86400.0
USER_AGENT: Final = f"callbridge-webhooks/{__version__}"


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: a status code, or an error (timeout, refused, connection)."""

    status_code: int | None
    latency_ms: int
    error: str | None = None
    body: str | None = None
    retry_after: float | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_delay(
    result: AttemptResult,
    attempts: int,
    schedule: list[float],
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or ``None`` to give
    up (the schedule is used up, or the receiver answered 410)."""
    if result.status_code == 410 or attempts > len(schedule):
        return None
    delay = schedule[attempts - 1] * (1 + jitter * (2 * rand() - 1))
    if result.timed_out or result.status_code in THROTTLED:
        delay = max(delay, THROTTLE_SECONDS)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def seal_secret(box: CredentialBox, secret: str, subscription_id: str) -> str:
    """``secret`` encrypted for storage, bound to the subscription."""
    return box.encrypt({"secret": secret}, subscription_id)


def open_secret(box: CredentialBox, token: str, subscription_id: str) -> str:
    """A stored secret back in clear."""
    return box.decrypt(token, subscription_id)["secret"]


class Sender:
    """Sends one signed event to one subscription (no retries here)."""

    def __init__(
        self,
        settings: WebhookSettings,
        signers: Mapping[str, WebhookSigner],
        box: Callable[[], CredentialBox],
        tracer: Tracer,
        clock: Callable[[], float] = time.time,
        resolver: Resolver | None = None,
    ) -> None:
        self._settings = settings
        self._signers = signers
        self._box = box
        self._tracer = tracer
        self._clock = clock
        self.policy = EgressPolicy.from_strings(settings.allow_networks, settings.https_only)
        self._client = httpx.AsyncClient(
            transport=PinnedTransport(self.policy, resolver or SystemResolver()),
            timeout=settings.timeout_seconds,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def secrets_of(self, subscription: WebhookSubscription) -> str | None:
        """The subscription's secret (and, during a rotation's grace, the previous one,
        space-separated: signers sign with each)."""
        box = self._box()
        secret = (
            None
            if subscription.secret is None
            else open_secret(box, subscription.secret, subscription.id)
        )
        previous_until = subscription.previous_secret_until
        now = datetime.fromtimestamp(self._clock(), UTC)
        if subscription.previous_secret and previous_until is not None and previous_until > now:
            previous = open_secret(box, subscription.previous_secret, subscription.id)
            secret = " ".join(part for part in (secret, previous) if part)
        return secret

    async def send(
        self,
        subscription: WebhookSubscription,
        event_id: str,
        body: str,
        event_type: str,
        trace_parent: str | None = None,
    ) -> AttemptResult:
        signer = self._signers.get(subscription.signer or self._settings.signer)
        if signer is None:
            return AttemptResult(None, 0, f"signer {subscription.signer!r} is not enabled")
        payload = body.encode("utf-8")
        now = self._clock()
        message = SignedMessage(event_id, int(now), self.secrets_of(subscription))
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signer.sign(payload, message),
        }
        call_span = trace.get_current_span(context_from_trace_parent(trace_parent))
        links = [Link(call_span.get_span_context())] if trace_parent else []
        with self._tracer.start_as_current_span(
            "webhook.deliver",
            context=context_from_trace_parent(None),  # its own trace, linked to the call's
            kind=SpanKind.CLIENT,
            links=links,
            attributes={
                "callbridge.webhook.event_type": event_type,
                "callbridge.webhook.subscription_id": subscription.id,
                "http.request.method": "POST",
            },
        ) as span:
            propagate.inject(headers)  # traceparent: the receiver joins this span's trace
            started = time.monotonic()
            try:
                response = await self._client.post(
                    subscription.url, content=payload, headers=headers
                )
            except UrlRefused as exc:
                return self._failed(span, started, f"refused: {exc}")
            except httpx.TimeoutException:
                return self._failed(span, started, "timed out", timed_out=True)
            except httpx.HTTPError as exc:
                return self._failed(span, started, f"{type(exc).__name__}: {exc}")
            latency = round((time.monotonic() - started) * 1000)
            span.set_attribute("http.response.status_code", response.status_code)
            return AttemptResult(
                response.status_code,
                latency,
                None,
                response.text[: store.MAX_STORED_BODY_CHARS],
                retry_after_seconds(
                    response.headers.get("retry-after"), datetime.fromtimestamp(self._clock(), UTC)
                ),
            )

    @staticmethod
    def _failed(
        span: trace.Span, started: float, error: str, *, timed_out: bool = False
    ) -> AttemptResult:
        span.set_attribute("error.type", "timeout" if timed_out else "connection")
        latency = round((time.monotonic() - started) * 1000)
        return AttemptResult(None, latency, error, timed_out=timed_out)


class DeliveryWorker:
    """Leases due deliveries and sends them, up to ``max_in_flight`` at once.

    :meth:`run_once` does one pass (tests drive it under a fake clock); :meth:`start` runs
    passes every ``poll_interval_seconds`` until :meth:`stop`.
    """

    def __init__(
        self,
        db: Database,
        sender: Sender,
        settings: WebhookSettings,
        owner: str,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._sender = sender
        self._settings = settings
        self._owner = owner
        self._clock = clock
        self._rand = rand
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def poke(self) -> None:
        """Look for due deliveries now (an event was just written)."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def stop(self) -> None:
        """Stop leasing; let in-flight attempts finish (within the attempt timeout); leases
        of anything unfinished lapse for another worker."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self._settings.timeout_seconds + 1)
        await self._sender.aclose()

    async def flush(self) -> None:
        """Lease and send what is due, pass after pass, until nothing is, then wait for the
        attempts in flight (callers bound it with a timeout)."""
        while await self.run_once(wait=True):
            pass
        if self._in_flight:
            await asyncio.wait(self._in_flight)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the pass, not after: a poke (or a stop) that comes during the
            # pass must start the next one, not wait out the poll interval.
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("webhook delivery pass failed")
            if self._stopping.is_set():
                return
            try:
                async with asyncio.timeout(self._settings.poll_interval_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self, *, wait: bool = False) -> int:
        """Lease what is due (as many as free slots) and start sending; ``wait``: until the
        sends are done. Returns how many were leased."""
        free = self._settings.max_in_flight - len(self._in_flight)
        if free <= 0:
            return 0
        async with transaction(self._db, self._clock, write=True) as repo:
            leased = await store.lease_due(
                repo.session,
                owner=self._owner,
                now=repo.now(),
                lease_seconds=self._settings.lease_seconds,
                limit=free,
                skip_locked=self._db.dialect == "postgresql",
            )
            work = [
                (delivery.id, delivery.event_id, delivery.subscription_id) for delivery in leased
            ]
        tasks = [asyncio.create_task(self._deliver(*item)) for item in work]
        self._in_flight.update(tasks)
        for task in tasks:
            task.add_done_callback(self._in_flight.discard)
        if wait and tasks:
            await asyncio.gather(*tasks)
        return len(tasks)

    async def _deliver(self, delivery_id: str, event_id: str, subscription_id: str) -> None:
        async with transaction(self._db, self._clock) as repo:
            event = await repo.session.scalar(select(Event).where(Event.id == event_id))
            subscription = await repo.session.get(WebhookSubscription, subscription_id)
        if event is None or subscription is None:
            return
        result = await self._sender.send(
            subscription, event.id, event.body, event.type, event.trace_parent
        )
        await self.settle(delivery_id, result, manual=False)

    async def settle(self, delivery_id: str, result: AttemptResult, *, manual: bool) -> None:
        """Record an attempt and decide the delivery's next step."""
        async with transaction(self._db, self._clock, write=True) as repo:
            delivery = await repo.session.get(Delivery, delivery_id)
            if delivery is None:
                return
            now = repo.now()
            delivery.attempts += 1
            delivery.last_status_code = result.status_code
            delivery.last_error = result.error
            delivery.leased_until = None
            delivery.lease_owner = None
            delivery.updated_at = now
            await store.record_attempt(
                repo.session,
                delivery,
                now=now,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                error=result.error,
                response_body=result.body,
                manual=manual,
            )
            metrics = self._metrics
            if metrics is not None:
                metrics.delivery_latency.record(result.latency_ms, {"manual": str(manual).lower()})
            if result.ok:
                delivery.status = "delivered"
                delivery.delivered_at = now
                if metrics is not None:
                    metrics.deliveries.add(1, {"outcome": "delivered"})
                return
            delay = (
                None
                if manual
                else next_delay(
                    result,
                    delivery.attempts,
                    list(self._settings.retry_schedule_seconds),
                    self._settings.jitter,
                    self._rand,
                )
            )
            if result.status_code == 410:
                subscription = await repo.session.get(WebhookSubscription, delivery.subscription_id)
                if subscription is not None and subscription.disabled_at is None:
                    subscription.disabled_at = now
                    subscription.disabled_reason = "the receiver answered 410 Gone"
                    log.warning("webhook subscription disabled", subscription_id=subscription.id)
            if delay is None:
                delivery.status = "failed"
                delivery.next_attempt_at = None
            else:
                delivery.status = "pending"
                delivery.next_attempt_at = now + timedelta(seconds=delay)
            if metrics is not None:
                metrics.deliveries.add(1, {"outcome": delivery.status.replace("pending", "retry")})
