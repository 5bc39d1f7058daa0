"""The real app (``create_app``) under test, served over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar import Litestar

from callbridge.api.auth import issue_token
from callbridge.app import create_app
from callbridge.settings import load_settings
from callbridge.store.db import Database
from callbridge.store.repository import transaction

PROVIDERS = ["twilio", "plivo", "telnyx", "custom"]
PUBLIC_API_URL = "https://cb.example.test"


@dataclass
class FakeClock:
    """Wall clock plus an adjustable offset, injected as ``app.state.clock``."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class ApiServer:
    """One running app: its URL, a client for it, its database and its clock."""

    base_url: str
    client: httpx.AsyncClient
    db: Database
    clock: FakeClock
    app: Any = None


@dataclass
class ApiUnderTest(ApiServer):
    """The running app seen by one test: two fresh API keys of its own (every resource is
    scoped to an API key, so tests sharing a server cannot see each other's connectors)."""

    apikey: str = ""
    secret: str = ""
    other_apikey: str = ""
    other_secret: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    other_headers: dict[str, str] = field(default_factory=dict)

    def token(self, *, other: bool = False, **kwargs: Any) -> str:
        if other:
            return issue_token(self.other_apikey, self.other_secret, **kwargs)
        return issue_token(self.apikey, self.secret, **kwargs)


def build_app(
    data_dir: Path, clock: FakeClock, overrides: dict[str, Any] | None = None
) -> Litestar:
    base: dict[str, Any] = {
        "data_dir": str(data_dir / "data"),
        "server": {"public_api_url": PUBLIC_API_URL},
        "auth": {"create_dev_key": False},
    }
    settings = load_settings(overrides={**base, **(overrides or {})}, environ={})
    return create_app(settings, clock=clock, webhook_resolver=NoDns())


class NoDns:
    """Resolves nothing (tests never reach the internet): only IP-literal webhook URLs pass."""

    async def resolve(self, host: str, port: int) -> list[str]:
        raise OSError(f"no DNS in tests: {host}")


@asynccontextmanager
async def serve_api(
    data_dir: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[ApiServer]:
    """Migrate a SQLite database in ``data_dir``, then serve the app with uvicorn on loopback
    (settings: the tests' defaults, top-level keys replaced by ``overrides``)."""
    clock = FakeClock()
    app = build_app(data_dir, clock, overrides)
    db: Database = app.state.db
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before starting")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield ApiServer(base_url=base_url, client=client, db=db, clock=clock, app=app)
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serving_app(
    data_dir: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    """:func:`serve_api`, also yielding the app object (for its runtime and credential box)."""
    async with serve_api(data_dir, overrides) as server:
        yield server, server.app


async def new_tenant(server: ApiServer) -> ApiUnderTest:
    """Two fresh API keys on ``server`` (the second one plays "someone else"); clock reset."""
    server.clock.offset = 0.0
    async with transaction(server.db) as repo:
        mine = await repo.create_api_key("tests")
        other = await repo.create_api_key("someone else")
    api = ApiUnderTest(
        base_url=server.base_url,
        client=server.client,
        db=server.db,
        clock=server.clock,
        apikey=mine.apikey,
        secret=mine.secret,
        other_apikey=other.apikey,
        other_secret=other.secret,
    )
    api.headers = {"Authorization": f"Bearer {api.token()}"}
    api.other_headers = {"Authorization": f"Bearer {api.token(other=True)}"}
    return api
