"""Hand-driven live calls for the integrity tests: a provider-side caller that streams a tone in
real time, records what it hears and can inject any message mid-call, and a room participant
that streams another tone and records what it hears. Both time-stamp what they hear, so a test
can check that audio still flows both ways *after* something hostile happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callbridge.media.codecs import get_codec
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import CodecSpec
from tests import twilio_wire as tw
from tests.calls import assert_tone

CALLER_HZ = 440.0
ROOM_HZ = 1000.0
ROOM_RATE = 16000
_PCMU = get_codec(CodecSpec("PCMU", 8000))


class Heard:
    """Time-stamped frames of what one side heard."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frames: list[tuple[float, np.ndarray]] = []

    def add(self, pcm: np.ndarray) -> None:
        self.frames.append((time.monotonic(), pcm))

    def since(self, moment: float) -> np.ndarray:
        chunks = [pcm for at, pcm in self.frames if at >= moment]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def assert_tone_since(self, moment: float, frequency: float, min_seconds: float = 1.0) -> None:
        assert_tone(self.since(moment), self.rate, frequency, min_seconds)


class LiveCaller:
    """A provider media socket played by hand (Twilio's JSON protocol, or the custom
    protocol's binary PCM): a 440 Hz tone every 20 ms, what it hears recorded at 8 kHz."""

    def __init__(
        self,
        socket: ClientConnection,
        encode: Callable[[np.ndarray], str | bytes],
        decode: Callable[[str | bytes], np.ndarray | None],
    ) -> None:
        self.socket = socket
        self.heard = Heard(8000)
        self.texts: list[dict[str, Any]] = []
        # For each text message: how many audio frames had arrived before it.
        self.text_positions: list[int] = []
        self.stream_sid = ""
        self.closed = asyncio.Event()
        self._encode = encode
        self._decode = decode
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_tone()),
            asyncio.create_task(self._receive()),
        ]

    async def inject(self, message: str | bytes) -> None:
        """Send ``message`` as it is, between two audio frames."""
        await self.socket.send(message)

    async def _send_tone(self) -> None:
        tone = ToneGenerator(CALLER_HZ, 8000, 0.5)
        deadline = time.monotonic()
        with contextlib.suppress(Exception):
            while True:
                await self.socket.send(self._encode(tone.next_frame(160)))
                deadline += 0.02
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _receive(self) -> None:
        try:
            async for message in self.socket:
                pcm = self._decode(message)
                if pcm is not None:
                    self.heard.add(pcm)
                elif isinstance(message, str):
                    self.texts.append(json.loads(message))
                    self.text_positions.append(len(self.heard.frames))
        except Exception:
            pass
        finally:
            self.closed.set()

    async def stop(self, final: str | None = None) -> None:
        for task in self._tasks[:1]:
            task.cancel()
        with contextlib.suppress(Exception):
            if final is not None:
                await self.socket.send(final)
            await self.socket.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def twilio_caller(
    stream_url: str, call_sid: str, headers: dict[str, str] | None = None
) -> AsyncIterator[LiveCaller]:
    """A Twilio media stream on ``stream_url``: ``connected``, ``start``, then the tone."""
    stream_sid = "MZ" + secrets.token_hex(16)
    sequence = iter(range(3, 10**9))

    def encode(pcm: np.ndarray) -> str:
        n = next(sequence)
        return tw.media(stream_sid, _PCMU.encode(pcm), n, n - 2)

    def decode(message: str | bytes) -> np.ndarray | None:
        if not isinstance(message, str) or '"media"' not in message:
            return None
        payload = json.loads(message)["media"]["payload"]
        return _PCMU.decode(base64.b64decode(payload))

    async with connect(stream_url, additional_headers=headers or {}, open_timeout=5) as socket:
        await socket.send(tw.connected())
        await socket.send(tw.start(stream_sid, call_sid))
        caller = LiveCaller(socket, encode, decode)
        caller.stream_sid = stream_sid
        caller.start()
        try:
            yield caller
        finally:
            await caller.stop(tw.stop(stream_sid, call_sid, 10**9))


@contextlib.asynccontextmanager
async def plivo_caller(
    stream_url: str, call_uuid: str, extra_headers: str | None = None
) -> AsyncIterator[LiveCaller]:
    """A Plivo audio stream on ``stream_url`` (μ-law): ``start`` first (with
    ``extra_headers`` when given), then the tone."""
    stream_id = secrets.token_hex(16)
    counter = iter(range(2, 10**9))

    def encode(pcm: np.ndarray) -> str:
        n = next(counter)
        media = {
            "track": "inbound",
            "timestamp": str(n * 20),
            "chunk": n,
            "payload": base64.b64encode(_PCMU.encode(pcm)).decode(),
        }
        return json.dumps(
            {"event": "media", "sequenceNumber": n, "streamId": stream_id, "media": media}
        )

    def decode(message: str | bytes) -> np.ndarray | None:
        if not isinstance(message, str) or '"playAudio"' not in message:
            return None
        return _PCMU.decode(base64.b64decode(json.loads(message)["media"]["payload"]))

    start = {
        "event": "start",
        "sequenceNumber": 1,
        "start": {
            "callId": call_uuid,
            "streamId": stream_id,
            "accountId": "MA" + "X" * 18,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
    }
    if extra_headers is not None:
        start["extra_headers"] = extra_headers
    async with connect(stream_url, open_timeout=5) as socket:
        await socket.send(json.dumps(start))
        caller = LiveCaller(socket, encode, decode)
        caller.start()
        try:
            yield caller
        finally:
            await caller.stop()


@contextlib.asynccontextmanager
async def telnyx_caller(stream_url: str, call_control_id: str) -> AsyncIterator[LiveCaller]:
    """A Telnyx media stream on ``stream_url`` (PCMU): ``connected``, ``start``, the tone."""
    stream_id = secrets.token_hex(16)
    counter = iter(range(2, 10**9))

    def encode(pcm: np.ndarray) -> str:
        n = next(counter)
        media = {
            "track": "inbound",
            "chunk": str(n - 1),
            "timestamp": str(n * 20),
            "payload": base64.b64encode(_PCMU.encode(pcm)).decode(),
        }
        return json.dumps(
            {"event": "media", "sequence_number": str(n), "stream_id": stream_id, "media": media}
        )

    def decode(message: str | bytes) -> np.ndarray | None:
        if not isinstance(message, str) or '"media"' not in message:
            return None
        return _PCMU.decode(base64.b64decode(json.loads(message)["media"]["payload"]))

    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": stream_id,
        "start": {
            "call_control_id": call_control_id,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    async with connect(stream_url, open_timeout=5) as socket:
        await socket.send('{"event":"connected","version":"1.0.0"}')
        await socket.send(json.dumps(start))
        caller = LiveCaller(socket, encode, decode)
        caller.start()
        try:
            yield caller
        finally:
            await caller.stop(json.dumps({"event": "stop", "stream_id": stream_id}))


@contextlib.asynccontextmanager
async def custom_caller(socket_url: str, call_id: str) -> AsyncIterator[LiveCaller]:
    """A custom-protocol socket at 8 kHz: ``start``, then the tone as binary PCM16-LE."""

    def encode(pcm: np.ndarray) -> bytes:
        return pcm.astype("<i2").tobytes()

    def decode(message: str | bytes) -> np.ndarray | None:
        return np.frombuffer(message, dtype="<i2") if isinstance(message, bytes) else None

    async with connect(socket_url, open_timeout=5) as socket:
        await socket.send(json.dumps({"event": "start", "callId": call_id}))
        caller = LiveCaller(socket, encode, decode)
        caller.start()
        try:
            yield caller
        finally:
            await caller.stop(json.dumps({"event": "stop"}))


class ToneParticipant:
    """A room participant streaming a 1000 Hz tone at 16 kHz and recording what it hears."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.heard = Heard(ROOM_RATE)
        self.events: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.socket.send(json.dumps(message) if isinstance(message, dict) else message)

    async def wait_for(self, event: str) -> dict[str, Any]:
        """The first event called ``event`` (within 10 s)."""
        async with asyncio.timeout(10):
            while True:
                for seen in self.events:
                    if seen.get("event") == event:
                        return seen
                await asyncio.sleep(0.02)

    async def _send_tone(self) -> None:
        tone = ToneGenerator(ROOM_HZ, ROOM_RATE, 0.5)
        deadline = time.monotonic()
        with contextlib.suppress(Exception):
            while True:
                await self.socket.send(tone.next_frame(320).astype("<i2").tobytes())
                deadline += 0.02
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _receive(self) -> None:
        try:
            async for message in self.socket:
                if isinstance(message, bytes):
                    self.heard.add(np.frombuffer(message, dtype="<i2"))
                else:
                    self.events.append(json.loads(message))
        except Exception:
            pass
        finally:
            self.closed.set()


@contextlib.asynccontextmanager
async def tone_participant(room_url: str) -> AsyncIterator[ToneParticipant]:
    """A participant that has joined the room at ``room_url`` and streams its tone."""
    async with connect(room_url, open_timeout=5) as socket:
        joined = json.loads(await socket.recv())
        assert joined["event"] == "joined"
        participant = ToneParticipant(socket)
        participant._tasks = [
            asyncio.create_task(participant._send_tone()),
            asyncio.create_task(participant._receive()),
        ]
        try:
            yield participant
        finally:
            for task in participant._tasks:
                task.cancel()
            await asyncio.gather(*participant._tasks, return_exceptions=True)


async def assert_both_ways_after(
    caller: LiveCaller,
    participant: ToneParticipant,
    moment: float,
    seconds: float = 1.6,
    *,
    hostile: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Let the call run ``seconds`` past ``moment`` and check that each side heard the other's
    tone after it: the caller the room's 1000 Hz, the participant the caller's 440 Hz."""
    if hostile is not None:
        await hostile()
    await asyncio.sleep(seconds)
    assert not caller.closed.is_set(), "the call is still up"
    caller.heard.assert_tone_since(moment + 0.2, ROOM_HZ)
    participant.heard.assert_tone_since(moment + 0.2, CALLER_HZ)
