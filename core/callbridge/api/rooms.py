"""The room-participant socket: any client joins a room and exchanges PCM and call events."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import structlog
from litestar import asgi
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from callbridge.api.auth import authenticate_token
from callbridge.api.channel import AsgiSocketChannel
from callbridge.api.errors import ApiError
from callbridge.api.raw_socket import accept, not_a_websocket, query_param, server_send
from callbridge.media.framing import FrameAssembler
from callbridge.protocols import Participant, Pcm, PluginError, RoomLeg
from callbridge.room_events import parse_command
from callbridge.runtime import Runtime
from callbridge.store.ids import is_room_id

log = structlog.get_logger("callbridge.rooms")

PARTICIPANT_COMMANDS = frozenset({"clear", "mark", "hangup", "transfer", "dtmf"})
MAX_DISPLAY_NAME_CHARS = 100
_PCM = np.dtype("<i2")


@dataclass
class _Counters:
    malformed: int = 0


class _ParticipantSink:
    """What the participant hears, written straight to its socket (a ``LegSink``)."""

    def __init__(self, channel: AsgiSocketChannel) -> None:
        self.channel = channel
        self.live = False  # nothing may be sent before the handshake completes

    def hear(self, frame: Pcm) -> None:
        if self.live:
            self.channel.send_bytes(frame.astype("<i2", copy=False).tobytes(), droppable=True)

    def notify(self, event: Mapping[str, Any]) -> None:
        if self.live:
            self.channel.send_text(json.dumps(event))

    def leg_closed(self, reason: str | None) -> None:
        if self.live:
            self.live = False
            _closing.add(task := asyncio.ensure_future(self.channel.close()))
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()


@asgi("/v2/rooms/{room_id:str}/participants")
async def room_participant(scope: Scope, receive: Receive, send: Send) -> None:
    """Join a room as a participant (see the README's room protocol).

    A raw ASGI handler: Litestar routes it; audio goes between the server's own
    ``receive``/``send`` and the room with no per-message wrapper.
    """
    if scope["type"] != ScopeType.WEBSOCKET:
        await not_a_websocket(scope, receive, send)
        return
    runtime: Runtime = scope["app"].state.runtime
    room_id: str = scope["path_params"]["room_id"]
    try:
        principal = await authenticate_token(
            query_param(scope, "token") or "", runtime.db, runtime.clock
        )
    except ApiError as exc:
        log.info("room join refused", reason=exc.message)
        await scope["app"].state.rate_limits.refuse_token(scope, send)
        return
    if not principal.may_join(room_id):
        log.info("room join refused", reason="the token may not join this room")
        await send({"type": "websocket.close", "code": 4403, "reason": ""})
        return
    transport = runtime.room_transports.get(runtime.settings.participant_transport)
    if transport is None or not is_room_id(room_id):
        await send({"type": "websocket.close", "code": 4404, "reason": ""})
        return
    playout = _playout_mode(query_param(scope, "playout"))
    if playout is None:
        await send({"type": "websocket.close", "code": 4400, "reason": ""})
        return
    participant_id = "p_" + secrets.token_hex(6)
    name = "".join(c for c in query_param(scope, "name") or "" if c.isprintable())
    name = name[:MAX_DISPLAY_NAME_CHARS]
    channel = AsgiSocketChannel(receive, server_send(scope, send))
    sink = _ParticipantSink(channel)
    try:
        leg = await transport.join(
            principal.apikey,
            room_id,
            Participant(participant_id, "client", display_name=name, playout=playout),
            sink,
        )
    except PluginError as exc:
        log.warning("room join failed", reason=str(exc))
        await send({"type": "websocket.close", "code": 4409, "reason": ""})
        return
    counters = _Counters()
    with structlog.contextvars.bound_contextvars(room_id=room_id, participant_id=participant_id):
        try:
            if not await accept(receive, send):
                return
            log.info("participant joined")
            joined = {
                "event": "joined",
                "roomId": room_id,
                "participantId": participant_id,
                "sampleRate": leg.sample_rate,
                "frameMs": 20,
                "encoding": "pcm_s16le",
            }
            home_url = _home_url(runtime, leg, room_id)
            if home_url is not None:
                joined["homeUrl"] = home_url
            channel.send_text(json.dumps(joined))
            sink.live = True
            await _client_to_room(channel, leg, counters)
        finally:
            sink.live = False
            await leg.leave()
            await channel.close()
            log.info("participant left", malformed=counters.malformed, **leg.media_stats())


async def _client_to_room(channel: AsgiSocketChannel, leg: RoomLeg, counters: _Counters) -> None:
    frame_samples = leg.sample_rate // 50
    frame_bytes = frame_samples * 2
    assembler = FrameAssembler(frame_samples)
    while True:
        message = await channel.receive()
        if message is None:
            return
        if isinstance(message, bytes):
            if len(message) == frame_bytes and not assembler.pending:
                leg.send_audio(np.frombuffer(message, dtype=_PCM))
                continue
            usable = len(message) & ~1
            if usable:
                for frame in assembler.push(np.frombuffer(message[:usable], dtype=_PCM)):
                    leg.send_audio(frame)
            continue
        command = parse_command(message, PARTICIPANT_COMMANDS)
        if command is None:
            counters.malformed += 1
        else:
            leg.send_event(command)


def _home_url(runtime: Runtime, leg: RoomLeg, room_id: str) -> str | None:
    """``direct`` room mode, a member relayed to its room's home: the home replica's own
    participant URL (without the token), so the client may reconnect there and save the hop.
    It is served beside the home's own public media sockets (``server.public_ingest_url``,
    per replica in direct mode)."""
    home = getattr(leg, "home", None)
    if runtime.settings.cluster.room_mode != "direct" or home is None or not home.ingest_url:
        return None
    base = home.ingest_url.removesuffix("/ingest")
    return f"{base}/v2/rooms/{room_id}/participants"


def _playout_mode(value: str | None) -> Literal["adaptive", "queue"] | None:
    """The ``playout`` query parameter; ``None`` when it names no mode."""
    if value is None or value == "adaptive":
        return "adaptive"
    if value == "queue":
        return "queue"
    return None
