"""``create_app(settings)``: the Litestar application, built without import-time side effects."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pluggy
import structlog
from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor

from callbridge import __version__
from callbridge.api.allow_header import answer_options
from callbridge.api.auth import security_components
from callbridge.api.calls import CallController
from callbridge.api.config_connectors import check_config_connectors, sync_config_connectors
from callbridge.api.connectors import ConnectorController
from callbridge.api.errors import exception_handlers
from callbridge.api.event_socket import event_socket
from callbridge.api.health import healthz, readyz
from callbridge.api.hooks import ingest_with_path_ref, ingest_with_query_ref, voice_webhook
from callbridge.api.json_request import JsonRequest
from callbridge.api.openapi import document_api
from callbridge.api.rate_limits import RateLimits
from callbridge.api.raw_socket import keep_server_send
from callbridge.api.relay import relayed_member
from callbridge.api.room_page import room_page
from callbridge.api.room_tokens import RoomTokenController
from callbridge.api.rooms import room_participant
from callbridge.api.routing_rules import RoutingExplainController, RoutingRuleController
from callbridge.api.sip_credentials import SipCredentialController
from callbridge.api.webhooks import SipWebhookController, WebhookController
from callbridge.calls.state import EndReason
from callbridge.calls.sweeper import CallSweeper
from callbridge.drain import Drain
from callbridge.feed.poller import EventFeed
from callbridge.metrics import PROMETHEUS_CONTENT_TYPE
from callbridge.redaction import install_redaction, remember_secrets
from callbridge.rtc.signalling import room_rtc, use_host_addresses
from callbridge.runtime import SHUTDOWN_GRACE_SECONDS, Runtime, build_runtime
from callbridge.safe_json import BODY_LIMITS
from callbridge.settings import Settings
from callbridge.sip.service import SipService
from callbridge.store.repository import transaction
from callbridge.webhooks.service import WebhookService
from callbridge.webhooks.ssrf import Resolver

log = structlog.get_logger("callbridge.app")


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def prometheus_metrics(state: State) -> Response[bytes]:
    """The server's metrics in Prometheus' text format."""
    runtime: Runtime = state.runtime
    return Response(
        runtime.metrics.prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE, status_code=200
    )


@get("/v2/public/rsa-public-key", tags=["webhooks"], summary="Webhook signing public key")
async def rsa_public_key(state: State) -> dict[str, object]:
    """The PEM public key that verifies ``videosdk-signature`` on lifecycle webhooks."""
    runtime: Runtime = state.runtime
    return {"message": "Public key", "data": {"publicKey": runtime.signer.public_key_pem()}}


async def ensure_api_keys(runtime: Runtime) -> None:
    """Create configured API keys, and a development key on an empty store if allowed."""
    auth = runtime.settings.auth
    remember_secrets(key.secret.get_secret_value() for key in auth.api_keys)
    async with transaction(runtime.db, runtime.clock) as repo:
        for key in auth.api_keys:
            await repo.ensure_api_key(key.apikey, key.secret.get_secret_value(), key.name)
        if auth.create_dev_key and await repo.first_api_key() is None:
            created = await repo.create_api_key("development")
            remember_secrets([created.secret])
            log.info(
                "development API key created; run `callbridge token` to get a token",
                apikey=created.apikey,
            )


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    pm: pluggy.PluginManager | None = None,
    span_processors: list[SpanProcessor] | None = None,
    webhook_resolver: Resolver | None = None,
    metric_readers: list[MetricReader] | None = None,
) -> Litestar:
    """Build the application for ``settings``. Raises :class:`ConfigError` on a bad config.

    ``webhook_resolver`` replaces the system's DNS for webhook URLs (tests).

    Installs secret redaction on every log path of the process (structlog, the standard
    logging module, tracebacks), so an app embedded in another server redacts as well.
    """
    install_redaction()
    runtime = build_runtime(
        settings,
        clock=clock,
        pm=pm,
        span_processors=span_processors,
        metric_readers=metric_readers,
    )
    webhooks = WebhookService(runtime, webhook_resolver)
    event_feed = EventFeed(
        runtime.db, settings.events, clock=clock, on_new_events=webhooks.worker.poke
    )
    runtime.metrics.observe(
        "callbridge.events.clients",
        "Clients connected to the live event socket.",
        "{socket}",
        lambda: {"ws": event_feed.subscriber_count},
        "transport",
    )
    sip = SipService(runtime) if settings.sip.enabled else None
    use_host_addresses(settings.rtc.host_addresses)
    config_connectors = check_config_connectors(
        settings, runtime.providers, runtime.rules.config_rules
    )

    redis_url = settings.cluster.redis_url
    rate_limits = RateLimits(
        settings.security.rate_limits,
        redis_url.get_secret_value() if redis_url is not None else None,
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        await ensure_api_keys(runtime)
        await sync_config_connectors(runtime, config_connectors)
        sweeper = CallSweeper(runtime)
        await sweeper.start()
        await webhooks.start()
        await event_feed.start()
        if sip is not None:
            await sip.start()
        log.info(
            "callbridge ready",
            api_url=settings.server.api_url,
            ingest_url=settings.server.ingest_url,
            providers=list(runtime.providers),
        )
        try:
            yield
        finally:
            await runtime.end_calls(EndReason.SHUTDOWN, SHUTDOWN_GRACE_SECONDS)
            if sip is not None:
                await sip.stop()
            await sweeper.stop()
            await event_feed.stop()
            await webhooks.stop()
            await runtime.stop()

    app = Litestar(
        route_handlers=[
            ConnectorController,
            CallController,
            RoutingRuleController,
            RoutingExplainController,
            WebhookController,
            SipWebhookController,
            SipCredentialController,
            RoomTokenController,
            voice_webhook,
            ingest_with_path_ref,
            ingest_with_query_ref,
            room_participant,
            room_rtc,
            room_page,
            relayed_member,
            event_socket,
            rsa_public_key,
            prometheus_metrics,
            healthz,
            readyz,
        ],
        lifespan=[lifespan],
        on_startup=[document_api],
        request_class=JsonRequest,
        request_max_body_size=BODY_LIMITS.max_bytes,
        before_request=answer_options,
        middleware=[rate_limits.middleware],
        exception_handlers=exception_handlers(),
        state=State(
            {
                "runtime": runtime,
                "webhooks": webhooks,
                "event_feed": event_feed,
                "drain": Drain(runtime, webhooks),
                "sip": sip,
                "db": runtime.db,
                "public_api_url": settings.server.api_url,
                "provider_names": list(settings.providers.enabled),
                "clock": clock,
                "rate_limits": rate_limits,
            }
        ),
        openapi_config=OpenAPIConfig(
            title="callbridge",
            version=__version__,
            path="/schema",
            components=security_components(),
        ),
        logging_config=None,
        debug=False,
    )
    app.asgi_handler = keep_server_send(app.asgi_handler)
    return app
