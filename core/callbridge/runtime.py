"""Assembly of one server's services from settings: plugins, store, tracer."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import pluggy
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Tracer
from redis.asyncio import Redis

from callbridge.calls.state import CallLifecycle, EndReason
from callbridge.cluster.bus import ClusterBus
from callbridge.cluster.commands import command_handlers
from callbridge.cluster.homes import Home, RoomHomes
from callbridge.cluster.relay import HomedRooms
from callbridge.cluster.tokens import relay_key
from callbridge.crypto import CredentialBox, load_credentials_key
from callbridge.media.clock import MediaClock
from callbridge.metrics import Metrics
from callbridge.plugin_types import PluginKind, PluginRecord
from callbridge.plugins import build_plugin_manager
from callbridge.protocols import (
    PluginContext,
    Provider,
    ProviderCredentials,
    RefStore,
    RoomTransport,
    RoutingStrategy,
    WebhookError,
    WebhookSigner,
)
from callbridge.redaction import remember_secrets
from callbridge.registry import Registry
from callbridge.routing.book import RuleBook
from callbridge.routing.config import config_rules
from callbridge.settings import ConfigError, Settings
from callbridge.store.db import Database
from callbridge.telemetry import (
    TracedPlugin,
    build_metric_readers,
    build_tracer_provider,
    get_tracer,
)
from callbridge.webhooks.events import EventWriter
from callbridge.webhooks.events import record as record_event
from callbridge.webhooks.keys import StoredKeys


@dataclass(frozen=True)
class Selection:
    """One plugin the configuration selects, with its validated config."""

    kind: PluginKind
    name: str
    key_path: str
    record: PluginRecord[Any]
    config: Any


def _plugin_sections(settings: Settings) -> list[tuple[PluginKind, str, list[str], str]]:
    """Per plugin kind: its settings section, the names it selects and the key that lists them."""
    return [
        ("provider", "providers", settings.providers.enabled, "enabled"),
        ("routing_strategy", "routing", settings.routing.chain, "chain"),
        ("room_transport", "rooms", settings.rooms.enabled, "enabled"),
        ("webhook_signer", "webhooks", settings.webhooks.signers, "signers"),
        ("ref_store", "refs", [settings.refs.store], "store"),
    ]


def select_plugins(settings: Settings, registry: Registry) -> list[Selection]:
    """Every plugin the settings select, configs validated; raises :class:`ConfigError`."""
    selections: list[Selection] = []
    for kind, section, names, list_key in _plugin_sections(settings):
        configs: dict[str, dict[str, Any]] = getattr(settings, section).config
        registry.check_unused_configs(kind, configs, f"{section}.config")
        single = list_key in ("signer", "store")
        for index, name in enumerate(names):
            key_path = f"{section}.{list_key}" if single else f"{section}.{list_key}[{index}]"
            if name in names[:index]:
                raise ConfigError(f"{key_path}: {name!r} is listed twice")
            instance = settings.rooms.instances.get(name) if kind == "room_transport" else None
            if instance is not None:
                record = registry.get(kind, instance.plugin, f"rooms.instances.{name}.plugin")
                config = registry.validate_config(
                    record, instance.config, f"rooms.instances.{name}.config"
                )
            else:
                record = registry.get(kind, name, key_path)
                raw = configs.get(name) or {}
                config = registry.validate_config(record, raw, f"{section}.config.{name}")
            selections.append(Selection(kind, name, key_path, record, config))
    for name, instance in settings.rooms.instances.items():
        if name not in settings.rooms.enabled:  # still checked: a typo is worth reporting
            record = registry.get(
                "room_transport", instance.plugin, f"rooms.instances.{name}.plugin"
            )
            registry.validate_config(record, instance.config, f"rooms.instances.{name}.config")
    return selections


def plugin_manager_for(settings: Settings) -> pluggy.PluginManager:
    return build_plugin_manager(
        settings.plugins.load, disable_external=settings.plugins.disable_external
    )


SHUTDOWN_GRACE_SECONDS = 5.0
"""At shutdown, how long bridged calls get to end and record their end."""


class ActiveCall(Protocol):
    """A call bridged in this process, as the rest of the server may touch it."""

    def request_hangup(self, reason: EndReason) -> None:
        """End the call from outside, with ``reason`` (the bridge then hangs up and records)."""
        ...


@dataclass
class Runtime:
    """Everything a running server uses, built from :class:`Settings` without I/O.

    Attributes:
        instance_id: this server process, as call owners and heartbeats name it.
        lifecycle: the call state machine; the only way to change a call's status.
        active_calls: calls bridged in this process, by call id.
        call_tasks: the tasks running claimed calls (from claim to the recorded end).
    """

    settings: Settings
    context: PluginContext
    registry: Registry
    providers: dict[str, Provider]
    routing_chain: list[RoutingStrategy]
    room_transports: dict[str, RoomTransport]
    signer: WebhookSigner
    """The default signer (``webhooks.signer``)."""
    ref_store: RefStore
    db: Database
    rules: RuleBook
    tracer_provider: TracerProvider
    tracer: Tracer
    clock: Callable[[], float]
    instance_id: str
    lifecycle: CallLifecycle
    metrics: Metrics = field(default_factory=Metrics)
    """The server's metrics (``GET /metrics``)."""
    signers: dict[str, WebhookSigner] = field(default_factory=dict)
    """Every enabled signer, by name (``webhooks.signers``)."""
    active_calls: dict[str, ActiveCall] = field(default_factory=dict)
    call_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    bus: ClusterBus | None = None
    homes: RoomHomes | None = None
    """Room home leases (``cluster.redis_url``): each room lives on one replica."""
    """Commands to and from other replicas (``cluster.redis_url``); ``None``: one replica."""
    draining: bool = False
    """Set once on SIGTERM (:mod:`callbridge.drain`): not ready, no new calls or claims."""
    _credential_box: CredentialBox | None = None

    @property
    def default_room_transport(self) -> RoomTransport:
        return self.room_transports[self.settings.rooms.default]

    @property
    def credential_box(self) -> CredentialBox:
        """The AES-GCM box for connector credentials (its key is loaded at start)."""
        if self._credential_box is None:
            self._credential_box = CredentialBox(load_credentials_key(self.settings))
        return self._credential_box

    def credentials_of(self, connector: Any) -> ProviderCredentials:
        """The connector's decrypted provider credentials.

        Raises:
            WebhookError: (403) the connector holds none, or they cannot be decrypted.
        """
        credentials = self.optional_credentials(connector)
        if credentials is None:
            raise WebhookError(
                "signature checks are on but the connector holds no credentials", 403
            )
        return credentials

    def optional_credentials(self, connector: Any) -> ProviderCredentials | None:
        token = getattr(connector, "credentials", None)
        if not token:
            return None
        try:
            values = self.credential_box.decrypt(token, connector.id)
        except ValueError:
            raise WebhookError("the connector's credentials cannot be decrypted", 403) from None
        remember_secrets(values.values())
        return ProviderCredentials(values)

    async def start(self) -> None:
        self.credential_box  # noqa: B018 - load or create the key before the first call
        await self.db.migrate()
        keys = StoredKeys(self.db, self.clock)
        for signer in self.signers.values():
            await signer.start(keys)
        await self.ref_store.start()
        for transport in self.room_transports.values():
            await transport.start()
        if self.bus is not None:
            await self.bus.start()
        self._observe()

    def _observe(self) -> None:
        """Gauges read when metrics are collected."""
        clock = self.context.media_clock
        self.metrics.observe_counter(
            "callbridge.media_clock.ticks",
            "Media clock ticks that ran late (more than 5 ms past their deadline) or were "
            "skipped (the loop fell behind).",
            "{tick}",
            lambda: {"late": clock.stats.late_ticks, "skipped": clock.stats.skipped_ticks},
            "kind",
        )
        self.metrics.observe(
            "callbridge.room.members",
            "Room members now, by kind (caller, client, agent).",
            "{member}",
            self._members_by_kind,
            "kind",
        )

    def _members_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(("caller", "client", "agent"), 0)
        for transport in self.room_transports.values():
            count = getattr(getattr(transport, "wrapped", transport), "members_by_kind", None)
            if count is not None:
                for kind, number in count().items():
                    counts[kind] = counts.get(kind, 0) + number
        return counts

    async def end_calls(self, reason: EndReason, grace_seconds: float) -> None:
        """Ask every bridged call to end with ``reason`` and wait up to ``grace_seconds`` for
        the claimed calls to finish (each records its own end)."""
        for call in list(self.active_calls.values()):
            call.request_hangup(reason)
        tasks = {task for task in self.call_tasks if not task.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=grace_seconds)

    async def stop(self) -> None:
        await self.end_calls(EndReason.SHUTDOWN, SHUTDOWN_GRACE_SECONDS)
        for transport in self.room_transports.values():
            await transport.aclose()
        await self.context.media_clock.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.ref_store.aclose()
        if self.bus is not None:
            await self.bus.aclose()
        if self.homes is not None:
            await self.homes.aclose()
        await self.db.dispose()
        self.tracer_provider.shutdown()
        self.metrics.shutdown()


def build_runtime(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    pm: pluggy.PluginManager | None = None,
    span_processors: list[SpanProcessor] | None = None,
    metric_readers: list[MetricReader] | None = None,
) -> Runtime:
    """Select, validate and build every configured plugin. Raises :class:`ConfigError`."""
    registry = Registry(pm or plugin_manager_for(settings))
    selections = select_plugins(settings, registry)
    tracer_provider, exporting = build_tracer_provider(settings.telemetry, span_processors)
    readers = [*build_metric_readers(settings.telemetry), *(metric_readers or ())]
    metrics = Metrics(tracer_provider.resource, readers)
    if exporting is not None:
        metrics.observe_counter(
            "callbridge.telemetry.dropped",
            "Telemetry dropped because the exporter's queue was full (a slow or absent "
            "collector), by signal.",
            "{item}",
            lambda: {"traces": exporting.dropped},
            "signal",
        )
    tracer = get_tracer(tracer_provider)
    db = Database(settings.database_url)
    rules = RuleBook(db, config_rules(settings))
    context = PluginContext(
        data_dir=settings.data_dir,
        clock=clock,
        public_api_url=settings.server.api_url,
        public_ingest_url=settings.server.ingest_url,
        ref_ttl_seconds=settings.refs.ttl_seconds,
        media_clock=MediaClock(),
        rules=rules,
    )
    built: dict[PluginKind, dict[str, Any]] = {
        "provider": {},
        "routing_strategy": {},
        "room_transport": {},
        "webhook_signer": {},
        "ref_store": {},
    }
    for selection in selections:
        plugin = selection.record.factory(selection.config, context)
        built[selection.kind][selection.name] = plugin
    # Proxies stand in for the plugin objects, so they are typed by the protocols they wrap.
    traced: dict[PluginKind, dict[str, Any]] = {
        kind: {name: TracedPlugin(obj, kind, tracer) for name, obj in objs.items()}
        for kind, objs in built.items()
    }
    instance_id = "inst_" + secrets.token_hex(8)
    runtime = Runtime(
        settings=settings,
        context=context,
        registry=registry,
        providers=traced["provider"],
        routing_chain=[traced["routing_strategy"][name] for name in settings.routing.chain],
        room_transports=traced["room_transport"],
        signer=traced["webhook_signer"][settings.webhooks.signer],
        signers=traced["webhook_signer"],
        ref_store=traced["ref_store"][settings.refs.store],
        db=db,
        rules=rules,
        tracer_provider=tracer_provider,
        tracer=tracer,
        clock=clock,
        instance_id=instance_id,
        lifecycle=CallLifecycle(
            db,
            clock,
            instance_id=instance_id,
            listeners=[EventWriter()],
            committed=[metrics.on_transition],
            recorder=record_event,
        ),
        metrics=metrics,
    )
    if settings.cluster.redis_url is not None:
        _join_cluster(runtime, settings.cluster.redis_url.get_secret_value())
    return runtime


def _join_cluster(runtime: Runtime, url: str) -> None:
    """Commands from other replicas, and rooms homed across replicas (relay mode)."""
    settings = runtime.settings
    remember_secrets([urlsplit(url).password or ""])
    runtime.bus = ClusterBus(url, runtime.instance_id, command_handlers(runtime))
    internal_url = (
        settings.cluster.internal_url or f"http://{settings.server.host}:{settings.server.port}"
    )
    lease = settings.cluster.room_lease_seconds
    runtime.homes = RoomHomes(
        Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2),
        Home(
            runtime.instance_id,
            internal_url,
            settings.server.api_url,
            settings.server.ingest_url,
            settings.sip.address if settings.sip.enabled else "",
        ),
        lease,
    )
    token_key = functools.cache(lambda: relay_key(load_credentials_key(settings)))
    runtime.room_transports = {
        name: HomedRooms(transport, name, runtime.homes, token_key, lease, lambda: runtime.draining)
        for name, transport in runtime.room_transports.items()
    }
