"""The media bridge: two pumps and a control loop between a provider stream and a room leg."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from callbridge.calls.state import EndReason
from callbridge.media.codecs import Codec, get_codec
from callbridge.media.framing import ByteFramer, FrameAssembler, Pacer
from callbridge.media.resample import StreamResampler
from callbridge.protocols import (
    AudioIn,
    ClearDone,
    DtmfIn,
    MarkEcho,
    MediaStream,
    RoomLeg,
    StreamStarted,
    StreamStopped,
)

log = structlog.get_logger("callbridge.bridge")

FRAME_SECONDS = 0.02


@dataclass(frozen=True)
class BridgeEnd:
    """Why a bridged call ended, as the state machine records it."""

    reason: EndReason
    detail: str | None = None


@dataclass
class MediaStats:
    """Counters reported when a call ends."""

    frames_in: int = 0
    frames_out: int = 0
    dtmf: int = 0
    marks: int = 0
    clears: int = 0

    def as_dict(self, malformed: int) -> dict[str, int]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dtmf": self.dtmf,
            "marks": self.marks,
            "clears": self.clears,
            "malformed": malformed,
        }


class CallBridge:
    """Bridges one claimed provider stream and one room leg until either side ends."""

    def __init__(
        self,
        call_id: str,
        stream: MediaStream,
        started: StreamStarted,
        leg: RoomLeg,
        *,
        echoes_marks_on_clear: bool = True,
        lead_frames: int = 3,
    ) -> None:
        self.call_id = call_id
        self.stream = stream
        self.leg = leg
        self.codec: Codec = get_codec(started.codec)
        self.stats = MediaStats()
        self._to_room = StreamResampler(self.codec.sample_rate, leg.sample_rate)
        self._to_caller = StreamResampler(leg.sample_rate, self.codec.sample_rate)
        self._room_frames = FrameAssembler(leg.sample_rate // 50)
        self._caller_frames = ByteFramer(self.codec.frame_bytes)
        self._pacer = Pacer(FRAME_SECONDS, lead=lead_frames)
        self._hangup = asyncio.Event()
        self._hangup_reason = EndReason.API_HANGUP
        self._echoes_marks_on_clear = echoes_marks_on_clear
        # Marks sent to the provider and not yet reported, in order; True once a clear was sent
        # after them, so their echo (or the clear confirmation) reports them "cleared".
        self._pending_marks: dict[str, bool] = {}

    def request_hangup(self, reason: EndReason = EndReason.API_HANGUP) -> None:
        """End the call from outside (API hang-up, server shutdown) with ``reason``."""
        if not self._hangup.is_set():
            self._hangup_reason = reason
            self._hangup.set()

    async def run(self, max_seconds: float) -> BridgeEnd:
        """Bridge until one side ends; returns why."""
        tasks = {
            asyncio.create_task(self._caller_to_room(), name="caller-to-room"),
            asyncio.create_task(self._room_to_caller(), name="room-to-caller"),
            asyncio.create_task(self._room_control(), name="room-control"),
            asyncio.create_task(self._wait_hangup(), name="hangup"),
        }
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return BridgeEnd(EndReason.MAX_DURATION)
            finished = next(iter(done))
            return finished.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _caller_to_room(self) -> BridgeEnd:
        stream, leg, codec = self.stream, self.leg, self.codec
        while True:
            event = await stream.receive()
            if isinstance(event, AudioIn):
                self.stats.frames_in += 1
                pcm = self._to_room.process(codec.decode(event.payload))
                for frame in self._room_frames.push(pcm):
                    leg.send_audio(frame)
            elif isinstance(event, DtmfIn):
                self.stats.dtmf += 1
                await leg.send_event(
                    {"event": "dtmf", "digit": event.digit, "callId": self.call_id}
                )
            elif isinstance(event, MarkEcho):
                cleared = self._pending_marks.pop(event.name, False)
                await self._report_mark(event.name, cleared)
            elif isinstance(event, ClearDone):
                if not self._echoes_marks_on_clear:
                    flushed = [name for name, cleared in self._pending_marks.items() if cleared]
                    for name in flushed:
                        del self._pending_marks[name]
                        await self._report_mark(name, True)
            elif isinstance(event, StreamStopped):
                if event.reason == "stop":
                    return BridgeEnd(EndReason.CALLER_HANGUP)
                return BridgeEnd(EndReason.STREAM_CLOSED, event.reason)

    async def _room_to_caller(self) -> BridgeEnd:
        stream, leg, codec = self.stream, self.leg, self.codec
        pacer = self._pacer
        while True:
            frame = await leg.receive_audio()
            if frame is None:
                return self._room_closed()
            for payload in self._caller_frames.push(codec.encode(self._to_caller.process(frame))):
                await pacer.wait()
                await stream.send_audio(payload)
                self.stats.frames_out += 1

    async def _room_control(self) -> BridgeEnd:
        while True:
            event = await self.leg.receive_event()
            if event is None:
                return self._room_closed()
            target = event.get("callId")
            if target is not None and target != self.call_id:
                continue
            kind = event.get("event")
            if kind == "clear":
                self.stats.clears += 1
                self._caller_frames.clear()
                self._pacer.reset()
                for name in self._pending_marks:
                    self._pending_marks[name] = True
                await self.stream.send_clear()
            elif kind == "mark" and _valid_mark_name(event.get("name")):
                self.stats.marks += 1
                self._pending_marks[event["name"]] = False
                await self.stream.send_mark(event["name"])
            elif kind == "hangup":
                return BridgeEnd(EndReason.ROOM_HANGUP)

    def _room_closed(self) -> BridgeEnd:
        return BridgeEnd(EndReason.ROOM_CLOSED, self.leg.closed_reason)

    async def _report_mark(self, name: str, cleared: bool) -> None:
        await self.leg.send_event(
            {
                "event": "mark",
                "name": name,
                "status": "cleared" if cleared else "played",
                "callId": self.call_id,
            }
        )

    async def _wait_hangup(self) -> BridgeEnd:
        await self._hangup.wait()
        return BridgeEnd(self._hangup_reason)


def _valid_mark_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 128
