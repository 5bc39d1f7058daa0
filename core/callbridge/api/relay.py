"""The home side of a relayed room member (``/internal/rooms/<transport>/<room>``), for the
replica that accepted the member's socket (:mod:`callbridge.cluster.relay`). Reached only by
other replicas: a short-lived token signed with the replicas' shared key names the member."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import structlog
from litestar import asgi
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from callbridge import safe_json
from callbridge.api.channel import AsgiSocketChannel
from callbridge.api.raw_socket import accept, not_a_websocket, query_param, server_send
from callbridge.cluster import tokens
from callbridge.cluster.relay import HomedRooms
from callbridge.protocols import Participant, Pcm, PluginError
from callbridge.runtime import Runtime

log = structlog.get_logger("callbridge.cluster.relay")

_PCM = np.dtype("<i2")


class _RelayedSink:
    """What the relayed member hears, written to the relay socket."""

    def __init__(self, channel: AsgiSocketChannel) -> None:
        self.channel = channel
        self.live = False

    def hear(self, frame: Pcm) -> None:
        if self.live:
            self.channel.send_bytes(frame.astype(_PCM, copy=False).tobytes(), droppable=True)

    def notify(self, event: Mapping[str, Any]) -> None:
        if self.live:
            self.channel.send_text(json.dumps({"type": "event", "event": dict(event)}))

    def leg_closed(self, reason: str | None) -> None:
        if self.live:
            self.channel.send_text(json.dumps({"type": "closed", "reason": reason}))


def _participant(data: Any) -> Participant | None:
    if not isinstance(data, dict):
        return None
    try:
        return Participant(
            participant_id=str(data["participant_id"]),
            kind=str(data["kind"]),
            display_name=str(data.get("display_name", "")),
            metadata={str(k): str(v) for k, v in dict(data.get("metadata") or {}).items()},
            playout="queue" if data.get("playout") == "queue" else "adaptive",
        )
    except (KeyError, TypeError, ValueError):
        return None


@asgi("/internal/rooms/{transport:str}/{room_id:str}", include_in_schema=False)
async def relayed_member(scope: Scope, receive: Receive, send: Send) -> None:
    """A member of a room homed here, relayed by another replica."""
    if scope["type"] != ScopeType.WEBSOCKET:
        await not_a_websocket(scope, receive, send)
        return
    runtime: Runtime = scope["app"].state.runtime
    name, room_id = scope["path_params"]["transport"], scope["path_params"]["room_id"]
    transport = runtime.room_transports.get(name)
    claims = (
        tokens.verify(transport.token_key(), query_param(scope, "token") or "")
        if isinstance(transport, HomedRooms)
        else None
    )
    participant = None if claims is None else _participant(claims.get("participant"))
    if (
        not isinstance(transport, HomedRooms)
        or claims is None
        or participant is None
        or claims.get("room") != room_id
        or claims.get("transport") != name
        or not isinstance(claims.get("tenant"), str)
    ):
        log.warning("relayed member refused: bad token", room_id=room_id[:64])
        await send({"type": "websocket.close", "code": 4401, "reason": ""})
        return
    tenant: str = claims["tenant"]
    try:
        home = await transport.home_of(tenant, room_id)
        if not transport.is_me(home):
            raise PluginError("the room is homed on another replica now")
        channel = AsgiSocketChannel(receive, server_send(scope, send))
        sink = _RelayedSink(channel)
        leg = await transport.join_here(tenant, room_id, participant, sink)
    except PluginError as exc:
        log.warning("relayed member refused", reason=str(exc), room_id=room_id)
        await send({"type": "websocket.close", "code": 4409, "reason": ""})
        return
    with structlog.contextvars.bound_contextvars(
        room_id=room_id, participant_id=participant.participant_id
    ):
        try:
            if not await accept(receive, send):
                return
            channel.send_text(json.dumps({"type": "joined", "sampleRate": leg.sample_rate}))
            sink.live = True
            log.info("relayed member joined")
            await _member_to_room(channel, leg)
        finally:
            sink.live = False
            await leg.leave()
            channel.send_text(json.dumps({"type": "stats", "stats": dict(leg.media_stats())}))
            await channel.close()
            log.info("relayed member left")


async def _member_to_room(channel: AsgiSocketChannel, leg: Any) -> None:
    frame_bytes = leg.sample_rate // 50 * 2
    while (message := await channel.receive()) is not None:
        if isinstance(message, bytes):
            if len(message) == frame_bytes:
                leg.send_audio(np.frombuffer(message, dtype=_PCM))
            continue
        try:
            data = safe_json.decode(message, safe_json.SOCKET_LIMITS)
        except safe_json.JsonInputError:
            continue
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "leave":
            return
        if kind == "event" and isinstance(data.get("event"), dict):
            leg.send_event(data["event"])
