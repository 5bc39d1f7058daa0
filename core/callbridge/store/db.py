"""The database handle: async engine, sessions and programmatic alembic migrations."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

logger = logging.getLogger(__name__)

MIGRATIONS_PATH = Path(__file__).parent / "migrations"
# Arbitrary constant: serialises concurrent ``migrate()`` calls of several replicas (PostgreSQL).
_MIGRATION_LOCK_ID = 0x63_62_72_64_67_65  # "cbrdge"
# Execution option: take SQLite's write lock at BEGIN (so two processes migrate one by one).
_SQLITE_IMMEDIATE = "callbridge_sqlite_immediate"
_WAL_ATTEMPTS = 50


def _is_memory_sqlite(url: URL) -> bool:
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    # The aiosqlite/pysqlite driver opens transactions lazily and cannot do SAVEPOINT correctly;
    # turn its own handling off and emit BEGIN ourselves (SQLAlchemy's documented recipe).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first: switching to WAL waits for a lock another process may hold.
            cursor.execute("PRAGMA busy_timeout=15000")
            cursor.execute("PRAGMA foreign_keys=ON")
            _enter_wal_mode(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _enter_wal_mode(cursor: Any) -> None:
    # Switching a new file to WAL needs its exclusive lock, and SQLite answers "database is
    # locked" at once, without the busy handler, while another connection does the same
    # (several processes or engines starting together): look first, retry briefly.
    for attempt in range(_WAL_ATTEMPTS):
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.02)


class Database:
    """An async SQLAlchemy engine plus sessions and migrations.

    Args:
        url: a SQLAlchemy async URL, e.g. ``sqlite+aiosqlite:///data/callbridge.db`` or
            ``postgresql+asyncpg://postgres@127.0.0.1:5432/callbridge``. For a SQLite file the
            parent folder is created if missing, and the file runs in WAL mode with foreign
            keys on.

    Nothing connects until the first query (or :meth:`migrate`).
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        # hide_parameters: bound values (secrets, key hashes) never reach logs or exception text
        engine_args: dict[str, Any] = {"hide_parameters": True}
        if self.dialect == "sqlite":
            if _is_memory_sqlite(parsed):
                engine_args["poolclass"] = StaticPool
            elif parsed.database and not parsed.database.startswith("file:"):
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            engine_args["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(parsed, **engine_args)
        if self.dialect == "sqlite":
            _install_sqlite_pragmas(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Writers of this process queue here, in order, on
        # the event loop, instead of holding a pooled connection in a thread that polls the
        # file lock (busy_timeout): under a loaded loop that polling is unfair and times out.
        self._writer_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._writer_locks = weakref.WeakKeyDictionary()
        self._writer_tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    def session(self) -> AsyncSession:
        """A new session; use it as ``async with db.session() as s, s.begin(): ...``."""
        return self._sessions()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[None]:
        """Hold this process's turn to write (SQLite); a no-op on PostgreSQL.

        Writers of one event loop go one at a time, first come first served; other processes
        still meet SQLite's own lock. A task that already holds its turn and asks again gets
        a ``RuntimeError`` instead of waiting for itself forever.
        """
        if self.dialect != "sqlite":
            yield
            return
        task = asyncio.current_task()
        if task is not None and task in self._writer_tasks:
            raise RuntimeError("nested write transaction: this task already holds the writer")
        loop = asyncio.get_running_loop()
        lock = self._writer_locks.get(loop)
        if lock is None:
            lock = self._writer_locks[loop] = asyncio.Lock()
        async with lock:
            if task is not None:
                self._writer_tasks.add(task)
            try:
                yield
            finally:
                if task is not None:
                    self._writer_tasks.discard(task)

    async def begin_writing(self, session: AsyncSession) -> None:
        """Start ``session``'s transaction as a writer (call it first thing in the transaction).

        SQLite then takes its write lock at ``BEGIN`` (waiting for other writers), instead of
        failing at once when a transaction that has read tries to write after another
        connection wrote. A no-op on PostgreSQL, whose row locks need nothing of the kind.
        """
        if self.dialect == "sqlite":
            await session.connection(execution_options={_SQLITE_IMMEDIATE: True})

    async def migrate(self) -> None:
        """Apply every pending migration (alembic ``upgrade head``); a no-op when up to date.

        The whole upgrade is one transaction holding a lock (a PostgreSQL advisory lock, or
        SQLite's write lock), so processes that start together migrate one after the other.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_PATH))
        async with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection = await connection.execution_options(**{_SQLITE_IMMEDIATE: True})
            async with connection.begin():
                if self.dialect == "postgresql":
                    await connection.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                    )
                await connection.run_sync(_upgrade, config)
        logger.info("database schema is up to date (%s)", self.dialect)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
