"""The room-participant socket: any client joins a room and exchanges PCM and call events."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from litestar import WebSocket, websocket

from callbridge import safe_json
from callbridge.api.auth import authenticate_token
from callbridge.api.channel import AsgiSocketChannel
from callbridge.api.errors import ApiError
from callbridge.media.framing import FrameAssembler
from callbridge.protocols import Participant, PluginError, RoomLeg
from callbridge.runtime import Runtime
from callbridge.store.ids import is_room_id

log = structlog.get_logger("callbridge.rooms")

CONTROL_EVENTS = frozenset({"clear", "mark", "hangup"})
MAX_CONTROL_BYTES = 4096
"""Text messages longer than this are counted as malformed and dropped."""
MAX_NAME_CHARS = 128
"""Longest mark name, and longest call id a command may address."""
MAX_DISPLAY_NAME_CHARS = 100


@dataclass
class _Counters:
    malformed: int = 0


@websocket("/v2/rooms/{room_id:str}/participants")
async def room_participant(socket: WebSocket, room_id: str) -> None:  # type: ignore[type-arg]
    """Join a room as a participant (see the README's room protocol)."""
    runtime: Runtime = socket.app.state.runtime
    token = socket.query_params.get("token") or ""
    try:
        principal = await authenticate_token(token, runtime.db, runtime.clock)
    except ApiError as exc:
        log.info("room join refused", reason=exc.message)
        await socket.close(code=4401)
        return
    transport = runtime.room_transports.get("local")
    if transport is None or not is_room_id(room_id):
        await socket.close(code=4404)
        return
    participant_id = "p_" + secrets.token_hex(6)
    name = "".join(c for c in socket.query_params.get("name") or "" if c.isprintable())
    name = name[:MAX_DISPLAY_NAME_CHARS]
    try:
        leg = await transport.join(
            principal.apikey, room_id, Participant(participant_id, "client", display_name=name)
        )
    except PluginError as exc:
        log.warning("room join failed", reason=str(exc))
        await socket.close(code=4409)
        return
    await socket.accept()
    channel = AsgiSocketChannel(socket)
    counters = _Counters()
    with structlog.contextvars.bound_contextvars(room_id=room_id, participant_id=participant_id):
        log.info("participant joined")
        try:
            await channel.send_text(
                json.dumps(
                    {
                        "event": "joined",
                        "roomId": room_id,
                        "participantId": participant_id,
                        "sampleRate": leg.sample_rate,
                        "frameMs": 20,
                        "encoding": "pcm_s16le",
                    }
                )
            )
            await _pump(channel, leg, counters)
        finally:
            await leg.leave()
            await channel.close()
            log.info("participant left", malformed=counters.malformed)


async def _pump(channel: AsgiSocketChannel, leg: RoomLeg, counters: _Counters) -> None:
    tasks = {
        asyncio.create_task(_client_to_room(channel, leg, counters)),
        asyncio.create_task(_room_audio_to_client(channel, leg)),
        asyncio.create_task(_room_events_to_client(channel, leg)),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _client_to_room(channel: AsgiSocketChannel, leg: RoomLeg, counters: _Counters) -> None:
    assembler = FrameAssembler(leg.sample_rate // 50)
    while True:
        message = await channel.receive()
        if message is None:
            return
        if isinstance(message, bytes):
            usable = len(message) & ~1
            if usable:
                for frame in assembler.push(np.frombuffer(message[:usable], dtype="<i2")):
                    leg.send_audio(frame)
            continue
        command = _command(message)
        if command is None:
            counters.malformed += 1
        else:
            await leg.send_event(command)


def _command(message: str) -> dict[str, Any] | None:
    """The room command a text message carries, reduced to its known fields; ``None`` when it
    is not one (too long, not JSON, not an object, an unknown event, a bad field)."""
    try:
        event = safe_json.decode(
            message, safe_json.JsonLimits(max_bytes=MAX_CONTROL_BYTES, max_depth=4)
        )
    except safe_json.JsonInputError:
        return None
    if not isinstance(event, dict) or event.get("event") not in CONTROL_EVENTS:
        return None
    command: dict[str, Any] = {"event": event["event"]}
    call_id = event.get("callId")
    if call_id is not None:
        if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_NAME_CHARS:
            return None
        command["callId"] = call_id
    if command["event"] == "mark":
        name = event.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            return None
        command["name"] = name
    return command


async def _room_audio_to_client(channel: AsgiSocketChannel, leg: RoomLeg) -> None:
    while True:
        frame = await leg.receive_audio()
        if frame is None or channel.closed:
            return
        await channel.send_bytes(frame.astype("<i2", copy=False).tobytes())


async def _room_events_to_client(channel: AsgiSocketChannel, leg: RoomLeg) -> None:
    while True:
        event = await leg.receive_event()
        if event is None or channel.closed:
            return
        await channel.send_text(json.dumps(event))
