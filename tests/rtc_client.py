"""A WebRTC room member played by aiortc (a stand-in for the browser in fast tests): it speaks
our signalling over the room's ``/rtc`` socket, sends a tone from a paced track and records
what it hears."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame
from websockets.asyncio.client import ClientConnection, connect

from tests.live_calls import Heard


class ToneTrack(MediaStreamTrack):
    """A paced 8 kHz mono tone at half scale (silence while ``silent``)."""

    kind = "audio"

    def __init__(self, frequency: float, rate: int = 8000) -> None:
        super().__init__()
        self.frequency, self.rate = frequency, rate
        self.samples = rate // 50
        self.silent = False
        self._start: float | None = None
        self._ts = 0

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._ts += self.samples
            delay = self._start + self._ts / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        n = np.arange(self._ts, self._ts + self.samples)
        level = 0.0 if self.silent else 0.5 * 32767
        pcm = (np.sin(2 * np.pi * self.frequency * n / self.rate) * level).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._ts
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


class RtcClient:
    """One member: its signalling socket, peer connection, tone and what it heard (48 kHz)."""

    def __init__(self, socket: ClientConnection, pc: RTCPeerConnection, tone: ToneTrack) -> None:
        self.socket = socket
        self.pc = pc
        self.tone = tone
        self.heard = Heard(48000)
        self.messages: list[dict[str, Any]] = []
        self.joined: dict[str, Any] = {}
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def wait_for(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for message in self.messages:
                    if message.get("type") == kind:
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.socket:
                message = json.loads(raw)
                self.messages.append(message)
                if message.get("type") == "answer":
                    await self.pc.setRemoteDescription(
                        RTCSessionDescription(sdp=message["sdp"], type="answer")
                    )
                self._arrived.set()

    async def _record(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                pcm = frame.to_ndarray()
                channels = len(frame.layout.channels)
                mono = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
                if frame.sample_rate != self.heard.rate:
                    self.heard.rate = int(frame.sample_rate)
                self.heard.add(mono)


@contextlib.asynccontextmanager
async def rtc_member(
    url: str,
    token: str,
    *,
    frequency: float = 700.0,
    display_name: str = "Ada",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[RtcClient]:
    """A member that logged in, joined with an offer, and got ``joined``."""
    async with connect(url, open_timeout=5) as socket:
        pc = RTCPeerConnection()
        tone = ToneTrack(frequency)
        pc.addTrack(tone)
        client = RtcClient(socket, pc, tone)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            client._tasks.append(asyncio.ensure_future(client._record(track)))

        client._tasks.append(asyncio.ensure_future(client._read()))
        try:
            await client.send({"type": "login", "token": token})
            await client.wait_for("login-ok")
            await client.send(
                {"type": "join", "displayName": display_name, "headers": headers or {}}
            )
            await pc.setLocalDescription(await pc.createOffer())
            await client.send({"type": "offer", "sdp": pc.localDescription.sdp})
            client.joined = await client.wait_for("joined")
            yield client
        finally:
            for task in client._tasks:
                task.cancel()
            await asyncio.gather(*client._tasks, return_exceptions=True)
            await pc.close()
