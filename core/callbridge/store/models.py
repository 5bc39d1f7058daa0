"""SQLAlchemy 2 declarative models.

The schema itself is created only by the alembic migrations in ``migrations/versions``; these
models must stay in step with them (``tests/test_store.py`` checks that they do).
All timestamps are timezone-aware UTC (:class:`UTCDateTime`), on SQLite as well.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CALL_STATUSES = ("routed", "answered", "ended", "failed")
"""Every status a call row may hold (see :mod:`callbridge.calls.state` for what they mean)."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which sorts correctly.
    Naive datetimes are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """An API key: its id is the JWT ``apikey`` claim, its secret signs the JWT (HS256)."""

    __tablename__ = "api_keys"

    apikey: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:  # never show the secret
        return f"ApiKey(apikey={self.apikey!r}, name={self.name!r})"


class Connector(Base):
    """A provider connector; only the SHA-256 of its secret webhook key is stored.

    ``codec``/``sample_rate``/``markup_style`` are ``None`` for the provider's default.
    ``credentials`` is an opaque :class:`callbridge.crypto.CredentialBox` token (AES-GCM,
    bound to the connector id); the repository never encrypts or decrypts it.
    """

    __tablename__ = "connectors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    apikey: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_keys.apikey", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    default_room_id: Mapped[str | None] = mapped_column(String(128))
    default_rule_id: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[str | None] = mapped_column(String(32))
    webhook_key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    codec: Mapped[str | None] = mapped_column(String(8))
    sample_rate: Mapped[int | None] = mapped_column(Integer())
    markup_style: Mapped[str | None] = mapped_column(String(32))
    verify_signatures: Mapped[bool] = mapped_column(
        Boolean(), default=False, server_default=false()
    )
    credentials: Mapped[str | None] = mapped_column(Text())
    source: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    """``api``, or ``config`` for a connector the YAML declares (read-only through the API)."""

    def __repr__(self) -> str:  # never show the credentials token
        return f"Connector(id={self.id!r}, apikey={self.apikey!r}, provider={self.provider!r})"


class Call(Base):
    """One phone call.

    ``connector_id`` is deliberately not a foreign key: a call's history outlives the deletion
    of its connector. ``(connector_id, provider_call_id)`` is unique, so a provider retrying
    its voice webhook cannot create a second call. ``status``, ``end_reason`` and the
    lifecycle timestamps are changed only by :class:`callbridge.calls.state.CallLifecycle`.

    ``owner_id`` is the :class:`Instance` (server process) that holds the call: the one that
    answered the webhook, then the one that claimed its media socket. ``claimed_at`` is set
    when a media socket claimed the call's ref; ``ref_expires_at`` is when that ref stops
    being claimable.
    """

    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("connector_id", "provider_call_id"),
        CheckConstraint("status IN ('routed', 'answered', 'ended', 'failed')", name="status"),
        Index("ix_calls_apikey_created_at", "apikey", "created_at"),
        Index("ix_calls_status_ref_expires_at", "status", "ref_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    apikey: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_keys.apikey", ondelete="CASCADE")
    )
    connector_id: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(32))
    provider_call_id: Mapped[str] = mapped_column(String(255))
    from_number: Mapped[str | None] = mapped_column(String(255))
    to_number: Mapped[str | None] = mapped_column(String(255))
    room_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    end_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    account_id: Mapped[str | None] = mapped_column(String(255))
    end_detail: Mapped[str | None] = mapped_column(String(2000))
    owner_id: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ref_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    region: Mapped[str | None] = mapped_column(String(32))
    route_strategy: Mapped[str | None] = mapped_column(String(64))
    route_rule_id: Mapped[str | None] = mapped_column(String(64))
    route_metadata: Mapped[str | None] = mapped_column(Text())
    """The route's free metadata as a JSON object (from the deciding rule)."""
    event_seq: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    """The number of the call's last lifecycle event."""
    media: Mapped[str | None] = mapped_column(Text())
    """The call's media figures as a JSON object, once it ended after being bridged."""

    def __repr__(self) -> str:
        return f"Call(id={self.id!r}, connector_id={self.connector_id!r}, status={self.status!r})"


class Instance(Base):
    """A running server process, alive while it keeps ``heartbeat_at`` fresh.

    Calls owned by an instance that stopped heartbeating are closed as interrupted by the
    sweeper of any other (or the next) instance.
    """

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"Instance(id={self.id!r}, host={self.host!r}, pid={self.pid!r})"


class RoutingRuleRow(Base):
    """A routing rule created through the API (YAML rules live in the configuration).

    ``spec`` holds the rule's match, dispatch and options as JSON (see
    :mod:`callbridge.routing.rule_codec`); ``match_key`` is a digest of its normalised match,
    so conflicting rules (same match, same priority) are found by an index.
    """

    __tablename__ = "routing_rules"
    __table_args__ = (Index("ix_routing_rules_apikey_match", "apikey", "match_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    apikey: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_keys.apikey", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer())
    match_key: Mapped[str] = mapped_column(String(64))
    spec: Mapped[str] = mapped_column(Text())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"RoutingRuleRow(id={self.id!r}, apikey={self.apikey!r}, priority={self.priority})"


class Event(Base):
    """One lifecycle event, written with the state change that caused it.

    ``body`` is the exact JSON every delivery sends (and every signature covers); ``seq``
    numbers a call's events from 1; ``position`` orders every event of the store (the event
    socket replays from it).
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_apikey_position", "apikey", "position"),
        Index("ix_events_call_id_seq", "call_id", "seq"),
    )

    position: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    apikey: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str | None] = mapped_column(String(32))
    connector_id: Mapped[str | None] = mapped_column(String(32))
    room_id: Mapped[str | None] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer())
    type: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text())
    trace_parent: Mapped[str | None] = mapped_column(String(64))
    """The W3C traceparent of the call's span that wrote it: deliveries link to it."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookSubscription(Base):
    """Where an API key's lifecycle events go. ``events`` is a JSON list of event types;
    ``secret``/``previous_secret`` are encrypted (:class:`callbridge.crypto.CredentialBox`,
    bound to the subscription id)."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    apikey: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_keys.apikey", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[str] = mapped_column(Text())
    signer: Mapped[str | None] = mapped_column(String(64))
    secret: Mapped[str | None] = mapped_column(Text())
    previous_secret: Mapped[str | None] = mapped_column(Text())
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:  # never show the URL (it may hold a token) or the secret
        return f"WebhookSubscription(id={self.id!r}, apikey={self.apikey!r})"


DELIVERY_STATUSES = ("pending", "delivering", "delivered", "failed")


class Delivery(Base):
    """One event to one subscription: leased by a worker while it is being sent."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivering', 'delivered', 'failed')", name="status"
        ),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_subscription_id_call_id_seq", "subscription_id", "call_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("events.id", ondelete="CASCADE"))
    subscription_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    call_id: Mapped[str | None] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer())
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_status_code: Mapped[int | None] = mapped_column(Integer())
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeliveryAttempt(Base):
    """One try of a delivery: its answer, latency and the first 20 kB of the body."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer())
    latency_ms: Mapped[int] = mapped_column(Integer())
    error: Mapped[str | None] = mapped_column(String(500))
    response_body: Mapped[str | None] = mapped_column(Text())
    manual: Mapped[bool] = mapped_column(Boolean(), default=False, server_default=false())


class SigningKey(Base):
    """A key every replica signs with, created once by the first to need it."""

    __tablename__ = "signing_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
