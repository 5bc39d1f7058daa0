"""Data access for API keys, connectors and calls.

A :class:`Repository` works inside the caller's session and transaction, so a state change and
the outbox rows it causes can commit together. Methods flush but never commit. Typical use::

    async with transaction(db, clock) as repo:
        connector, webhook_key = await repo.create_connector(apikey, "twilio")

Every connector and call query is scoped to an API key, except the lookups the webhook and
media paths and the call state machine need (:meth:`Repository.find_connector_by_webhook_key`,
:meth:`Repository.get_call_by_provider_id`, :meth:`Repository.get_call_by_id`, the sweeps).
Call rows are inserted and their status changed only through :mod:`callbridge.calls.state`
(:meth:`Repository.insert_call`, :meth:`Repository.update_call`).

Connector credentials are stored as the opaque token the caller gives (see
:mod:`callbridge.crypto`); nothing here encrypts, decrypts or inspects them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.store.ids import (
    CONNECTOR_ID_RE,
    RULE_ID_RE,
    hash_webhook_key,
    is_webhook_key,
    new_api_key_id,
    new_api_secret,
    new_call_id,
    new_connector_id,
    new_webhook_key,
)
from callbridge.store.models import ApiKey, Call, Connector, Instance, RoutingRuleRow

if TYPE_CHECKING:
    from callbridge.store.db import Database

Clock = Callable[[], float]

MIN_SECRET_LENGTH = 32
UPDATABLE_CONNECTOR_FIELDS = frozenset(
    {
        "name",
        "default_room_id",
        "default_rule_id",
        "region",
        "codec",
        "sample_rate",
        "markup_style",
        "verify_signatures",
        "credentials_token",
    }
)
# update_connector field name -> model attribute, where they differ
_CONNECTOR_ATTRIBUTES = {"credentials_token": "credentials"}


def _storable(*values: str | None) -> bool:
    # PostgreSQL rejects NUL in text (even in a WHERE clause); such input can match nothing.
    return not any(v is not None and "\x00" in v for v in values)


class DuplicateCallError(Exception):
    """A call with this ``(connector_id, provider_call_id)`` exists; it is in :attr:`call`
    (detached from its session, so readable after the transaction ended)."""

    def __init__(self, call: Call) -> None:
        super().__init__(f"call already exists: {call.id}")
        self.call = call


class Repository:
    """Queries and changes over one session.

    Args:
        session: the session to work in; the caller owns its transaction.
        clock: wall-clock seconds (``time.time`` by default), used for every timestamp.
    """

    def __init__(self, session: AsyncSession, clock: Clock = time.time) -> None:
        self.session = session
        self._clock = clock

    def now(self) -> datetime:
        """The clock's current time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._clock(), UTC)

    # ----------------------------------------------------------------------- API keys

    async def create_api_key(self, name: str) -> ApiKey:
        """Create an API key with a fresh id and a fresh 32-byte signing secret."""
        key = ApiKey(
            apikey=new_api_key_id(), secret=new_api_secret(), name=name, created_at=self.now()
        )
        self.session.add(key)
        await self.session.flush()
        return key

    async def get_api_key(self, apikey: str) -> ApiKey | None:
        """The API key with this id, or ``None``."""
        if not _storable(apikey):
            return None
        return await self.session.get(ApiKey, apikey)

    async def ensure_api_key(self, apikey: str, secret: str, name: str) -> ApiKey:
        """Insert or update a key declared in configuration (safe when replicas race).

        Raises:
            ValueError: the secret is shorter than 32 characters.
        """
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"API key secret must be at least {MIN_SECRET_LENGTH} characters")
        values = {"apikey": apikey, "secret": secret, "name": name, "created_at": self.now()}
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(ApiKey).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[ApiKey.apikey],
            set_={"secret": statement.excluded.secret, "name": statement.excluded.name},
        )
        await self.session.execute(statement)
        found = await self.session.get(ApiKey, apikey, populate_existing=True)
        assert found is not None
        return found

    async def first_api_key(self) -> ApiKey | None:
        """The oldest API key, or ``None`` when there is none."""
        result = await self.session.scalars(
            select(ApiKey).order_by(ApiKey.created_at, ApiKey.apikey).limit(1)
        )
        return result.first()

    # ----------------------------------------------------------------------- connectors

    async def create_connector(
        self,
        apikey: str,
        provider: str,
        name: str | None = None,
        default_room_id: str | None = None,
        default_rule_id: str | None = None,
        region: str | None = None,
        *,
        codec: str | None = None,
        sample_rate: int | None = None,
        markup_style: str | None = None,
        verify_signatures: bool = False,
        credentials_token: str | None = None,
        connector_id: str | None = None,
    ) -> tuple[Connector, str]:
        """Create a connector; returns it and its plaintext webhook key (shown once, not stored).

        Args:
            codec, sample_rate, markup_style: media options; ``None`` = the provider's default.
            verify_signatures: check provider signatures on this connector's calls.
            credentials_token: the already-encrypted credentials (opaque here).
            connector_id: the id to use (from :func:`~callbridge.store.ids.new_connector_id`),
                when the caller needs it beforehand, e.g. to bind encrypted credentials to it;
                a fresh one by default.
        """
        key = new_webhook_key()
        now = self.now()
        connector = Connector(
            id=connector_id or new_connector_id(),
            apikey=apikey,
            provider=provider,
            name=name,
            default_room_id=default_room_id,
            default_rule_id=default_rule_id,
            region=region,
            webhook_key_hash=hash_webhook_key(key),
            created_at=now,
            updated_at=now,
            codec=codec,
            sample_rate=sample_rate,
            markup_style=markup_style,
            verify_signatures=verify_signatures,
            credentials=credentials_token,
        )
        self.session.add(connector)
        await self.session.flush()
        return connector, key

    async def list_connectors(
        self, apikey: str, *, limit: int | None = None, offset: int = 0
    ) -> list[Connector]:
        """This API key's connectors, newest first."""
        statement = (
            select(Connector)
            .where(Connector.apikey == apikey)
            .order_by(Connector.created_at.desc(), Connector.id.desc())
            .offset(offset)
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    async def count_connectors(self, apikey: str) -> int:
        """How many connectors this API key has."""
        statement = select(func.count()).select_from(Connector).where(Connector.apikey == apikey)
        return int(await self.session.scalar(statement) or 0)

    async def get_connector(self, apikey: str, connector_id: str) -> Connector | None:
        """The connector, or ``None`` if unknown or owned by another API key."""
        if CONNECTOR_ID_RE.fullmatch(connector_id) is None:
            return None
        return await self.session.scalar(
            select(Connector).where(Connector.id == connector_id, Connector.apikey == apikey)
        )

    async def update_connector(
        self, apikey: str, connector_id: str, **fields: str | int | bool | None
    ) -> Connector | None:
        """Set the given fields (``None`` clears one); ``None`` if not found for this key.

        Allowed fields: ``name``, ``default_room_id``, ``default_rule_id``, ``region``,
        ``codec``, ``sample_rate``, ``markup_style``, ``verify_signatures`` (a bool, never
        ``None``) and ``credentials_token`` (the encrypted token; ``None`` removes it).

        Raises:
            TypeError: another field name was given, or ``verify_signatures`` is not a bool.
        """
        unknown = set(fields) - UPDATABLE_CONNECTOR_FIELDS
        if unknown:
            raise TypeError(f"cannot update connector field(s): {', '.join(sorted(unknown))}")
        if "verify_signatures" in fields and not isinstance(fields["verify_signatures"], bool):
            raise TypeError("verify_signatures must be a bool")
        connector = await self.get_connector(apikey, connector_id)
        if connector is None:
            return None
        if fields:
            for field, value in fields.items():
                setattr(connector, _CONNECTOR_ATTRIBUTES.get(field, field), value)
            connector.updated_at = self.now()
            await self.session.flush()
        return connector

    async def rotate_webhook_key(
        self, apikey: str, connector_id: str
    ) -> tuple[Connector, str] | None:
        """Give the connector a new webhook key; the old one stops matching at once."""
        connector = await self.get_connector(apikey, connector_id)
        if connector is None:
            return None
        key = new_webhook_key()
        connector.webhook_key_hash = hash_webhook_key(key)
        connector.updated_at = self.now()
        await self.session.flush()
        return connector, key

    async def delete_connector(self, apikey: str, connector_id: str) -> bool:
        """Delete the connector; ``False`` if not found for this key."""
        if CONNECTOR_ID_RE.fullmatch(connector_id) is None:
            return False
        result = await self.session.execute(
            delete(Connector).where(Connector.id == connector_id, Connector.apikey == apikey)
        )
        return bool(getattr(result, "rowcount", 0))

    async def connectors_with_default_rule(self, apikey: str, rule_id: str) -> list[str]:
        """Ids of this API key's connectors whose ``defaultRuleId`` is ``rule_id``."""
        statement = (
            select(Connector.id)
            .where(Connector.apikey == apikey, Connector.default_rule_id == rule_id)
            .order_by(Connector.id)
        )
        return list(await self.session.scalars(statement))

    async def upsert_config_connector(
        self,
        connector_id: str,
        apikey: str,
        provider: str,
        webhook_key: str,
        **fields: str | int | bool | None,
    ) -> Connector:
        """Create or overwrite the connector the YAML declares as ``connector_id`` (marked
        ``source="config"``); ``fields`` as for :meth:`update_connector`.

        Raises:
            ValueError: the id is taken by a connector created through the API, or by another
                API key's.
        """
        existing = await self.session.get(Connector, connector_id)
        now = self.now()
        if existing is not None and (existing.source != "config" or existing.apikey != apikey):
            raise ValueError(f"connector {connector_id} already exists and is not this entry's")
        connector = existing or Connector(
            id=connector_id, apikey=apikey, provider=provider, created_at=now, source="config"
        )
        connector.provider = provider
        connector.webhook_key_hash = hash_webhook_key(webhook_key)
        for field in UPDATABLE_CONNECTOR_FIELDS:
            setattr(connector, _CONNECTOR_ATTRIBUTES.get(field, field), fields.get(field))
        connector.verify_signatures = bool(fields.get("verify_signatures", False))
        connector.updated_at = now
        if existing is None:
            self.session.add(connector)
        await self.session.flush()
        return connector

    async def delete_config_connectors_except(self, keep: Iterable[str]) -> int:
        """Delete connectors marked ``source="config"`` that the YAML no longer declares."""
        result = await self.session.execute(
            delete(Connector).where(Connector.source == "config", Connector.id.not_in(list(keep)))
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # ------------------------------------------------------------------ routing rules

    async def create_rule(
        self, rule_id: str, apikey: str, name: str, priority: int, match_key: str, spec: str
    ) -> RoutingRuleRow:
        """Store a new rule (already validated and normalised)."""
        now = self.now()
        row = RoutingRuleRow(
            id=rule_id,
            apikey=apikey,
            name=name,
            priority=priority,
            match_key=match_key,
            spec=spec,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def get_rule(self, apikey: str, rule_id: str) -> RoutingRuleRow | None:
        """The rule, or ``None`` if unknown or another API key's."""
        if RULE_ID_RE.fullmatch(rule_id) is None:
            return None
        return await self.session.scalar(
            select(RoutingRuleRow).where(
                RoutingRuleRow.id == rule_id, RoutingRuleRow.apikey == apikey
            )
        )

    async def list_rules(self, apikey: str) -> list[RoutingRuleRow]:
        """Every rule of this API key (the caller orders them)."""
        statement = select(RoutingRuleRow).where(RoutingRuleRow.apikey == apikey)
        return list(await self.session.scalars(statement))

    async def rules_in_conflict(
        self, apikey: str, match_key: str, priority: int, *, other_than: str | None = None
    ) -> list[RoutingRuleRow]:
        """This key's rules with the same match and priority (``other_than`` excluded)."""
        statement = select(RoutingRuleRow).where(
            RoutingRuleRow.apikey == apikey,
            RoutingRuleRow.match_key == match_key,
            RoutingRuleRow.priority == priority,
        )
        if other_than is not None:
            statement = statement.where(RoutingRuleRow.id != other_than)
        return list(await self.session.scalars(statement.order_by(RoutingRuleRow.id)))

    async def update_rule(
        self, apikey: str, rule_id: str, *, name: str, priority: int, match_key: str, spec: str
    ) -> RoutingRuleRow | None:
        """Replace the rule's content; ``None`` if not found for this key."""
        row = await self.get_rule(apikey, rule_id)
        if row is None:
            return None
        row.name, row.priority, row.match_key, row.spec = name, priority, match_key, spec
        row.updated_at = self.now()
        await self.session.flush()
        return row

    async def delete_rule(self, apikey: str, rule_id: str) -> bool:
        """Delete the rule; ``False`` if not found for this key."""
        if RULE_ID_RE.fullmatch(rule_id) is None:
            return False
        result = await self.session.execute(
            delete(RoutingRuleRow).where(
                RoutingRuleRow.id == rule_id, RoutingRuleRow.apikey == apikey
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def find_connector_by_webhook_key(self, provider: str, key: str) -> Connector | None:
        """The connector whose webhook key is ``key`` and whose provider is ``provider``.

        The lookup is by SHA-256 of the key, so it says nothing about the plaintext through
        timing; values that are not shaped like a key are refused without a query.
        """
        if not is_webhook_key(key) or not _storable(provider):
            return None
        return await self.session.scalar(
            select(Connector).where(
                Connector.webhook_key_hash == hash_webhook_key(key),
                Connector.provider == provider,
            )
        )

    # ----------------------------------------------------------------------- calls

    async def insert_call(
        self,
        *,
        call_id: str | None = None,
        apikey: str,
        connector_id: str,
        provider: str,
        provider_call_id: str,
        status: str,
        from_number: str | None = None,
        to_number: str | None = None,
        room_id: str | None = None,
        account_id: str | None = None,
        owner_id: str | None = None,
        ref_expires_at: datetime | None = None,
        end_reason: str | None = None,
        end_detail: str | None = None,
        region: str | None = None,
        route_strategy: str | None = None,
        route_rule_id: str | None = None,
        route_metadata: str | None = None,
    ) -> Call:
        """Insert a call row as given (``call_id``: a fresh one by default); only
        :mod:`callbridge.calls.state` calls this.

        ``account_id`` is the provider account the call belongs to (for REST hang-up). A row
        inserted in an end status gets ``ended_at`` = now. The insert runs in a savepoint, so a
        duplicate leaves the caller's transaction usable.

        Raises:
            DuplicateCallError: this connector already has a call with this provider call id
                (a provider retrying its webhook); the existing call is attached.
            ValueError: a value contains a NUL character (PostgreSQL cannot store it).
        """
        if not _storable(provider_call_id, from_number, to_number, room_id, account_id, region):
            raise ValueError("call fields must not contain NUL characters")
        now = self.now()
        call = Call(
            id=call_id or new_call_id(),
            apikey=apikey,
            connector_id=connector_id,
            provider=provider,
            provider_call_id=provider_call_id,
            from_number=from_number,
            to_number=to_number,
            room_id=room_id,
            account_id=account_id,
            status=status,
            created_at=now,
            owner_id=owner_id,
            ref_expires_at=ref_expires_at,
            end_reason=end_reason,
            end_detail=end_detail,
            ended_at=now if end_reason is not None else None,
            region=region,
            route_strategy=route_strategy,
            route_rule_id=route_rule_id,
            route_metadata=route_metadata,
        )
        try:
            async with self.session.begin_nested():
                self.session.add(call)
        except IntegrityError:
            existing = await self.get_call_by_provider_id(connector_id, provider_call_id)
            if existing is None:
                raise
            # Detached, so it stays readable when the caller's transaction rolls back.
            self.session.expunge(existing)
            raise DuplicateCallError(existing) from None
        return call

    async def get_call_by_provider_id(
        self, connector_id: str, provider_call_id: str
    ) -> Call | None:
        """The call this connector already has for the provider's call id, or ``None``."""
        if not _storable(connector_id, provider_call_id):
            return None
        return await self.session.scalar(
            select(Call).where(
                Call.connector_id == connector_id, Call.provider_call_id == provider_call_id
            )
        )

    async def get_call(self, apikey: str, call_id: str) -> Call | None:
        """The call, or ``None`` if unknown or owned by another API key."""
        if not _storable(apikey, call_id):
            return None
        return await self.session.scalar(
            select(Call).where(Call.id == call_id, Call.apikey == apikey)
        )

    def _calls_of(
        self, apikey: str, connector_id: str | None, status: str | None
    ) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [Call.apikey == apikey]
        if connector_id is not None:
            conditions.append(Call.connector_id == connector_id)
        if status is not None:
            conditions.append(Call.status == status)
        return conditions

    async def list_calls(
        self,
        apikey: str,
        *,
        connector_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Call]:
        """This API key's calls, newest first, optionally of one connector and/or status."""
        if not _storable(apikey, connector_id, status):
            return []
        statement = (
            select(Call)
            .where(*self._calls_of(apikey, connector_id, status))
            .order_by(Call.created_at.desc(), Call.id.desc())
            .offset(offset)
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    async def count_calls(
        self, apikey: str, *, connector_id: str | None = None, status: str | None = None
    ) -> int:
        """How many calls :meth:`list_calls` would list without paging."""
        if not _storable(apikey, connector_id, status):
            return 0
        statement = (
            select(func.count())
            .select_from(Call)
            .where(*self._calls_of(apikey, connector_id, status))
        )
        return int(await self.session.scalar(statement) or 0)

    async def update_call(
        self,
        call_id: str,
        from_statuses: Iterable[str],
        values: Mapping[str, Any],
        *,
        unclaimed_only: bool = False,
    ) -> Call | None:
        """Set ``values`` on the call if its status is one of ``from_statuses`` (and, with
        ``unclaimed_only``, no media socket has claimed it); only :mod:`callbridge.calls.state`
        calls this.

        The check and the change are one ``UPDATE``, so of two racing changes exactly one
        applies. Returns the updated call, or ``None`` when nothing changed.
        """
        conditions = [Call.id == call_id, Call.status.in_(list(from_statuses))]
        if unclaimed_only:
            conditions.append(Call.claimed_at.is_(None))
        result = await self.session.execute(
            update(Call).where(*conditions).values(**values),
            execution_options={"synchronize_session": False},
        )
        if not getattr(result, "rowcount", 0):
            return None
        return await self.get_call_by_id(call_id)

    async def get_call_by_id(self, call_id: str) -> Call | None:
        """The call with this id, whatever API key owns it (for internal bookkeeping only)."""
        if not _storable(call_id):
            return None
        return await self.session.get(Call, call_id, populate_existing=True)

    async def unclaimed_calls_expired_before(self, moment: datetime, limit: int) -> list[str]:
        """Ids of ``routed`` calls whose ref expired before ``moment`` with no socket claim."""
        statement = (
            select(Call.id)
            .where(
                Call.status == "routed",
                Call.claimed_at.is_(None),
                Call.ref_expires_at < moment,
            )
            .order_by(Call.ref_expires_at)
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    async def calls_of_dead_owners(
        self, alive_since: datetime, limit: int, *, alive_owner: str
    ) -> list[str]:
        """Ids of calls held by a process that has not heartbeated since ``alive_since`` (or
        has no instance row at all): answered calls, and routed calls a socket had claimed.
        ``alive_owner`` (the asking process) is alive whatever its row says."""
        alive = select(Instance.id).where(Instance.heartbeat_at >= alive_since)
        statement = (
            select(Call.id)
            .where(
                Call.owner_id.is_not(None),
                Call.owner_id != alive_owner,
                Call.owner_id.not_in(alive),
                (Call.status == "answered")
                | ((Call.status == "routed") & Call.claimed_at.is_not(None)),
            )
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    # ----------------------------------------------------------------------- instances

    async def record_heartbeat(self, instance_id: str, host: str, pid: int) -> None:
        """Insert this process's instance row, or refresh its ``heartbeat_at``."""
        now = self.now()
        result = await self.session.execute(
            update(Instance).where(Instance.id == instance_id).values(heartbeat_at=now),
            execution_options={"synchronize_session": False},
        )
        if not getattr(result, "rowcount", 0):
            self.session.add(
                Instance(id=instance_id, host=host, pid=pid, started_at=now, heartbeat_at=now)
            )
            await self.session.flush()

    async def forget_instance(self, instance_id: str) -> None:
        """Delete an instance row (a process that stopped cleanly)."""
        await self.session.execute(delete(Instance).where(Instance.id == instance_id))

    async def forget_instances_dead_since(self, moment: datetime) -> int:
        """Delete the rows of instances that have not heartbeated since ``moment`` and hold no
        live call; returns how many."""
        holding = select(Call.owner_id).where(
            Call.status.in_(("routed", "answered")), Call.owner_id.is_not(None)
        )
        # NOT IN over a subquery that yields NULL matches nothing; the filter above keeps
        # NULLs out.
        result = await self.session.execute(
            delete(Instance).where(Instance.heartbeat_at < moment, Instance.id.not_in(holding))
        )
        return int(getattr(result, "rowcount", 0) or 0)


@asynccontextmanager
async def transaction(
    db: Database, clock: Clock = time.time, *, write: bool = False
) -> AsyncIterator[Repository]:
    """A :class:`Repository` in a new session and transaction, committed on success.

    ``write=True`` for a transaction that reads, then writes depending on what it read (see
    :meth:`Database.begin_writing`); such transactions of one process also wait their turn
    in order (:meth:`Database.writer`) rather than on SQLite's file lock.
    """
    if not write:
        async with db.session() as session, session.begin():
            yield Repository(session, clock)
        return
    async with db.writer(), db.session() as session, session.begin():
        await db.begin_writing(session)
        yield Repository(session, clock)
