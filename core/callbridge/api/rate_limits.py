"""Per-client-IP request limits (``security.rate_limits``): against enumeration of the webhook
keys and refs in our secret URLs, and against guessing bearer tokens.

Three limits, each a moving window of one minute per client IP:

- voice webhooks (``/v2/hooks/…``): every request counts;
- media socket handshakes (``/ingest/…``): every handshake counts;
- REST requests answered 401, and sockets refused for their token (room participants and the
  event socket, through :meth:`RateLimits.refuse_token`): only those count, and only those are
  refused once over (a request with a valid token is never limited; a bad one past the limit
  gets 429 in place of its 401, or of the socket's refusal during the handshake).

Over a limit the answer is 429 with ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` and ``Retry-After``; a media socket over its limit is refused with that
answer during the handshake (or, where the server cannot send one, closed before accepting: a
403). The counts live in memory, or in Redis with ``cluster.redis_url`` so that every replica
sees the same (the ``limits`` library's moving window). A store that fails lets the request
through: losing the limit for a while is better than refusing calls.

The client IP is the connection's as the server sees it: behind ``server.trusted_proxies``
uvicorn has already taken it from ``X-Forwarded-For`` (:func:`callbridge.serving.proxy_options`).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Final

import structlog
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from callbridge.settings import RateLimitSettings

log = structlog.get_logger("callbridge.rate_limits")

HOOKS_PREFIX: Final = "/v2/hooks/"
REST_PREFIX: Final = "/v2/"
INGEST_PREFIX: Final = "/ingest"
_DENIAL: Final = "websocket.http.response"
"""The ASGI extension (and message type prefix) of an HTTP answer to a WebSocket handshake."""
UNAUTHORIZED_CLOSE: Final = 4401
"""How token-authenticated sockets refuse a missing or bad token."""
STORE_TIMEOUT_SECONDS: Final = 1.0
"""How long a request may wait for Redis before it goes through uncounted."""
STORE_WARNING_INTERVAL_SECONDS: Final = 10.0


class RateLimits:
    """The limits of one server; :meth:`middleware` applies them to its requests.

    Args:
        settings: ``security.rate_limits``.
        redis_url: ``cluster.redis_url`` (counts shared by the replicas), or ``None``.
    """

    def __init__(self, settings: RateLimitSettings, redis_url: str | None = None) -> None:
        if redis_url:
            storage = storage_from_string(
                f"async+{redis_url}",
                implementation="redispy",
                key_prefix="callbridge-limits",
                socket_timeout=STORE_TIMEOUT_SECONDS,
                socket_connect_timeout=STORE_TIMEOUT_SECONDS,
            )
        else:
            storage = storage_from_string("async+memory://")
        self._limiter = MovingWindowRateLimiter(storage)
        self.webhooks = _per_minute(settings.webhooks_per_minute)
        self.media_sockets = _per_minute(settings.media_sockets_per_minute)
        self.unauthorized = _per_minute(settings.unauthorized_per_minute)
        self._last_store_warning = float("-inf")

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Litestar middleware (``middleware=[limits.middleware]``)."""

        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            path: str = scope.get("path", "")
            kind = scope["type"]
            if kind == ScopeType.HTTP and path.startswith(HOOKS_PREFIX):
                if self.webhooks is not None:
                    client = self.client_ip(scope)
                    if not await self._hit(self.webhooks, "webhooks", client):
                        await self._refuse_http(send, self.webhooks, "webhooks", client)
                        return
            elif kind == ScopeType.HTTP and path.startswith(REST_PREFIX):
                if self.unauthorized is not None:
                    send = self._limit_unauthorized(scope, send, self.unauthorized)
            elif kind == ScopeType.WEBSOCKET and path.startswith(INGEST_PREFIX):
                if self.media_sockets is not None:
                    client = self.client_ip(scope)
                    if not await self._hit(self.media_sockets, "media", client):
                        await self._refuse_socket(scope, receive, send, client)
                        return
            await app(scope, receive, send)

        return limited

    @staticmethod
    def client_ip(scope: Scope) -> str:
        """Who sent the request (module docstring)."""
        return str((scope.get("client") or ("",))[0])

    def _limit_unauthorized(self, scope: Scope, send: Send, item: RateLimitItem) -> Send:
        """``send``, with a 401 counted and, past the limit, turned into a 429."""
        replaced = False

        async def send_counting(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the 401's body
            if message["type"] == "http.response.start" and message["status"] == 401:
                client = self.client_ip(scope)
                if not await self._hit(item, "unauthorized", client):
                    replaced = True
                    await self._refuse_http(send, item, "unauthorized", client)
                    return
            await send(message)

        return send_counting

    async def refuse_token(self, scope: Scope, send: Send) -> None:
        """Refuse a socket's handshake for its missing or bad token (close 4401, an HTTP 403),
        counted as unauthorized; past the limit, answered 429 instead.

        The token-authenticated sockets (room participants, the event socket) call this
        themselves: wrapping their ``send`` in the middleware would cost a call per frame."""
        item = self.unauthorized
        if item is not None:
            client = self.client_ip(scope)
            if not await self._hit(item, "unauthorized", client):
                await self._deny_handshake(scope, send, item, "unauthorized", client)
                return
        await send({"type": "websocket.close", "code": UNAUTHORIZED_CLOSE, "reason": ""})

    async def _hit(self, item: RateLimitItem, name: str, client: str) -> bool:
        try:
            return await self._limiter.hit(item, name, client)
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_store_warning >= STORE_WARNING_INTERVAL_SECONDS:
                self._last_store_warning = now
                log.warning(
                    "rate limit store failed; requests go through",
                    limit=name,
                    error=type(exc).__name__,
                )
            return True

    async def _headers(
        self, item: RateLimitItem, name: str, client: str
    ) -> list[tuple[bytes, bytes]]:
        try:
            stats = await self._limiter.get_window_stats(item, name, client)
            reset = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            reset = item.get_expiry()
        limit = str(item.amount).encode()
        return [
            (b"ratelimit-limit", limit),
            (b"ratelimit-remaining", b"0"),
            (b"ratelimit-reset", str(reset).encode()),
            (b"ratelimit-policy", limit + b";w=" + str(item.get_expiry()).encode()),
            (b"retry-after", str(reset).encode()),
        ]

    async def _refuse_http(self, send: Send, item: RateLimitItem, name: str, client: str) -> None:
        log.info("request over its rate limit", limit=name, client_ip=client)
        await _send_429(send, await self._headers(item, name, client), "http.response")

    async def _refuse_socket(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        assert self.media_sockets is not None
        message = await receive()
        if message["type"] == "websocket.connect":
            await self._deny_handshake(scope, send, self.media_sockets, "media", client)

    async def _deny_handshake(
        self, scope: Scope, send: Send, item: RateLimitItem, name: str, client: str
    ) -> None:
        """Answer a socket's handshake 429, or, where the server cannot, close it before
        accepting (1008, an HTTP 403)."""
        log.info("socket over its rate limit", limit=name, client_ip=client)
        if _DENIAL in (scope.get("extensions") or {}):
            await _send_429(send, await self._headers(item, name, client), _DENIAL)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": ""})


async def _send_429(send: Send, headers: list[tuple[bytes, bytes]], kind: str) -> None:
    body = json.dumps({"message": "Too many requests; see Retry-After."}).encode()
    start: dict[str, Any] = {
        "type": f"{kind}.start",
        "status": 429,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    end: dict[str, Any] = {"type": f"{kind}.body", "body": body, "more_body": False}
    await send(start)  # type: ignore[arg-type]
    await send(end)  # type: ignore[arg-type]


def _per_minute(amount: int) -> RateLimitItem | None:
    return RateLimitItemPerMinute(amount) if amount > 0 else None
