"""The scaffolding of the simulator tests' fake provider-facing servers: a webhook endpoint
(plain asyncio HTTP) that records each request and answers with markup pointing at a media
socket (websockets) that logs every message the simulator sends, while a test-chosen
``behaviour`` plays messages back as a callbridge server would.

Each provider's test module subclasses :class:`FakeProviderFacingServer` with its markup, the
messages that open its stream and the arguments its behaviours take.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Self

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from callbridge.clients.audio import Summary


async def idle(ws: ServerConnection, *args: Any) -> None:
    await asyncio.sleep(3600)


def events_named(summary: Summary, name: str) -> list[dict[str, Any]]:
    return [event for event in summary.events if event.get("event") == name]


class FakeProviderFacingServer:
    """The provider-facing side of a callbridge server, faked.

    ``webhook_requests`` holds each webhook request as ``method``, ``target``, ``headers``
    (lower-case names) and raw ``body`` bytes; ``logs`` one list of JSON messages per media
    socket, with their arrival times in ``arrivals``; ``errors`` what behaviours raised.
    """

    provider = ""
    markup_type = "text/xml"  # the Content-Type of the webhook's answer
    ends_on_stop = True  # stop reading the socket at the simulator's ``stop`` message

    def __init__(self) -> None:
        self.webhook_status = 200
        self.refuse_socket_with: int | None = None
        self.close_on_accept = False
        self.behaviour: Callable[..., Awaitable[None]] = idle
        self.webhook_requests: list[dict[str, Any]] = []
        self.handshakes: list[Request] = []
        self.logs: list[list[dict[str, Any]]] = []
        self.arrivals: list[list[float]] = []
        self.errors: list[BaseException] = []
        self._streams: dict[ServerConnection, tuple[list[dict[str, Any]], list[float]]] = {}

    def markup(self) -> str:
        """The webhook's answer."""
        raise NotImplementedError

    async def open_stream(self, ws: ServerConnection) -> tuple[Any, ...]:
        """Receive (with :meth:`receive`) the messages that open the stream; return the
        arguments the behaviour takes after the socket."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._http = await asyncio.start_server(self._serve_http, "127.0.0.1", 0)
        self._ws = await serve(
            self._serve_socket, "127.0.0.1", 0, process_request=self._handshake
        ).__aenter__()
        http_port = self._http.sockets[0].getsockname()[1]
        ws_port = self._ws.sockets[0].getsockname()[1]
        self.webhook_url = f"http://127.0.0.1:{http_port}/v2/hooks/{self.provider}/whk_test"
        self.stream_url = f"ws://127.0.0.1:{ws_port}/ingest/{self.provider}/ref123"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._ws.close()
        await self._ws.wait_closed()
        self._http.close()
        await self._http.wait_closed()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.webhook_requests.append(
            {"method": method, "target": target, "headers": headers, "body": body}
        )
        text = self.markup().encode()
        status = HTTPStatus(self.webhook_status)
        writer.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {self.markup_type}\r\n"
            f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n".encode()
            + text
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(request)
        if self.refuse_socket_with is not None:
            return connection.respond(HTTPStatus(self.refuse_socket_with), "no\n")
        return None

    async def receive(self, ws: ServerConnection) -> dict[str, Any]:
        """The next message on the socket, logged."""
        return self._log(ws, await ws.recv())

    def _log(self, ws: ServerConnection, raw: str | bytes) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(raw)
        log, arrivals = self._streams[ws]
        log.append(message)
        arrivals.append(time.monotonic())
        return message

    async def _serve_socket(self, ws: ServerConnection) -> None:
        log: list[dict[str, Any]] = []
        arrivals: list[float] = []
        self.logs.append(log)
        self.arrivals.append(arrivals)
        self._streams[ws] = (log, arrivals)
        if self.close_on_accept:
            await ws.close(1011, "claim failed")
            return
        arguments = await self.open_stream(ws)
        behaviour = asyncio.create_task(self.behaviour(ws, *arguments))
        async for raw in ws:
            message = self._log(ws, raw)
            if self.ends_on_stop and message["event"] == "stop":
                break
        if not behaviour.done():
            behaviour.cancel()
        result = (await asyncio.gather(behaviour, return_exceptions=True))[0]
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            self.errors.append(result)
