"""The room-participant client against a tiny fake room server speaking the room protocol."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from callbridge.clients.room import RoomJoinOptions, join_room, room_socket_url
from callbridge.media.analysis import dominant_frequency
from callbridge.media.wav import read_wav

ROOM = "room 1"
TOKEN = "tok.en+/="
RATE = 16000
FRAME_BYTES = RATE // 50 * 2


class FakeRoomServer:
    """Sends ``joined`` and one event, then echoes every binary frame back."""

    def __init__(self) -> None:
        self.close_after: float | None = None
        self.paths: list[str] = []
        self.frames: list[bytes] = []

    def handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        url = urlsplit(request.path)
        if url.path != "/v2/rooms/room%201/participants":
            return connection.respond(HTTPStatus.NOT_FOUND, "no such room\n")
        if parse_qs(url.query).get("token") != [TOKEN]:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        joined = {
            "event": "joined",
            "roomId": ROOM,
            "participantId": "p-1",
            "sampleRate": RATE,
            "frameMs": 20,
            "encoding": "pcm_s16le",
        }
        await ws.send(json.dumps(joined))
        await ws.send(json.dumps({"event": "participant-joined", "participantId": "p-2"}))
        if self.close_after is not None:
            await asyncio.sleep(self.close_after)
            await ws.close()
            return
        async for message in ws:
            assert isinstance(message, bytes)
            self.frames.append(message)
            await ws.send(message)
            if len(self.frames) == 5:
                await ws.send(json.dumps({"event": "dtmf", "digit": "7", "callId": "call_1"}))


@pytest.fixture
async def room_server() -> AsyncIterator[tuple[FakeRoomServer, Server]]:
    fake = FakeRoomServer()
    async with serve(fake.handler, "127.0.0.1", 0, process_request=fake.handshake) as server:
        yield fake, server


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_socket_url_is_derived_and_quoted() -> None:
    assert (
        room_socket_url("https://cb.example.com/", "a/b c", "t+k")
        == "wss://cb.example.com/v2/rooms/a%2Fb%20c/participants?token=t%2Bk"
    )
    assert (
        room_socket_url("http://h:8000", "r", "t") == "ws://h:8000/v2/rooms/r/participants?token=t"
    )
    with pytest.raises(ValueError):
        room_socket_url("ftp://h", "r", "t")


async def test_join_sends_records_and_collects_events(
    room_server: tuple[FakeRoomServer, Server], tmp_path: Path
) -> None:
    fake, server = room_server
    recording = tmp_path / "room.wav"
    options = RoomJoinOptions(
        server_url=base_url(server),
        room_id=ROOM,
        token=TOKEN,
        tone_hz=440,
        seconds=0.6,
        record_path=str(recording),
    )
    summary = await join_room(options)

    assert summary.outcome == "completed"
    assert summary.frames_sent == len(fake.frames) == 30
    assert {len(frame) for frame in fake.frames} == {FRAME_BYTES}
    sent = np.frombuffer(b"".join(fake.frames), dtype="<i2")
    assert dominant_frequency(sent, RATE) == pytest.approx(440, abs=5)

    assert summary.frames_received == 30
    assert summary.dominant_hz == pytest.approx(440, abs=5)
    assert summary.level_dbfs == pytest.approx(-9.0, abs=1.0)
    assert [event["event"] for event in summary.events] == ["joined", "participant-joined", "dtmf"]
    assert summary.events[2] == {"event": "dtmf", "digit": "7", "callId": "call_1"}
    pcm, rate = read_wav(recording)
    assert rate == RATE
    assert len(pcm) == 30 * RATE // 50


async def test_server_closing_first_ends_gracefully(
    room_server: tuple[FakeRoomServer, Server],
) -> None:
    fake, server = room_server
    fake.close_after = 0.1
    options = RoomJoinOptions(server_url=base_url(server), room_id=ROOM, token=TOKEN, seconds=5)
    summary = await join_room(options)
    assert summary.outcome == "completed (server closed)"
    assert summary.frames_sent < 250


@pytest.mark.parametrize(("room", "token", "status"), [(ROOM, "wrong", 401), ("other", TOKEN, 404)])
async def test_refused_handshake_is_an_outcome(
    room_server: tuple[FakeRoomServer, Server], room: str, token: str, status: int
) -> None:
    _, server = room_server
    options = RoomJoinOptions(server_url=base_url(server), room_id=room, token=token, seconds=1)
    summary = await join_room(options)
    assert summary.outcome == f"refused: HTTP {status}"


async def test_unreachable_server_is_an_outcome() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = RoomJoinOptions(server_url=f"http://127.0.0.1:{port}", room_id="r", token="t")
    summary = await join_room(options)
    assert summary.outcome.startswith("failed: cannot connect")
