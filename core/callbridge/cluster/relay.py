"""Rooms across replicas, relay mode: a member that reaches a replica other than its room's
home is relayed there over one internal WebSocket.

:class:`HomedRooms` wraps a room transport. Joining a room first finds its home
(:mod:`callbridge.cluster.homes`): on this replica the member joins the wrapped transport here
(and the lease is renewed while the room has members here); elsewhere it gets a
:class:`RelayLeg`, which opens ``/internal/rooms/<transport>/<room>`` on the home replica
(:mod:`callbridge.api.relay`) with a short-lived signed token naming the member. On that socket
binary messages are 20 ms PCM16 frames at the room's rate, both ways; text messages are JSON:
``{"type": "joined", "sampleRate": n}`` (home → relay, first), ``{"type": "event", "event":
{…}}`` (both ways: room events to the member, the member's commands to the room), ``{"type":
"leave"}`` (relay → home), ``{"type": "stats", "stats": {…}}`` (home → relay, the member's media
figures, last) and ``{"type": "closed", "reason": …}`` (home → relay: the room ended the leg).
One hop per frame each way; a room's media never crosses more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, Final
from urllib.parse import quote

import numpy as np
import structlog
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from callbridge import safe_json
from callbridge.cluster import tokens
from callbridge.cluster.homes import Home, RoomHomes
from callbridge.protocols import LegSink, Participant, Pcm, PluginError, RoomLeg, RoomTransport

log = structlog.get_logger("callbridge.cluster.relay")

RELAY_PATH: Final = "/internal/rooms"
OUTBOX_FRAMES: Final = 50
"""Messages a relay leg queues for its socket (1 s of audio) before it drops audio."""
LEAVE_SECONDS: Final = 2.0
"""How long leaving waits for the home's last figures."""
_PCM = np.dtype("<i2")


class HomedRooms:
    """A room transport whose every room lives on one replica (see the module docstring).

    Args:
        inner: the transport rooms live in on their home.
        name: the transport's name (``rooms.enabled``), part of each room's lease.
        homes: the room leases.
        token_key: signs relay tokens (every replica derives the same one).
        lease_seconds: the lease's length; it is renewed every third of it.
        draining: whether this replica drains (it then homes no new room).
    """

    def __init__(
        self,
        inner: RoomTransport,
        name: str,
        homes: RoomHomes,
        token_key: Callable[[], bytes],
        lease_seconds: float,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.inner = inner
        self._draining = draining
        self.name = name
        self.sample_rate = inner.sample_rate
        self._homes = homes
        self.token_key = token_key
        """The relay tokens' key (every replica derives the same one)."""
        self._renew_every = lease_seconds / 3
        self._members: dict[str, int] = {}
        self._renewers: dict[str, asyncio.Task[None]] = {}

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)  # the transport's own figures (metrics)

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        for task in self._renewers.values():
            task.cancel()
        await asyncio.gather(*self._renewers.values(), return_exceptions=True)
        for key in list(self._renewers):
            with contextlib.suppress(RedisError):
                await self._homes.release(key)
        self._renewers.clear()
        await self.inner.aclose()

    async def home_of(self, tenant: str, room_id: str) -> Home:
        """The room's home (this replica takes the lease when nobody holds it, unless it
        drains).

        Raises:
            PluginError: Redis is unavailable, or the room has no home and this replica drains.
        """
        key = RoomHomes.key(tenant, self.name, room_id)
        try:
            if not self._draining():
                return await self._homes.home_of(key)
            home = await self._homes.find(key)
        except RedisError as exc:
            raise PluginError("the room's home is unknown: Redis is unavailable") from exc
        if home is None:
            raise PluginError("this replica is draining: it homes no new room")
        return home

    def is_me(self, home: Home) -> bool:
        return home.instance_id == self._homes.me.instance_id

    async def join(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> RoomLeg:
        home = await self.home_of(tenant, room_id)
        if self.is_me(home):
            return await self.join_here(tenant, room_id, participant, sink)
        claims = {
            "tenant": tenant,
            "room": room_id,
            "transport": self.name,
            "participant": {**asdict(participant), "metadata": dict(participant.metadata)},
        }
        token = tokens.issue(self.token_key(), claims)
        base = home.internal_url.replace("http", "ws", 1)
        url = f"{base}{RELAY_PATH}/{quote(self.name)}/{quote(room_id)}?token={token}"
        log.info("room member relayed to its home", room_id=room_id, home=home.instance_id)
        return await RelayLeg.open(url, participant.participant_id, sink, home)

    async def join_here(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> RoomLeg:
        """Join the room on this replica, its home, holding the lease while members stay."""
        key = RoomHomes.key(tenant, self.name, room_id)
        leg = await self.inner.join(tenant, room_id, participant, sink)
        self._members[key] = self._members.get(key, 0) + 1
        if key not in self._renewers:
            self._renewers[key] = asyncio.create_task(self._renew(key), name="room-lease")
        return HomeLeg(leg, lambda: self._let_go(key))

    async def _let_go(self, key: str) -> None:
        left = self._members.get(key, 1) - 1
        if left > 0:
            self._members[key] = left
            return
        self._members.pop(key, None)
        task = self._renewers.pop(key, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._homes.release(key)
        except RedisError:
            log.warning("room lease not released: Redis is unavailable (it lapses)")

    async def _renew(self, key: str) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                if not await self._homes.renew(key):
                    log.warning("room lease held by another replica: members here stay")
            except RedisError:
                log.warning("room lease not renewed: Redis is unavailable")


class HomeLeg:
    """A member's leg in a room homed here: the transport's own leg, whose leaving also
    lets go of the room's lease when it was the last member here."""

    def __init__(self, leg: RoomLeg, on_leave: Callable[[], Awaitable[None]]) -> None:
        self._leg = leg
        self._on_leave = on_leave
        self.participant_id = leg.participant_id
        self.sample_rate = leg.sample_rate
        # bound methods: the per-frame path goes straight to the transport's leg
        self.send_audio = leg.send_audio
        self.send_event = leg.send_event
        self.media_stats = leg.media_stats

    @property
    def closed_reason(self) -> str | None:
        return self._leg.closed_reason

    @closed_reason.setter
    def closed_reason(self, reason: str | None) -> None:
        self._leg.closed_reason = reason

    async def leave(self) -> None:
        on_leave, self._on_leave = self._on_leave, None  # type: ignore[assignment]
        await self._leg.leave()
        if on_leave is not None:
            await on_leave()


class RelayLeg:
    """A member's leg in a room homed on another replica, over the relay socket."""

    def __init__(
        self,
        socket: ClientConnection,
        participant_id: str,
        sample_rate: int,
        sink: LegSink,
        home: Home,
    ) -> None:
        self.home = home
        """The replica the member is relayed to."""
        self.participant_id = participant_id
        self.sample_rate = sample_rate
        self.closed_reason: str | None = None
        self.dropped = 0
        self._socket = socket
        self._sink = sink
        self._stats: dict[str, int] = {}
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue(OUTBOX_FRAMES)
        self._leaving = False
        self._tasks = [
            asyncio.create_task(self._send_forever(), name="relay-send"),
            asyncio.create_task(self._receive_forever(), name="relay-receive"),
        ]

    @classmethod
    async def open(cls, url: str, participant_id: str, sink: LegSink, home: Home) -> RelayLeg:
        """Connect to the home replica and wait for ``joined``.

        Raises:
            PluginError: the home cannot be reached or refused the member.
        """
        try:
            socket = await connect(url, open_timeout=5, compression=None, max_size=1 << 20)
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise PluginError(
                f"the room's home replica is unreachable ({type(exc).__name__})"
            ) from exc
        try:
            async with asyncio.timeout(5):
                first = safe_json.decode(await socket.recv(), safe_json.SOCKET_LIMITS)
        except (TimeoutError, WebSocketException, safe_json.JsonInputError) as exc:
            await socket.close()
            raise PluginError("the room's home replica refused the member") from exc
        if not isinstance(first, dict) or first.get("type") != "joined":
            await socket.close()
            raise PluginError("the room's home replica refused the member")
        return cls(socket, participant_id, int(first.get("sampleRate", 16000)), sink, home)

    def send_audio(self, frame: Pcm) -> None:
        self._post(frame.astype(_PCM, copy=False).tobytes())

    def send_event(self, event: Mapping[str, Any]) -> None:
        self._post(json.dumps({"type": "event", "event": dict(event)}))

    def media_stats(self) -> Mapping[str, int]:
        return {**self._stats, "relay_dropped": self.dropped}

    async def leave(self) -> None:
        if self._leaving:
            return
        self._leaving = True
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(json.dumps({"type": "leave"}))
        receiver = self._tasks[1]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_SECONDS):
                await asyncio.shield(receiver)  # until the home sent its figures and closed
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._socket.close()

    def _post(self, message: str | bytes) -> None:
        if self._leaving:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _send_forever(self) -> None:
        with contextlib.suppress(WebSocketException):
            while True:
                await self._socket.send(await self._outbox.get())

    async def _receive_forever(self) -> None:
        sink = self._sink
        reason = "the room's home replica went away"
        try:
            async for message in self._socket:
                if isinstance(message, bytes):
                    sink.hear(np.frombuffer(message[: len(message) & ~1], dtype=_PCM))
                    continue
                data = safe_json.decode(message, safe_json.SOCKET_LIMITS)
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "event" and isinstance(data.get("event"), dict):
                    sink.notify(data["event"])
                elif kind == "stats" and isinstance(data.get("stats"), dict):
                    self._stats = {
                        str(k): v for k, v in data["stats"].items() if isinstance(v, int)
                    }
                elif kind == "closed":
                    reason = str(data.get("reason") or "the room closed")[:200]
        except (WebSocketException, safe_json.JsonInputError):
            pass
        if not self._leaving:
            self.closed_reason = reason
            sink.leg_closed(reason)
