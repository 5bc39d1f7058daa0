"""A real local HTTP receiver for webhook tests: records every request and answers from a
script (a status, headers and body per request, or a default)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.servers import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


class Receiver:
    """Records requests; answers the next scripted :class:`Answer`, else ``default``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.answer_for: Callable[[Received], Answer | None] | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Received(scope["path"], headers, body, time.monotonic())
        self.received.append(request)
        self._arrived.set()
        answer = (self.answer_for(request) if self.answer_for else None) or (
            self.script.popleft() if self.script else self.default
        )
        if answer.delay:
            await asyncio.sleep(answer.delay)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def wait_for(self, count: int, within: float = 15.0) -> list[Received]:
        """Until ``count`` requests have arrived (at most ``within`` seconds)."""
        async with asyncio.timeout(within):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received

    def events(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.received if request.path != "/elsewhere"]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A :class:`Receiver` served by uvicorn on 127.0.0.1 for the block's duration."""
    receiver = Receiver()
    server = uvicorn.Server(
        uvicorn.Config(
            receiver, host="127.0.0.1", port=receiver.port, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers only the flag
                await asyncio.sleep(0.01)
        yield receiver
    finally:
        server.should_exit = True
        await task
