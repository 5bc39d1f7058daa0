"""The API under test, served over real HTTP on loopback.

This is the one place that builds the app for API tests; swap :func:`build_app` for
``callbridge.app.create_app(settings)`` once that exists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from callbridge.api.auth import issue_token, security_components
from callbridge.api.connectors import ConnectorController, document_providers
from callbridge.api.errors import exception_handlers
from callbridge.store.db import Database
from callbridge.store.repository import transaction

PROVIDERS = ["twilio", "plivo", "telnyx"]
PUBLIC_API_URL = "https://cb.example.test"


@dataclass
class FakeClock:
    """Wall clock plus an adjustable offset, injected as ``app.state.clock``."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class ApiUnderTest:
    base_url: str
    client: httpx.AsyncClient
    db: Database
    clock: FakeClock
    apikey: str
    secret: str
    other_apikey: str
    other_secret: str
    headers: dict[str, str] = field(default_factory=dict)
    other_headers: dict[str, str] = field(default_factory=dict)

    def token(self, *, other: bool = False, **kwargs: object) -> str:
        if other:
            return issue_token(self.other_apikey, self.other_secret, **kwargs)  # type: ignore[arg-type]
        return issue_token(self.apikey, self.secret, **kwargs)  # type: ignore[arg-type]


def build_app(db: Database, clock: FakeClock) -> Litestar:
    return Litestar(
        route_handlers=[ConnectorController],
        exception_handlers=exception_handlers(),
        state=State(
            {
                "db": db,
                "public_api_url": PUBLIC_API_URL,
                "provider_names": list(PROVIDERS),
                "clock": clock,
            }
        ),
        on_startup=[document_providers],
        openapi_config=OpenAPIConfig(
            title="callbridge", version="0.1.0", components=security_components()
        ),
    )


@asynccontextmanager
async def serve_api(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cb.db'}")
    await db.migrate()
    async with transaction(db) as repo:
        mine = await repo.create_api_key("tests")
        other = await repo.create_api_key("someone else")
    clock = FakeClock()
    config = uvicorn.Config(
        build_app(db, clock),
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
            api = ApiUnderTest(
                base_url=base_url,
                client=client,
                db=db,
                clock=clock,
                apikey=mine.apikey,
                secret=mine.secret,
                other_apikey=other.apikey,
                other_secret=other.secret,
            )
            api.headers = {"Authorization": f"Bearer {api.token()}"}
            api.other_headers = {"Authorization": f"Bearer {api.token(other=True)}"}
            yield api
    finally:
        server.should_exit = True
        await task
        await db.dispose()
