"""What the raw ASGI WebSocket handlers (media and participant sockets) share: the server's own
``send``, reading the handshake's headers and query, accepting, and answering plain HTTP on a
socket path."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qs

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

SERVER_SEND = "callbridge.server_send"
"""Scope key holding the ASGI server's own ``send`` for WebSocket connections."""


def keep_server_send(handler: ASGIApp) -> ASGIApp:
    """Wrap Litestar's ASGI handler so WebSocket scopes carry the server's own ``send``.

    Litestar routes every connection through an exception-handling layer that wraps ``send``
    in a coroutine of its own; the media sockets write 50 frames a second each and take the
    unwrapped one from the scope (:func:`server_send`) instead.
    """

    async def handler_keeping_server_send(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.WEBSOCKET:
            scope[SERVER_SEND] = send  # type: ignore[literal-required]
        await handler(scope, receive, send)

    return handler_keeping_server_send


def server_send(scope: Scope, send: Send) -> Send:
    """The server's own ``send`` for this socket when :func:`keep_server_send` saved it."""
    return scope.get(SERVER_SEND, send)  # type: ignore[return-value]


def socket_headers(scope: Scope) -> dict[str, str]:
    """The handshake's headers, names lower-cased (latin-1, as ASGI carries them)."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", ())
    }


def query_param(scope: Scope, name: str) -> str | None:
    """The first value of query parameter ``name``, or ``None``."""
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


async def accept(receive: Receive, send: Send) -> bool:
    """Complete the handshake; ``False`` when the peer left before it completed."""
    try:
        message = await receive()
        if message["type"] != "websocket.connect":
            return False
        await send(cast(Any, {"type": "websocket.accept"}))
    except Exception:
        return False
    return True


async def not_a_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a plain HTTP request to a socket path: 400 with the JSON error shape."""
    body = b'{"message": "this path takes WebSocket connections only"}'
    await send(
        cast(
            Any,
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            },
        )
    )
    await send(cast(Any, {"type": "http.response.body", "body": body}))
