"""The store (migrations, repository) on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, inspect, select, text
from sqlalchemy.exc import IntegrityError

from callbridge.store.db import MIGRATIONS_PATH, Database
from callbridge.store.ids import hash_webhook_key
from callbridge.store.models import ApiKey, Base, Call
from callbridge.store.repository import DuplicateCallError, Repository, transaction
from tests.stores import START, StepClock, clock, database, db

__all__ = ["clock", "database", "db"]  # fixtures

CONNECTOR_ID = re.compile(r"^cn_[a-z0-9]{16}$")
WEBHOOK_KEY = re.compile(r"^whk_[A-Za-z0-9]{32}$")
CALL_ID = re.compile(r"^call_[a-z0-9]{20}$")
API_KEY = re.compile(r"^ak_[A-Za-z0-9_-]{24}$")
HEAD = "0007"


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def _version(db: Database) -> list[str]:
    async with db.engine.connect() as connection:
        rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return [row[0] for row in rows]


async def _new_key(db: Database, clock: StepClock, name: str = "k") -> str:
    async with transaction(db, clock) as repo:
        return (await repo.create_api_key(name)).apikey


# --------------------------------------------------------------------------- migrations


async def test_migrations_apply_from_empty_and_are_idempotent(database: Database) -> None:
    assert "connectors" not in await _tables(database)
    await database.migrate()
    assert {"api_keys", "connectors", "calls", "alembic_version"} <= await _tables(database)
    assert await _version(database) == [HEAD]
    await database.migrate()
    assert await _version(database) == [HEAD]


async def test_concurrent_migrations_take_turns(database: Database) -> None:
    twin = Database(database.url.render_as_string(hide_password=False))
    try:
        await asyncio.gather(database.migrate(), twin.migrate(), database.migrate())
    finally:
        await twin.dispose()
    assert await _version(database) == [HEAD]


async def test_models_match_the_migrations(db: Database) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 'cb.db'}")
    try:
        await db.migrate()
        assert (tmp_path / "a" / "b" / "cb.db").exists()
        async with db.engine.connect() as connection:
            assert (await connection.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await connection.scalar(text("PRAGMA foreign_keys"))) == 1
    finally:
        await db.dispose()


async def test_sqlite_writers_of_one_process_take_turns_in_order(
    tmp_path: Path, clock: StepClock
) -> None:
    """Write transactions queue on the event loop, first come first served, so none waits on
    SQLite's file lock: with a 1 ms busy timeout, twenty writers that each hold their
    transaction across several awaits all commit, one after another, in the order they came."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cb.db'}")

    @event.listens_for(db.engine.sync_engine, "connect")
    def _impatient(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=1")

    entered: list[int] = []
    inside = 0

    async def writer(number: int) -> None:
        nonlocal inside
        async with transaction(db, clock, write=True) as repo:
            inside += 1
            assert inside == 1, "two writers of one process overlapped"
            entered.append(number)
            await repo.first_api_key()
            await asyncio.sleep(0.002)
            await repo.create_api_key(f"writer-{number}")
            inside -= 1

    try:
        await db.migrate()
        await asyncio.gather(*(writer(number) for number in range(20)))
        assert entered == list(range(20))
        async with transaction(db, clock) as repo:
            names = {key.name for key in await repo.session.scalars(select(ApiKey))}
        assert names == {f"writer-{number}" for number in range(20)}
    finally:
        await db.dispose()


async def test_a_nested_write_transaction_fails_instead_of_waiting_for_itself(
    tmp_path: Path, clock: StepClock
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cb.db'}")
    try:
        await db.migrate()
        async with transaction(db, clock, write=True):
            with pytest.raises(RuntimeError, match="nested write transaction"):
                async with asyncio.timeout(5), transaction(db, clock, write=True):
                    pass
        async with transaction(db, clock, write=True) as repo:  # the turn was given back
            await repo.create_api_key("after")
    finally:
        await db.dispose()


async def test_foreign_keys_are_enforced(db: Database, clock: StepClock) -> None:
    with pytest.raises(IntegrityError):
        async with transaction(db, clock) as repo:
            await repo.create_connector("ak_nobody", "twilio")


# --------------------------------------------------------------------------- API keys


async def test_api_keys(db: Database, clock: StepClock) -> None:
    async with transaction(db, clock) as repo:
        assert await repo.first_api_key() is None
        first = await repo.create_api_key("first")
        clock.advance(1)
        second = await repo.create_api_key("second")
    assert API_KEY.fullmatch(first.apikey)
    assert len(first.secret) >= 43  # 32 random bytes, URL-safe base64
    assert first.secret != second.secret
    assert first.secret not in repr(first)
    async with transaction(db, clock) as repo:
        found = await repo.get_api_key(first.apikey)
        assert found is not None and found.secret == first.secret and found.name == "first"
        assert found.created_at.tzinfo is not None
        assert found.created_at.timestamp() == START
        assert await repo.get_api_key("ak_unknown") is None
        assert await repo.get_api_key("ak_\x00") is None
        oldest = await repo.first_api_key()
        assert oldest is not None and oldest.apikey == first.apikey


async def test_ensure_api_key_inserts_then_updates(db: Database, clock: StepClock) -> None:
    secret_one, secret_two = "1" * 40, "2" * 40
    async with transaction(db, clock) as repo:
        created = await repo.ensure_api_key("ak_config", secret_one, "from config")
        assert (created.secret, created.name) == (secret_one, "from config")
    clock.advance(60)
    async with transaction(db, clock) as repo:
        updated = await repo.ensure_api_key("ak_config", secret_two, "renamed")
        assert (updated.secret, updated.name) == (secret_two, "renamed")
        assert updated.created_at.timestamp() == START  # created_at kept
    async with transaction(db, clock) as repo:
        found = await repo.get_api_key("ak_config")
        assert found is not None and found.secret == secret_two
        with pytest.raises(ValueError, match="at least 32"):
            await repo.ensure_api_key("ak_short", "too-short", "x")


# --------------------------------------------------------------------------- connectors


async def test_connector_lifecycle(db: Database, clock: StepClock) -> None:
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        connector, key = await repo.create_connector(
            apikey,
            "twilio",
            name="Main",
            default_room_id="room-1",
            default_rule_id=None,
            region="us002",
        )
    assert CONNECTOR_ID.fullmatch(connector.id)
    assert WEBHOOK_KEY.fullmatch(key)
    assert connector.webhook_key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(connector)

    async with transaction(db, clock) as repo:
        got = await repo.get_connector(apikey, connector.id)
        assert got is not None
        assert (got.provider, got.name, got.default_room_id, got.default_rule_id, got.region) == (
            "twilio",
            "Main",
            "room-1",
            None,
            "us002",
        )
        assert got.created_at.tzinfo is UTC and got.created_at.timestamp() == START
        assert got.updated_at == got.created_at
        assert [c.id for c in await repo.list_connectors(apikey)] == [connector.id]
        assert await repo.count_connectors(apikey) == 1

    clock.advance(30)
    async with transaction(db, clock) as repo:
        updated = await repo.update_connector(
            apikey, connector.id, name=None, default_rule_id="rule-9"
        )
        assert updated is not None
    async with transaction(db, clock) as repo:
        got = await repo.get_connector(apikey, connector.id)
        assert got is not None
        assert (got.name, got.default_room_id, got.default_rule_id, got.region) == (
            None,
            "room-1",
            "rule-9",
            "us002",
        )
        assert got.updated_at.timestamp() == START + 30
        assert got.created_at.timestamp() == START
        with pytest.raises(TypeError, match="provider"):
            await repo.update_connector(apikey, connector.id, provider="plivo")

    async with transaction(db, clock) as repo:
        assert await repo.delete_connector(apikey, connector.id) is True
    async with transaction(db, clock) as repo:
        assert await repo.delete_connector(apikey, connector.id) is False
        assert await repo.get_connector(apikey, connector.id) is None
        assert await repo.find_connector_by_webhook_key("twilio", key) is None
        assert await repo.list_connectors(apikey) == []


async def test_list_is_newest_first_and_pages(db: Database, clock: StepClock) -> None:
    apikey = await _new_key(db, clock)
    ids = []
    for n in range(5):
        clock.advance(1)
        async with transaction(db, clock) as repo:
            ids.append((await repo.create_connector(apikey, "plivo", name=f"c{n}"))[0].id)
    newest_first = list(reversed(ids))
    async with transaction(db, clock) as repo:
        assert [c.id for c in await repo.list_connectors(apikey)] == newest_first
        page = await repo.list_connectors(apikey, limit=2, offset=2)
        assert [c.id for c in page] == newest_first[2:4]
        assert await repo.count_connectors(apikey) == 5


async def test_tenant_isolation(db: Database, clock: StepClock) -> None:
    mine, theirs = await _new_key(db, clock, "mine"), await _new_key(db, clock, "theirs")
    async with transaction(db, clock) as repo:
        connector, key = await repo.create_connector(mine, "twilio", name="mine")
    async with transaction(db, clock) as repo:
        assert await repo.get_connector(theirs, connector.id) is None
        assert await repo.update_connector(theirs, connector.id, name="stolen") is None
        assert await repo.rotate_webhook_key(theirs, connector.id) is None
        assert await repo.delete_connector(theirs, connector.id) is False
        assert await repo.list_connectors(theirs) == []
        assert await repo.count_connectors(theirs) == 0
    async with transaction(db, clock) as repo:
        still = await repo.get_connector(mine, connector.id)
        assert still is not None and still.name == "mine"
        found = await repo.find_connector_by_webhook_key("twilio", key)
        assert found is not None and found.id == connector.id


async def test_webhook_key_lookup_and_rotation(db: Database, clock: StepClock) -> None:
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        connector, old_key = await repo.create_connector(apikey, "telnyx")
    async with transaction(db, clock) as repo:
        found = await repo.find_connector_by_webhook_key("telnyx", old_key)
        assert found is not None and found.id == connector.id
        assert await repo.find_connector_by_webhook_key("twilio", old_key) is None
        assert await repo.find_connector_by_webhook_key("telnyx", old_key[:-1]) is None
        assert await repo.find_connector_by_webhook_key("telnyx", "whk_" + "A" * 32) is None
        assert await repo.find_connector_by_webhook_key("telnyx", "not a key") is None
        assert await repo.find_connector_by_webhook_key("tel\x00nyx", old_key) is None

    async with transaction(db, clock) as repo:
        rotated = await repo.rotate_webhook_key(apikey, connector.id)
    assert rotated is not None
    same, new_key = rotated
    assert same.id == connector.id and WEBHOOK_KEY.fullmatch(new_key) and new_key != old_key
    async with transaction(db, clock) as repo:
        assert await repo.find_connector_by_webhook_key("telnyx", old_key) is None
        found = await repo.find_connector_by_webhook_key("telnyx", new_key)
        assert found is not None and found.id == connector.id


async def test_plaintext_webhook_key_is_stored_nowhere(db: Database, clock: StepClock) -> None:
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        _, key = await repo.create_connector(apikey, "twilio", name="n", default_room_id="r")
    async with transaction(db, clock) as repo:
        rotated = await repo.rotate_webhook_key(apikey, _.id)
    assert rotated is not None
    keys = [key, rotated[1]]
    secret_parts = [k.removeprefix("whk_") for k in keys]

    dump: list[str] = []
    async with db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in await connection.execute(select(table)):
                dump.extend(str(value) for value in row)
    text_dump = "\n".join(dump)
    for part in secret_parts:
        assert part not in text_dump
    assert hash_webhook_key(rotated[1]) in text_dump
    assert hash_webhook_key(key) not in text_dump  # the old hash was replaced


async def test_queries_with_nul_characters_find_nothing(db: Database, clock: StepClock) -> None:
    # PostgreSQL rejects NUL even in a WHERE clause; the repository must not send it there.
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        assert await repo.get_connector(apikey, "cn_\x00") is None
        assert await repo.update_connector(apikey, "\x00", name="x") is None
        assert await repo.rotate_webhook_key(apikey, "\x00") is None
        assert await repo.delete_connector(apikey, "\x00") is False
        assert await repo.get_call(apikey, "call_\x00") is None
        assert await repo.get_call_by_provider_id("cn_x", "CA\x00") is None
        with pytest.raises(ValueError, match="NUL"):
            await repo.insert_call(
                apikey=apikey,
                connector_id="cn_x",
                provider="twilio",
                provider_call_id="CA\x00",
                status="routed",
            )


# --------------------------------------------------------------------------- calls


async def _connector(db: Database, clock: StepClock) -> tuple[str, str]:
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        connector, _ = await repo.create_connector(apikey, "twilio")
    return apikey, connector.id


async def test_call_rows(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    async with transaction(db, clock) as repo:
        call = await repo.insert_call(
            apikey=apikey,
            connector_id=connector_id,
            provider="twilio",
            provider_call_id="CA123",
            status="routed",
            from_number="+15550001111",
            to_number="+15550002222",
            room_id="room-1",
        )
    assert CALL_ID.fullmatch(call.id)
    assert call.status == "routed" and call.created_at.timestamp() == START
    assert call.ended_at is None

    async with transaction(db, clock) as repo:
        stored = await repo.get_call(apikey, call.id)
        assert stored is not None
        assert stored.created_at.tzinfo is UTC
        assert (stored.from_number, stored.to_number, stored.room_id) == (
            "+15550001111",
            "+15550002222",
            "room-1",
        )
        other = await _new_key(db, clock, "other")
        assert await repo.get_call(other, call.id) is None
        by_provider = await repo.get_call_by_provider_id(connector_id, "CA123")
        assert by_provider is not None and by_provider.id == call.id
        assert (await repo.get_call_by_id(call.id)) is not None


async def test_update_call_applies_only_from_the_given_statuses(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    async with transaction(db, clock) as repo:
        call = await repo.insert_call(
            apikey=apikey,
            connector_id=connector_id,
            provider="twilio",
            provider_call_id="CA9",
            status="routed",
        )
        assert await repo.update_call(call.id, ["answered"], {"status": "ended"}) is None
        claimed = await repo.update_call(
            call.id, ["routed"], {"claimed_at": repo.now()}, unclaimed_only=True
        )
        assert claimed is not None and claimed.claimed_at is not None
        again = await repo.update_call(call.id, ["routed"], {"owner_id": "x"}, unclaimed_only=True)
        assert again is None
        answered = await repo.update_call(call.id, ["routed"], {"status": "answered"})
        assert answered is not None and answered.status == "answered"


async def test_duplicate_provider_call_id(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    _, other_connector = await _connector(db, clock)
    common = {"apikey": apikey, "provider": "twilio", "provider_call_id": "CA-dup"}
    async with transaction(db, clock) as repo:
        first = await repo.insert_call(connector_id=connector_id, status="routed", **common)

    async with transaction(db, clock) as repo:
        with pytest.raises(DuplicateCallError) as caught:
            await repo.insert_call(connector_id=connector_id, status="routed", **common)
        assert caught.value.call.id == first.id
        # the savepoint kept the surrounding transaction usable
        second = await repo.insert_call(connector_id=other_connector, status="routed", **common)
    async with transaction(db, clock) as repo:
        assert await repo.get_call(apikey, second.id) is not None

    # and the database itself enforces the pair, whatever the code path
    with pytest.raises(IntegrityError):
        async with db.session() as session, session.begin():
            session.add(
                Call(
                    id="call_" + "x" * 20,
                    connector_id=connector_id,
                    status="routed",
                    created_at=first.created_at,
                    **common,
                )
            )


async def test_repository_on_a_caller_session(db: Database, clock: StepClock) -> None:
    apikey = await _new_key(db, clock)
    async with db.session() as session:
        async with session.begin():
            connector, _ = await Repository(session, clock).create_connector(apikey, "twilio")
        connector_id = connector.id
        await Repository(session, clock).update_connector(apikey, connector_id, name="a")
        await session.rollback()
    async with transaction(db, clock) as repo:
        got = await repo.get_connector(apikey, connector_id)
        assert got is not None and got.name is None


# --------------------------------------------------------------------------- migration 0002


async def _migrate_to(db: Database, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_PATH))

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    async with db.engine.begin() as connection:
        await connection.run_sync(run)


async def _columns(db: Database, table: str) -> dict[str, Any]:
    def read(connection: Connection) -> dict[str, Any]:
        return {column["name"]: column for column in inspect(connection).get_columns(table)}

    async with db.engine.connect() as connection:
        return await connection.run_sync(read)


async def test_upgrade_from_0001_keeps_rows(database: Database) -> None:
    await _migrate_to(database, "0001")
    assert await _version(database) == ["0001"]
    created = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    if database.dialect == "sqlite":
        created = created.replace(tzinfo=None)
    async with database.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO api_keys (apikey, secret, name, created_at) "
                "VALUES ('ak_old', :secret, 'old', :at)"
            ),
            {"secret": "s" * 43, "at": created},
        )
        await connection.execute(
            text(
                "INSERT INTO connectors (id, apikey, provider, name, default_room_id, "
                "webhook_key_hash, created_at, updated_at) VALUES ('cn_0000000000000001', "
                "'ak_old', 'twilio', 'kept', 'room-1', :hash, :at, :at)"
            ),
            {"hash": "a" * 64, "at": created},
        )
        await connection.execute(
            text(
                "INSERT INTO calls (id, apikey, connector_id, provider, provider_call_id, "
                "status, created_at) VALUES ('call_00000000000000000001', 'ak_old', "
                "'cn_0000000000000001', 'twilio', 'CA1', 'ended', :at)"
            ),
            {"at": created},
        )

    await database.migrate()
    assert await _version(database) == [HEAD]
    connectors = await _columns(database, "connectors")
    new_columns = {"codec", "sample_rate", "markup_style", "verify_signatures", "credentials"}
    assert new_columns <= set(connectors)
    assert connectors["verify_signatures"]["nullable"] is False
    for name in new_columns - {"verify_signatures"}:
        assert connectors[name]["nullable"] is True, name
    assert (await _columns(database, "calls"))["account_id"]["nullable"] is True

    async with transaction(database) as repo:
        connector = await repo.get_connector("ak_old", "cn_0000000000000001")
        assert connector is not None
        assert (connector.name, connector.default_room_id, connector.provider) == (
            "kept",
            "room-1",
            "twilio",
        )
        assert connector.created_at.timestamp() == datetime(2026, 6, 1, 10, tzinfo=UTC).timestamp()
        assert connector.verify_signatures is False
        assert (connector.codec, connector.sample_rate, connector.markup_style) == (
            None,
            None,
            None,
        )
        assert connector.credentials is None
        call = await repo.get_call("ak_old", "call_00000000000000000001")
        assert call is not None and call.status == "ended" and call.account_id is None
        fresh, _ = await repo.create_connector(
            "ak_old",
            "plivo",
            codec="L16",
            sample_rate=16000,
            verify_signatures=True,
            credentials_token="v1.opaque",
        )
    async with transaction(database) as repo:
        got = await repo.get_connector("ak_old", fresh.id)
        assert got is not None and got.verify_signatures is True and got.sample_rate == 16000


async def test_downgrade_to_0001_and_back(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    await _migrate_to(db, "0001", down=True)
    assert await _version(db) == ["0001"]
    assert "credentials" not in await _columns(db, "connectors")
    assert "account_id" not in await _columns(db, "calls")
    await db.migrate()
    assert await _version(db) == [HEAD]
    async with transaction(db, clock) as repo:
        assert await repo.get_connector(apikey, connector_id) is not None


async def test_connector_media_options_and_credentials_token(
    db: Database, clock: StepClock
) -> None:
    apikey = await _new_key(db, clock)
    async with transaction(db, clock) as repo:
        plain, _ = await repo.create_connector(apikey, "twilio")
        connector, _ = await repo.create_connector(
            apikey,
            "telnyx",
            codec="PCMA",
            sample_rate=8000,
            markup_style="start",
            verify_signatures=True,
            credentials_token="v1.sealed-token",
            connector_id="cn_abcdefghij012345",
        )
    assert connector.id == "cn_abcdefghij012345"
    assert "sealed-token" not in repr(connector)
    async with transaction(db, clock) as repo:
        got = await repo.get_connector(apikey, plain.id)
        assert got is not None
        assert (got.codec, got.sample_rate, got.markup_style, got.credentials) == (
            None,
            None,
            None,
            None,
        )
        assert got.verify_signatures is False
        got = await repo.get_connector(apikey, connector.id)
        assert got is not None
        assert (got.codec, got.sample_rate, got.markup_style) == ("PCMA", 8000, "start")
        assert got.verify_signatures is True and got.credentials == "v1.sealed-token"

    clock.advance(5)
    async with transaction(db, clock) as repo:
        updated = await repo.update_connector(
            apikey,
            connector.id,
            codec="PCMU",
            sample_rate=None,
            markup_style=None,
            verify_signatures=False,
            credentials_token=None,
        )
        assert updated is not None
    async with transaction(db, clock) as repo:
        got = await repo.get_connector(apikey, connector.id)
        assert got is not None
        assert (got.codec, got.sample_rate, got.markup_style, got.credentials) == (
            "PCMU",
            None,
            None,
            None,
        )
        assert got.verify_signatures is False
        assert got.updated_at.timestamp() == START + 5
        with pytest.raises(TypeError, match="credentials"):
            await repo.update_connector(apikey, connector.id, credentials="x")
        with pytest.raises(TypeError, match="verify_signatures"):
            await repo.update_connector(apikey, connector.id, verify_signatures=None)


async def test_call_account_id(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    async with transaction(db, clock) as repo:
        call = await repo.insert_call(
            apikey=apikey,
            connector_id=connector_id,
            provider="twilio",
            provider_call_id="CA-acct",
            status="routed",
            account_id="AC0123",
        )
        with pytest.raises(ValueError, match="NUL"):
            await repo.insert_call(
                apikey=apikey,
                connector_id=connector_id,
                provider="twilio",
                provider_call_id="CA-x",
                status="routed",
                account_id="AC\x00",
            )
    async with transaction(db, clock) as repo:
        got = await repo.get_call(apikey, call.id)
        assert got is not None and got.account_id == "AC0123"


async def test_list_and_count_calls(db: Database, clock: StepClock) -> None:
    apikey, first_connector = await _connector(db, clock)
    async with transaction(db, clock) as repo:
        second_connector = (await repo.create_connector(apikey, "twilio"))[0].id
    other, other_connector = await _connector(db, clock)
    ids = []
    for n in range(5):
        clock.advance(1)
        async with transaction(db, clock) as repo:
            call = await repo.insert_call(
                apikey=apikey,
                connector_id=first_connector if n % 2 == 0 else second_connector,
                provider="twilio",
                provider_call_id=f"CA{n}",
                status="routed",
            )
            if n == 1:
                await repo.update_call(call.id, ["routed"], {"status": "ended"})
            ids.append(call.id)
    async with transaction(db, clock) as repo:
        await repo.insert_call(
            apikey=other,
            connector_id=other_connector,
            provider="twilio",
            provider_call_id="CAo",
            status="routed",
        )
    newest_first = list(reversed(ids))
    async with transaction(db, clock) as repo:
        assert [c.id for c in await repo.list_calls(apikey)] == newest_first
        assert await repo.count_calls(apikey) == 5
        page = await repo.list_calls(apikey, limit=2, offset=1)
        assert [c.id for c in page] == newest_first[1:3]
        by_connector = await repo.list_calls(apikey, connector_id=first_connector)
        assert [c.id for c in by_connector] == [ids[4], ids[2], ids[0]]
        assert await repo.count_calls(apikey, connector_id=first_connector) == 3
        ended = await repo.list_calls(apikey, status="ended")
        assert [c.id for c in ended] == [ids[1]]
        assert await repo.count_calls(apikey, connector_id=second_connector, status="routed") == 1
        assert await repo.list_calls(apikey, connector_id=other_connector) == []
        assert await repo.count_calls(other) == 1
        assert await repo.list_calls(apikey, connector_id="cn_\x00") == []
        assert await repo.count_calls(apikey, status="\x00") == 0
