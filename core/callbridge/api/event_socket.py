"""The live event socket, ``WS /v2/ws``: subscribe to topics, receive lifecycle events as they
are written (see :mod:`callbridge.feed` and the README's event socket section).

Authentication: ``?token=<jwt>`` or ``Authorization: Bearer <jwt>``; a refused token closes
the handshake (4401, which the server answers with HTTP 403) before the socket is accepted.

Keepalive: the raw ASGI interface has no ping frame, so every ``events.ping_interval_seconds``
the socket is sent ``{"type": "ping"}`` (clients need not answer; a client's own
``{"type": "ping"}`` is answered with ``{"type": "pong"}``). uvicorn also sends protocol-level
pings (``ws_ping_interval``, 20 s) and drops peers that do not answer them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from litestar import asgi
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from callbridge.api.auth import authenticate_token, token_from_header
from callbridge.api.errors import ApiError
from callbridge.api.raw_socket import (
    accept,
    not_a_websocket,
    query_param,
    server_send,
    socket_headers,
)
from callbridge.feed.poller import EventFeed
from callbridge.feed.session import FeedSession

log = structlog.get_logger("callbridge.events")


@asgi("/v2/ws")
async def event_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """Subscribe to lifecycle events (a raw ASGI handler: no framework wrapper per message)."""
    if scope["type"] != ScopeType.WEBSOCKET:
        await not_a_websocket(scope, receive, send)
        return
    feed: EventFeed = scope["app"].state.event_feed
    try:
        token = query_param(scope, "token") or token_from_header(
            socket_headers(scope).get("authorization")
        )
        principal = await authenticate_token(token, feed.db, feed.clock)
    except ApiError as exc:
        log.info("event socket refused", reason=exc.message)
        await scope["app"].state.rate_limits.refuse_token(scope, send)
        return
    if not principal.may_moderate:
        log.info("event socket refused", reason="the token has no allow_mod (a room token?)")
        await send({"type": "websocket.close", "code": 4403, "reason": ""})
        return
    if not await accept(receive, send):
        return
    session = FeedSession(principal.apikey, feed)
    feed.register(session)
    pump = asyncio.create_task(session.outbox.pump(server_send(scope, send)))
    reader = asyncio.create_task(_read(receive, session))
    keepalive = asyncio.create_task(_keepalive(session, feed.settings.ping_interval_seconds))
    with structlog.contextvars.bound_contextvars(apikey=principal.apikey):
        log.info("event socket opened")
        try:
            await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.error("event socket failed", exc_info=reader.exception())
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": 1011, "reason": ""})
        finally:
            feed.unregister(session)
            for task in (keepalive, reader, pump):
                task.cancel()
            await asyncio.gather(keepalive, reader, pump, return_exceptions=True)
            if session.outbox.first_missing is not None:
                scope["app"].state.runtime.metrics.socket_drops.add(1)
            log.info(
                "event socket closed",
                topics=len(session.topics),
                malformed=session.malformed,
                fell_behind=session.outbox.first_missing is not None,
            )


async def _read(receive: Receive, session: FeedSession) -> None:
    while True:
        message: Any = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        await session.handle(text if text is not None else message.get("bytes") or b"")


async def _keepalive(session: FeedSession, interval: float) -> None:
    while not session.outbox.closed:
        await asyncio.sleep(interval)
        session.send_ping()
