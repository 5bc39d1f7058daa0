"""The room-participant client: joins a room over WebSocket, sends audio, records what it hears.

Protocol (served by callbridge at ``/v2/rooms/{roomId}/participants?token=TOKEN``):

1. the server's first message is JSON text ``{"event": "joined", "roomId", "participantId",
   "sampleRate", "frameMs": 20, "encoding": "pcm_s16le"}``;
2. audio flows both ways as binary frames of exactly ``frameMs`` of mono PCM16-LE at
   ``sampleRate``;
3. call events reach the participant as JSON text (``participant-joined``,
   ``participant-left``, ``dtmf`` with ``digit`` and ``callId``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from callbridge.clients.audio import AudioSource, Recorder, Summary, summarize_recording
from callbridge.media.framing import Pacer

JOIN_TIMEOUT_SECONDS = 10.0
"""How long to wait for the server's ``joined`` message."""

_SOCKET_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


@dataclass(kw_only=True)
class RoomJoinOptions:
    """One room session of ``callbridge room join``.

    Attributes:
        server_url: base URL of the callbridge server (``http``/``https``, or ``ws``/``wss``).
        room_id: the room to join.
        token: an access token (JWT) allowed to join the room.
        tone_hz: send a sine tone at this frequency...
        play_path: ...else this WAV file (resampled to the room's rate), else silence.
        record_path: write what the participant heard to this WAV file.
        seconds: how long to send audio.
        linger_seconds: how long to keep listening after the last frame was sent, so audio
            still in flight (an echo, the tail of a mix) is recorded.
    """

    server_url: str = "http://127.0.0.1:8000"
    room_id: str
    token: str
    tone_hz: float | None = None
    play_path: str | None = None
    record_path: str | None = None
    seconds: float = 5.0
    linger_seconds: float = 0.5


def room_socket_url(server_url: str, room_id: str, token: str) -> str:
    """``ws(s)://HOST[/prefix]/v2/rooms/{roomId}/participants?token=TOKEN``, quoted.

    Raises:
        ValueError: when ``server_url`` is not an http, https, ws or wss URL.
    """
    parts = urlsplit(server_url)
    scheme = _SOCKET_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s):// or ws(s)://, got {server_url!r}")
    path = f"{parts.path.rstrip('/')}/v2/rooms/{quote(room_id, safe='')}/participants"
    return urlunsplit((scheme, parts.netloc, path, f"token={quote(token, safe='')}", ""))


async def join_room(options: RoomJoinOptions) -> Summary:
    """Join a room, send the source audio for ``options.seconds``, and report what happened.

    A refused handshake gives the outcome ``refused: HTTP <code>``; an unreachable server
    or a broken protocol gives ``failed: <reason>``; neither raises.
    """
    try:
        url = room_socket_url(options.server_url, options.room_id, options.token)
    except ValueError as exc:
        return Summary(outcome=f"failed: {exc}")
    try:
        async with connect(url, open_timeout=JOIN_TIMEOUT_SECONDS, close_timeout=2) as socket:
            return await _RoomSession(socket, options).run()
    except InvalidStatus as exc:
        return Summary(outcome=f"refused: HTTP {exc.response.status_code}")
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        return Summary(outcome=f"failed: cannot connect ({exc})")


class _RoomSession:
    def __init__(self, socket: ClientConnection, options: RoomJoinOptions) -> None:
        self.socket = socket
        self.options = options
        self.events: list[dict[str, Any]] = []
        self.frames_sent = 0
        self.frame_sizes: Counter[int] = Counter()

    async def run(self) -> Summary:
        try:
            first = await asyncio.wait_for(self.socket.recv(), JOIN_TIMEOUT_SECONDS)
        except (ConnectionClosed, TimeoutError):
            return Summary(outcome="failed: no joined message from the server")
        joined = _decode_event(first)
        if joined is None or joined.get("event") != "joined":
            return Summary(outcome="failed: the server's first message was not 'joined'")
        self.events.append(joined)
        try:
            rate = int(joined["sampleRate"])
            frame_ms = int(joined.get("frameMs", 20))
        except (KeyError, TypeError, ValueError):
            return Summary(outcome="failed: 'joined' has no valid sampleRate/frameMs")
        if joined.get("encoding", "pcm_s16le") != "pcm_s16le" or rate <= 0 or frame_ms <= 0:
            return Summary(outcome="failed: unsupported audio format in 'joined'")

        self.frame_samples = rate * frame_ms // 1000
        self.recorder = Recorder(rate)
        try:
            source = AudioSource(
                rate, tone_hz=self.options.tone_hz, play_path=self.options.play_path
            )
        except (OSError, ValueError) as exc:
            return Summary(outcome=f"failed: cannot read the audio to play ({exc})")
        receiver = asyncio.create_task(self._receive())
        sender = asyncio.create_task(self._send(source, frame_ms / 1000))
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        sent_all = sender.done() and sender.exception() is None
        if sent_all and not receiver.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(receiver), self.options.linger_seconds)
        server_closed = receiver.done() or not sent_all
        if not receiver.done():
            await self.socket.close()
        sender.cancel()
        await receiver
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender

        expected = self.frame_samples * 2
        bad = {size: n for size, n in self.frame_sizes.items() if size != expected}
        if bad:
            self.events.append(
                {"event": "bad-frame-size", "count": sum(bad.values()), "sizes": sorted(bad)}
            )
        if self.options.record_path:
            self.recorder.write(self.options.record_path)
        return summarize_recording(
            self.recorder,
            outcome="completed (server closed)" if server_closed else "completed",
            frames_sent=self.frames_sent,
            events=self.events,
        )

    async def _send(self, source: AudioSource, interval: float) -> None:
        pacer = Pacer(interval)
        for _ in range(round(self.options.seconds / interval)):
            await pacer.wait()
            frame = source.next_frame(self.frame_samples)
            await self.socket.send(frame.astype("<i2").tobytes())
            self.frames_sent += 1

    async def _receive(self) -> None:
        try:
            async for message in self.socket:
                if isinstance(message, bytes):
                    self.frame_sizes[len(message)] += 1
                    usable = len(message) - len(message) % 2
                    pcm = np.frombuffer(message[:usable], dtype="<i2").astype(np.int16)
                    self.recorder.append(pcm)
                else:
                    event = _decode_event(message)
                    self.events.append(event or {"event": "unparseable", "text": message[:200]})
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
            self.events.append({"event": "closed", "code": code, "reason": reason})


def _decode_event(message: str | bytes) -> dict[str, Any] | None:
    if not isinstance(message, str):
        return None
    try:
        event = json.loads(message)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
