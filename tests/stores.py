"""Databases for store tests: SQLite in a temp folder, or a fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from callbridge.store.db import Database
from tests.services import postgres_admin_url

START = 1_781_000_000.0  # 2026-06-09


class StepClock:
    """A clock that stands still until told to move."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def postgres_database_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped afterwards (skip/fail when
    PostgreSQL is unreachable)."""
    import asyncpg

    admin = await postgres_admin_url()
    name = f"callbridge_test_{secrets.token_hex(6)}"
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(admin).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def _postgres_database() -> AsyncIterator[Database]:
    async with postgres_database_url() as url:
        db = Database(url)
        try:
            yield db
        finally:
            await db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty, unmigrated database: SQLite in ``tmp_path``, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'folder' / 'cb.db'}")
        try:
            yield db
        finally:
            await db.dispose()
    else:
        async for db in _postgres_database():
            yield db


@pytest.fixture
async def db(database: Database) -> Database:
    await database.migrate()
    return database


@pytest.fixture
def clock() -> StepClock:
    return StepClock()
