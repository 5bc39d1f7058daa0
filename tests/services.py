"""Local services for tests (PostgreSQL, Redis): skip when absent, unless required.

Set ``CALLBRIDGE_REQUIRE_SERVICES=1`` (as CI does) to turn a missing service into a failure.
``CALLBRIDGE_TEST_POSTGRES_URL`` overrides the PostgreSQL admin URL (an asyncpg DSN),
``CALLBRIDGE_TEST_REDIS_URL`` the Redis URL.
"""

from __future__ import annotations

import os
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_ADMIN_DATABASE = "test"
POSTGRES_USERS = ("postgres", "root")
REDIS_URL = "redis://127.0.0.1:6379/0"


def require_or_skip(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when ``CALLBRIDGE_REQUIRE_SERVICES=1``."""
    if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


async def postgres_admin_url() -> str:
    """An asyncpg DSN with the right to create databases, or skip/fail when unreachable.

    Tries the users ``postgres`` then ``root`` on 127.0.0.1:5432, database ``test``.
    """
    import asyncpg

    override = os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL")
    candidates = (
        [override]
        if override
        else [
            f"postgresql://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_ADMIN_DATABASE}"
            for user in POSTGRES_USERS
        ]
    )
    errors = []
    for dsn in candidates:
        try:
            connection = await asyncpg.connect(dsn, timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        await connection.close()
        return dsn
    target = urlsplit(override) if override else None  # never echo a password
    where = f"{target.hostname}:{target.port}" if target else f"{POSTGRES_HOST}:{POSTGRES_PORT}"
    require_or_skip(f"PostgreSQL not reachable at {where}: {'; '.join(errors)}")


async def redis_url() -> str:
    """The local Redis' URL, or skip/fail when it does not answer a PING."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    url = os.environ.get("CALLBRIDGE_TEST_REDIS_URL") or REDIS_URL
    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        target = urlsplit(url)
        require_or_skip(f"Redis not reachable at {target.hostname}:{target.port}: {exc}")
    finally:
        await client.aclose()
    return url
