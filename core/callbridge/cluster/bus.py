"""Commands between replicas over Redis pub/sub.

Each replica listens on its own channel, ``callbridge:cluster:instance:<instance id>``; a
command goes to the replica that holds what it is about (the call's ``owner_id``). A command is
one JSON object ``{"command": …, "from": <sender>, …}``; ``send`` tells whether a replica was
listening (Redis' receiver count), so the sender can fall back when the holder is gone. Delivery
is at most once, like the HTTP request that caused it: the caller retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from callbridge import safe_json

log = structlog.get_logger("callbridge.cluster")

CHANNEL_PREFIX: Final = "callbridge:cluster:instance:"
RECONNECT_SECONDS: Final = 1.0
"""How long the listener waits before subscribing again after Redis went away."""

Handler = Callable[[Mapping[str, Any]], Awaitable[None]]


def channel_of(instance_id: str) -> str:
    return CHANNEL_PREFIX + instance_id


class ClusterBus:
    """This replica's end of the command channel.

    Args:
        url: the Redis URL (``cluster.redis_url``).
        instance_id: this replica; it listens on :func:`channel_of` it.
        handlers: a coroutine per command name; a command without a handler is logged and
            dropped.
    """

    def __init__(
        self, url: str, instance_id: str, handlers: Mapping[str, Handler], timeout: float = 2.0
    ) -> None:
        self.instance_id = instance_id
        self._handlers = dict(handlers)
        self._redis = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=None)
        self._publisher = Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe (waits for the first subscription, at most a few seconds)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="cluster-bus")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._subscribed.wait()

    async def send(self, instance_id: str, command: str, **data: Any) -> bool:
        """Publish ``command`` to ``instance_id``; whether a replica was listening there."""
        message = json.dumps({**data, "command": command, "from": self.instance_id})
        try:
            receivers = await self._publisher.publish(channel_of(instance_id), message)
        except RedisError as exc:
            log.warning("cluster command not sent", command=command, error=type(exc).__name__)
            return False
        return bool(receivers)

    async def ping(self) -> bool:
        """Whether Redis answers and this replica is subscribed (readiness)."""
        try:
            return bool(await self._publisher.ping()) and self._subscribed.is_set()
        except RedisError:
            return False

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._redis.aclose()
        await self._publisher.aclose()

    async def _listen_forever(self) -> None:
        while True:
            pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel_of(self.instance_id))
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("cluster channel lost; subscribing again", error=type(exc).__name__)
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _dispatch(self, raw: bytes | str) -> None:
        try:
            command = safe_json.decode(raw, safe_json.SOCKET_LIMITS)
        except safe_json.JsonInputError:
            log.warning("cluster command unreadable: dropped")
            return
        name = command.get("command") if isinstance(command, dict) else None
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            log.warning("cluster command unknown: dropped", command=str(name)[:64])
            return
        try:
            await handler(command)
        except Exception:
            log.exception("cluster command failed", command=name)
