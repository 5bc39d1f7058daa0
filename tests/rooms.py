"""A hand-driven room participant on the participant socket, for call tests that need to see
(or send) room events one by one."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callbridge.media.tones import ToneGenerator
from tests.servers import InProcessServer


def room_url(server: InProcessServer, room: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token()}"


class Participant:
    """A hand-driven room participant; a reader task keeps the socket drained, so the server
    never blocks on it. JSON events are queued for :meth:`next_event` and kept in ``seen`` for
    :meth:`wait_for`; audio frames are kept in ``audio``."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []
        self.audio: list[np.ndarray] = []
        self._arrived = asyncio.Event()

    async def read(self) -> None:
        async for message in self.socket:
            if isinstance(message, str):
                event = json.loads(message)
                self.seen.append(event)
                self.events.put_nowait(event)
                self._arrived.set()
            else:
                self.audio.append(np.frombuffer(message, dtype="<i2"))

    async def send(self, message: dict[str, Any] | bytes) -> None:
        await self.socket.send(message if isinstance(message, bytes) else json.dumps(message))

    async def next_event(self, name: str) -> dict[str, Any]:
        """The next event called ``name``; other events are skipped."""
        async with asyncio.timeout(10):
            while (event := await self.events.get()).get("event") != name:
                pass
        return event

    async def wait_for(self, **fields: Any) -> dict[str, Any]:
        """The first event seen so far (or arriving) that has all of ``fields``."""
        async with asyncio.timeout(10):
            while True:
                for event in self.seen:
                    if fields.items() <= event.items():
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    async def stream_tone(self, hz: float, seconds: float) -> None:
        """Send a tone at half of full scale, 20 ms frames at 16 kHz in real time."""
        tone = ToneGenerator(hz, 16000, 0.5)
        for _ in range(round(seconds / 0.02)):
            await self.socket.send(tone.next_frame(320).astype("<i2").tobytes())
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def participant_in(server: InProcessServer, room: str) -> AsyncIterator[Participant]:
    """A participant that has joined ``room``; it leaves (socket closed) on exit."""
    async with connect(room_url(server, room), open_timeout=5) as socket:
        joined = json.loads(await socket.recv())
        assert joined["event"] == "joined"
        participant = Participant(socket)
        reader = asyncio.create_task(participant.read())
        try:
            yield participant
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
