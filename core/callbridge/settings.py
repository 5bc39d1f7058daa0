"""Settings: one YAML file, overridable by ``CALLBRIDGE_*`` environment variables.

Nested keys are joined with ``__`` in environment variables, e.g.
``CALLBRIDGE_SERVER__PORT=9000`` or ``CALLBRIDGE_PROVIDERS__ENABLED='["twilio"]'``.
Secrets are never written literally in YAML: ``{$env: NAME}`` reads an environment variable and
``{$file: PATH}`` reads a file (trailing newline stripped).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "CALLBRIDGE_"

_environ: ContextVar[Mapping[str, str] | None] = ContextVar("callbridge_environ", default=None)


class _InjectableEnvSource(EnvSettingsSource):
    """Reads ``CALLBRIDGE_*`` variables from an injected mapping (tests) or ``os.environ``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _environ.get()
        if environ is None:
            return super()._load_env_vars()
        return parse_env_vars(
            environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and, where known, the choices."""


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


def _networks(values: list[str]) -> list[str]:
    """``values``, each checked to be a network (CIDR)."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network (CIDR, e.g. 127.0.0.0/8)") from None
    return values


class ServerSettings(_Section):
    """Where the server listens and how the outside world reaches it."""

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    public_api_url: str | None = Field(
        None,
        description="Public base URL of the REST API and provider webhooks, as providers see it "
        "(behind a proxy, the proxy's URL). Default: http://{host}:{port}.",
    )
    public_ingest_url: str | None = Field(
        None,
        description="Public base URL of the media sockets (ws:// or wss://). "
        "Default: ws://{host}:{port}/ingest.",
    )
    max_call_seconds: float = Field(
        4 * 3600, gt=0, description="A bridged call is ended after this long."
    )
    start_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a claimed media socket may take to send its start."
    )
    max_socket_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Hard limit of one WebSocket message, enforced by the WebSocket layer: a "
        "bigger message closes the socket (1009). Messages over 64 KiB and up to this size are "
        "dropped and counted by callbridge, and the call goes on.",
    )
    access_log: bool = Field(
        False,
        description="Log one line per HTTP request and WebSocket handshake (uvicorn's access "
        "log); webhook keys, refs and tokens in paths and queries are redacted.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of the reverse proxies or load balancers in front of "
        "callbridge: only a connection from one of them may name its client in "
        "`X-Forwarded-For` (the rate limits count per client IP); host bits are cleared. "
        "Empty: the connection's own address is the client's, and `X-Forwarded-For` is "
        "ignored.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, values: list[str]) -> list[str]:
        # Host bits cleared (uvicorn takes an entry with them for a literal, not a network).
        return [str(ipaddress.ip_network(value, strict=False)) for value in _networks(values)]

    @field_validator("public_api_url", "public_ingest_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("public_ingest_url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @property
    def api_url(self) -> str:
        return self.public_api_url or f"http://{self.host}:{self.port}"

    @property
    def ingest_url(self) -> str:
        return self.public_ingest_url or f"ws://{self.host}:{self.port}/ingest"


class ApiKeySettings(_Section):
    """An API key declared in configuration (created or updated at start)."""

    apikey: str = Field(
        ..., min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$", description="Key id."
    )
    secret: SecretStr = Field(
        ..., description="HS256 signing secret of the key's tokens ({$env} or {$file})."
    )
    name: str = Field("", max_length=200, description="Label.")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value


class AuthSettings(_Section):
    """API keys and tokens."""

    api_keys: list[ApiKeySettings] = Field(
        default_factory=list, description="API keys to create or update at start."
    )
    create_dev_key: bool = Field(
        True,
        description="Create a development API key on first start when no key exists, and "
        "print its id (``callbridge token`` then prints a token for it).",
    )
    token_ttl_seconds: int = Field(
        86400, gt=0, description="Lifetime of tokens printed by ``callbridge token``."
    )


class CallSettings(_Section):
    """Keeping every call's record true: expired refs, and calls of processes that stopped."""

    sweep_interval_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How often this process looks for calls whose ref expired unclaimed (they "
        "become failed/ref-expired) and calls of processes that stopped heartbeating (they "
        "become failed/interrupted). Every replica sweeps; each call is closed once.",
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, le=300, description="How often this process records that it is alive."
    )
    owner_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A process that has not heartbeated for this long is taken for dead and "
        "its calls are closed as interrupted. Keep it several heartbeats long.",
    )

    @model_validator(mode="after")
    def _timeout_outlasts_heartbeats(self) -> CallSettings:
        if self.owner_timeout_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                "calls.owner_timeout_seconds must be at least twice calls.heartbeat_seconds"
            )
        return self


class StorageSettings(_Section):
    """Persistence."""

    url: str | None = Field(
        None,
        description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db. "
        "Default: SQLite at {data_dir}/callbridge.db.",
    )


class _PluginSection(_Section):
    config: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-plugin options, keyed by plugin name; each is validated by that plugin.",
    )


class RefSettings(_PluginSection):
    """Single-use call references."""

    store: str = Field("memory", description="Ref store plugin name.")
    ttl_seconds: float = Field(
        90.0, gt=0, le=3600, description="A ref expires this long after the answer is sent."
    )


class ProviderSettings(_PluginSection):
    """Telephony providers."""

    enabled: list[str] = Field(
        default_factory=lambda: ["twilio", "plivo", "telnyx", "custom"],
        description="Provider plugins to enable.",
    )


class RegionSettings(_Section):
    """One region: where its calls' media sockets connect, and which callers it serves."""

    ingest_url: str = Field(
        pattern=r"^wss?://[^\s]+$",
        description="Public base URL of this region's media sockets, e.g. "
        "wss://in002.callbridge.example.com/ingest.",
    )
    countries: list[str] = Field(
        default_factory=list,
        description="ISO 3166 alpha-2 codes (IN, US…) of the callers this region serves when "
        "neither the rule nor the connector pins a region.",
    )
    default_country: str | None = Field(
        None,
        description="Country for national-format numbers of calls of connectors pinned to "
        "this region (defaults to the first of countries).",
    )

    @field_validator("countries")
    @classmethod
    def _countries(cls, values: list[str]) -> list[str]:
        return [_country(value) for value in values]

    @field_validator("default_country")
    @classmethod
    def _default_country(cls, value: str | None) -> str | None:
        return None if value is None else _country(value)

    @property
    def home_country(self) -> str | None:
        return self.default_country or (self.countries[0] if self.countries else None)


def _country(value: str) -> str:
    import phonenumbers

    code = value.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{value!r} is not an ISO 3166 alpha-2 country code")
    return code


class RoutingSettings(_PluginSection):
    """How a call finds its room."""

    chain: list[str] = Field(
        default_factory=lambda: ["room_query", "phone_rules", "default_rule", "default_room"],
        description="Routing strategies, tried in order; the first decision wins.",
    )
    reject_message: str = Field(
        "Sorry, this call cannot be connected.",
        max_length=500,
        description="What the caller hears when no strategy chose a room (then the call ends).",
    )
    default_country: str | None = Field(
        None,
        description="Country (ISO 3166 alpha-2) for national-format numbers when the "
        "connector's region names none; without one, numbers without a + are tried as "
        "international.",
    )
    regions: dict[str, RegionSettings] = Field(
        default_factory=dict,
        description="Regions by name (us002, in002…); the markup's socket URL uses the call's "
        "region's ingest_url.",
    )
    default_region: str | None = Field(
        None,
        description="Region of a call that no rule, connector or caller country places; "
        "without one such calls use server.public_ingest_url.",
    )

    @field_validator("default_country")
    @classmethod
    def _default_country(cls, value: str | None) -> str | None:
        return None if value is None else _country(value)

    @field_validator("regions")
    @classmethod
    def _region_names(cls, regions: dict[str, RegionSettings]) -> dict[str, RegionSettings]:
        for name in regions:
            if not _REGION_NAME.fullmatch(name):
                raise ValueError(f"region {name!r}: 1-32 characters of a-z A-Z 0-9 _ -")
        return regions

    @model_validator(mode="after")
    def _default_region_known(self) -> RoutingSettings:
        if self.default_region is not None and self.default_region not in self.regions:
            raise ValueError(
                f"routing.default_region: {self.default_region!r} is not one of routing.regions"
            )
        return self


_REGION_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


class RoomInstanceSettings(_Section):
    """A named room transport built from a plugin with its own config (several instances of
    one plugin can run side by side, e.g. two ``websocket`` agents)."""

    plugin: str = Field(description="Room transport plugin name (local, websocket…).")
    config: dict[str, Any] = Field(default_factory=dict, description="The plugin's options.")


class RoomSettings(_PluginSection):
    """Room transports."""

    enabled: list[str] = Field(
        default_factory=lambda: ["local"],
        description="Room transports to start: plugin names or names of rooms.instances.",
    )
    default: str = Field("local", description="Transport used when a route names none.")
    participants: str | None = Field(
        None,
        description="Transport of the room participant socket (default: rooms.default).",
    )
    instances: dict[str, RoomInstanceSettings] = Field(
        default_factory=dict,
        description="Named transports: {name: {plugin: websocket, config: {...}}}; a route "
        "or rule names them like plugins.",
    )


class WebhookSettings(_PluginSection):
    """Lifecycle webhooks: signers, egress rules and the delivery schedule."""

    signer: str = Field(
        "rsa_sha256", description="Signer of subscriptions that name none (one of signers)."
    )
    signers: list[str] = Field(
        default_factory=lambda: ["rsa_sha256", "standard_webhooks"],
        description="Webhook signer plugins subscriptions may choose from.",
    )
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) webhook URLs may reach although they are not public, e.g. "
        '["127.0.0.0/8"] for tests or private setups; cloud metadata addresses stay refused.',
    )
    https_only: bool = Field(False, description="Refuse http:// webhook URLs.")
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        max_length=30,
        description="Delays between attempts (8 attempts over about 27.6 h by default).",
    )
    jitter: float = Field(0.2, ge=0, le=0.5, description="Each delay varies by ± this share.")
    timeout_seconds: float = Field(15.0, ge=5, le=30, description="One attempt's timeout.")
    lease_seconds: float = Field(
        60.0,
        ge=5,
        le=600,
        description="A delivery leased by a worker that died is retried after this.",
    )
    poll_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="How often workers look for due deliveries."
    )
    max_in_flight: int = Field(
        16, ge=1, le=500, description="Deliveries one process sends at once."
    )
    secret_grace_seconds: float = Field(
        86400.0,
        ge=0,
        le=7 * 86400,
        description="After a subscription's secret is rotated, how long the old one still signs.",
    )
    workers: bool = Field(True, description="Run delivery workers in this process.")

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return _networks(values)

    @model_validator(mode="after")
    def _default_signer_enabled(self) -> WebhookSettings:
        if self.signer not in self.signers:
            raise ValueError(
                f"webhooks.signer: {self.signer!r} must be one of webhooks.signers "
                f"({', '.join(self.signers)})"
            )
        return self


class EventSocketSettings(_Section):
    """The live event socket (``WS /v2/ws``): how fresh, how far back, how much may wait."""

    poll_interval_seconds: float = Field(
        0.2,
        gt=0,
        le=10,
        description="How often this process reads new lifecycle events from the store (every "
        "process sharing the store sees every event) and pushes them to its sockets.",
    )
    retention_seconds: float = Field(
        86400.0,
        gt=0,
        le=90 * 86400,
        description="How far back a subscription's `since` may reach; an older event id is "
        "refused and the subscription goes live without a replay.",
    )
    keep_days: float = Field(
        30.0,
        ge=14,
        le=3650,
        description="Lifecycle events, their deliveries and attempts are deleted this long after "
        "they were written, once none of their deliveries is still pending (never sooner than "
        "the 14 days redelivery reaches back).",
    )
    buffer_events: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Events that may wait for one slow socket; one more and the socket is "
        "told which event it missed first (`events_dropped`) and closed.",
    )
    ping_interval_seconds: float = Field(
        25.0,
        ge=0.05,
        lt=60,
        description='How often each socket is sent a `{"type": "ping"}` message, so clients '
        "and proxies see traffic on a quiet socket.",
    )


class TelemetrySettings(_Section):
    """Logs and traces."""

    traces: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where spans go: nowhere, stdout, or an OTLP collector (HTTP or gRPC, "
        "see otlp_protocol); while none, OTEL_TRACES_EXPORTER decides.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP traces endpoint: over HTTP e.g. http://collector:4318/v1/traces, "
        "over gRPC e.g. http://collector:4317.",
    )
    metrics: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where metrics are pushed besides GET /metrics: nowhere, stdout, or an "
        "OTLP collector (every OTEL_METRIC_EXPORT_INTERVAL ms, 60 s by default).",
    )
    otlp_metrics_endpoint: str | None = Field(
        None,
        description="OTLP metrics endpoint: over HTTP e.g. http://collector:4318/v1/metrics, "
        "over gRPC e.g. http://collector:4317.",
    )
    otlp_protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None,
        description="OTLP transport of traces and metrics; unset: OTEL_EXPORTER_OTLP_"
        "(TRACES_|METRICS_)PROTOCOL, else http/protobuf. gRPC endpoints look like "
        "http://collector:4317.",
    )
    service_name: str = Field(
        "callbridge", description="OpenTelemetry service.name (OTEL_SERVICE_NAME wins)."
    )
    log_format: Literal["console", "json"] = Field("console", description="Log line format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Level.")


class SipSettings(_Section):
    """SIP Connect: trunks and softphones dial ``sip:<roomId>@<domain>`` (the README's "SIP
    Connect")."""

    enabled: bool = Field(False, description="Run the SIP endpoint (UDP and TCP).")
    host: str = Field("127.0.0.1", description="Interface the SIP endpoint listens on.")
    port: int = Field(5060, ge=1, le=65535, description="SIP port (UDP and TCP).")
    domain: str = Field(
        "127.0.0.1",
        min_length=1,
        max_length=253,
        description="The SIP domain of room addresses (sip:<roomId>@<domain>), also the digest "
        "realm.",
    )
    public_address: str | None = Field(
        None,
        description="The address put in SDP and Contact headers (behind NAT: the public IP). "
        "Default: host.",
    )
    rtp_ports: str = Field(
        "20000-20999",
        pattern=r"^[0-9]{1,5}-[0-9]{1,5}$",
        description="The UDP port range of RTP (each call takes one even port; open it on the "
        "firewall).",
    )
    digest_algorithm: Literal["MD5", "SHA-256"] = Field(
        "MD5",
        description="Digest auth algorithm offered in challenges (common clients fail on SHA-256).",
    )
    nonce_seconds: float = Field(
        30.0, gt=0, le=600, description="A digest nonce is good for this long, and once."
    )
    max_calls: int | None = Field(
        None,
        ge=1,
        description="SIP calls this replica takes at once; more get 486 Busy Here. Unset: as "
        "many as the RTP port range holds (then 503).",
    )
    rtp_timeout_seconds: float = Field(
        30.0,
        ge=5,
        le=3600,
        description="A call whose caller sends no RTP for this long (and is not on hold) is "
        "ended with BYE.",
    )
    tls_certificate: Path | None = Field(
        None, description="PEM certificate chain: also listen for SIP over TLS (port + 1)."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_certificate.")

    @model_validator(mode="after")
    def _ports_in_order(self) -> SipSettings:
        low, high = (int(part) for part in self.rtp_ports.split("-"))
        if not 1024 <= low < high <= 65535:
            raise ValueError("sip.rtp_ports must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("sip.tls_certificate and sip.tls_key go together")
        return self

    @property
    def address(self) -> str:
        """``host:port`` where callers reach this replica's SIP endpoint (``public_address``,
        else ``host``): Contact headers, and a direct-mode redirect to this replica."""
        return f"{self.public_address or self.host}:{self.port}"

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        low, high = (int(part) for part in self.rtp_ports.split("-"))
        return low, high


class IceServer(_Section):
    """A STUN or TURN server browsers and the server use to find a path to each other."""

    urls: list[str] = Field(
        min_length=1, description="stun:host:port or turn:host:port?transport=udp URLs."
    )
    username: str | None = Field(None, description="TURN username.")
    credential: SecretStr | None = Field(
        None, description="TURN password ({$env} or {$file} recommended)."
    )


_RTC_CODECS: tuple[Literal["opus", "PCMU", "PCMA"], ...] = ("opus", "PCMU", "PCMA")


class RtcSettings(_Section):
    """Browser participants over WebRTC (the README's "Browser participants")."""

    codecs: list[Literal["opus", "PCMU", "PCMA"]] = Field(
        default_factory=lambda: list(_RTC_CODECS),
        min_length=1,
        description="Codecs offered to browsers, preferred first (PCMU/PCMA cost less CPU).",
    )
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers (none: host candidates only)."
    )
    host_addresses: list[str] = Field(
        default_factory=list,
        description="The addresses the server gathers ICE host candidates on (behind NAT: add "
        "the public one). Empty: every interface but loopback.",
    )
    reconnect_grace_seconds: float = Field(
        15.0,
        ge=0,
        le=300,
        description="A browser whose signalling socket drops may resume as the same member "
        "within this long (no left/joined in the room); 0: it leaves at once.",
    )


class ClusterSettings(_Section):
    """Several replicas behind one load balancer (the README's "Running at scale")."""

    redis_url: SecretStr | None = Field(
        None,
        description="Redis every replica shares for what crosses replicas: commands to the "
        "replica holding a call or room, room homes ({$env} or {$file}; it may hold a "
        "password). Unset: one replica.",
    )
    room_mode: Literal["relay", "direct"] = Field(
        "relay",
        description="How a call or member reaches its room's home replica: relay (the replica "
        "that accepted the socket relays frames over the internal network; one public address) "
        "or direct (answers carry the home replica's own public URLs, e.g. per-pod hostnames).",
    )
    internal_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+$",
        description="How the other replicas reach this one, e.g. http://10.0.3.7:8000 (a pod "
        "IP). Default: http://{server.host}:{server.port}.",
    )
    room_lease_seconds: float = Field(
        10.0,
        ge=1,
        le=300,
        description="A room's home lease in Redis: renewed while the room lives, re-homed once "
        "it lapses (its replica died).",
    )
    drain_seconds: float = Field(
        30.0,
        ge=0,
        le=24 * 3600,
        description="On SIGTERM: readiness turns false at once, new claims are refused, and "
        "running calls may go on this long; then they end (reason shutdown, hung up at the "
        "provider). Match the orchestrator's grace period (terminationGracePeriodSeconds).",
    )


class RateLimitSettings(_Section):
    """Requests per client IP and minute (a moving window); over a limit the answer is 429 with
    `RateLimit-*` and `Retry-After` headers. 0 turns a limit off. With `cluster.redis_url` the
    counts are shared by every replica; otherwise each replica counts its own."""

    webhooks_per_minute: int = Field(
        1200,
        ge=0,
        description="Voice webhooks (`/v2/hooks/…`) from one client IP. A provider posts every "
        "call's webhook from a few addresses of its own: size this above your busiest "
        "minute of calls.",
    )
    media_sockets_per_minute: int = Field(
        1200,
        ge=0,
        description="Media socket handshakes (`/ingest/…`, a ref's claim) from one client IP.",
    )
    unauthorized_per_minute: int = Field(
        60,
        ge=0,
        description="REST requests answered 401 and sockets refused for their token (close "
        "4401) for one client IP; past it they are answered 429. Requests with a valid token "
        "are never limited.",
    )


class SecuritySettings(_Section):
    """Keys protecting data at rest, and request limits."""

    credentials_key: SecretStr | None = Field(
        None,
        description="Base64 of 32 random bytes: the AES-256-GCM key that encrypts provider "
        "credentials in the database ({$env} or {$file}). Default: a key generated once and "
        "kept in {data_dir}/credentials.key (every replica must share the same key).",
    )
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)


class PluginLoadSettings(_Section):
    """External plugins (installed distributions exposing ``callbridge`` entry points)."""

    load: list[str] = Field(
        default_factory=list,
        description="Entry-point names to load; installed plugins not listed here stay unloaded.",
    )
    disable_external: bool = Field(False, description="Never load external plugins.")


class Settings(BaseSettings):
    """The whole configuration of one callbridge server."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite file and keys.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    calls: CallSettings = Field(default_factory=CallSettings)
    refs: RefSettings = Field(default_factory=RefSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    rooms: RoomSettings = Field(default_factory=RoomSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    events: EventSocketSettings = Field(default_factory=EventSocketSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    rtc: RtcSettings = Field(default_factory=RtcSettings)
    plugins: PluginLoadSettings = Field(default_factory=PluginLoadSettings)
    routing_rules: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Routing rules kept in Git: each is a rule in the API's shape plus `id` "
        "(and `apikey`, else it applies to every API key); read-only through the API.",
    )
    connectors: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Connectors kept in Git: each is a connector in the API's shape plus `id`, "
        "`apikey` and `webhookKey` (from {$env}/{$file}); read-only through the API.",
    )

    @model_validator(mode="after")
    def _default_in_enabled(self) -> Settings:
        for key, name in (
            ("rooms.default", self.rooms.default),
            ("rooms.participants", self.rooms.participants),
        ):
            if name is not None and name not in self.rooms.enabled:
                raise ValueError(
                    f"{key}: {name!r} must be one of rooms.enabled "
                    f"({', '.join(self.rooms.enabled)})"
                )
        return self

    @property
    def participant_transport(self) -> str:
        """The room transport of the participant socket."""
        return self.rooms.participants or self.rooms.default

    @property
    def database_url(self) -> str:
        return self.storage.url or f"sqlite+aiosqlite:///{self.data_dir / 'callbridge.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the YAML file, which arrives as init kwargs.
        return (_InjectableEnvSource(settings_cls), init_settings)


def resolve_secret_refs(node: Any, environ: Mapping[str, str], key_path: str = "") -> Any:
    """Replace every ``{$env: NAME}`` / ``{$file: PATH}`` mapping in a YAML tree by its value."""
    if isinstance(node, dict):
        if set(node) == {"$env"}:
            name = node["$env"]
            if not isinstance(name, str) or name not in environ:
                raise ConfigError(f"{key_path}: environment variable {name!r} is not set")
            return environ[name]
        if set(node) == {"$file"}:
            path = Path(str(node["$file"])).expanduser()
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{key_path}: cannot read {path}: {exc.strerror}") from None
        if any(str(key).startswith("$") for key in node):
            raise ConfigError(
                f"{key_path}: a secret reference is {{$env: NAME}} or {{$file: PATH}}"
            )
        return {
            key: resolve_secret_refs(value, environ, f"{key_path}.{key}" if key_path else str(key))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [
            resolve_secret_refs(item, environ, f"{key_path}[{i}]") for i, item in enumerate(node)
        ]
    return node


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{location}: {message}")
    return "; ".join(lines)


def load_settings(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides.

    Raises:
        ConfigError: with a message naming the bad key.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if config_path is not None:
        path = Path(config_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = resolve_secret_refs(loaded, environ)
    if overrides:
        data = _deep_merge(data, dict(overrides))
    token = _environ.set(environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        _environ.reset(token)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
