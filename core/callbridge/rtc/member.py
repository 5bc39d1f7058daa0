"""A WebRTC participant as a leg of its room on the one media clock, terminated with aiortc.

Browser → room: aiortc decodes the browser's audio (Opus: 48 kHz interleaved stereo; PCMU/PCMA:
8 kHz mono) in its own decoder thread; :meth:`RtcMember.consume` takes each frame, folds it to
mono, cuts it into 20 ms frames, resamples it to the room's rate and pushes it into the room
leg, unless the member is muted or on hold. Its last frame is kept for the ``speaking`` level
(dBFS), computed only when read.

Room → browser: the member is the leg's :class:`~callbridge.protocols.LegSink`. The room calls
:meth:`RtcMember.hear` on the media clock's tick; the frame is resampled to 8 kHz mono (aiortc's
Opus encoder upsamples in C, and its per-frame audio-level loop is cheapest on 160 samples) and
handed to :class:`ClockTrack`, whose ``recv`` aiortc's sender awaits. So the one clock paces the
browser's audio: no timer of our own, and at most :data:`MAX_QUEUED_FRAMES` frames wait (older
ones are dropped, so delay never builds up).
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import structlog
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from callbridge.media.analysis import level_dbfs
from callbridge.media.framing import FrameAssembler
from callbridge.media.resample import FrameResampler
from callbridge.protocols import Pcm, RoomLeg

log = structlog.get_logger("callbridge.rtc")

OUT_RATE: Final = 8000
"""The rate of the frames handed to aiortc's encoder."""
MAX_QUEUED_FRAMES: Final = 3
"""Frames that may wait for aiortc's sender; beyond, the oldest are dropped (60 ms at most)."""
SILENT_DBFS: Final = -100.0


class ClockTrack(MediaStreamTrack):
    """The audio aiortc sends to the browser: the frames the room's clock hands over."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: deque[Pcm] = deque(maxlen=MAX_QUEUED_FRAMES)
        self._waiter: asyncio.Future[None] | None = None
        self._pts = 0
        self._time_base = fractions.Fraction(1, OUT_RATE)
        self.dropped = 0

    def push(self, pcm: Pcm) -> None:
        """One 20 ms frame at :data:`OUT_RATE`, mono int16."""
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(pcm)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        pcm = self._frames.popleft()
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += len(pcm)
        return frame

    def stop(self) -> None:
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RtcMember:
    """One browser in a room: the leg's sink, the outbound track and the inbound consumer.

    Args:
        room_rate: the room transport's sample rate.
        notify: called with every room event for this member (the signalling socket sends it).
        closed: called when the room ends the member's leg.
    """

    def __init__(
        self,
        room_rate: int,
        notify: Callable[[Mapping[str, Any]], None],
        closed: Callable[[str | None], None],
    ) -> None:
        self.room_rate = room_rate
        self.track = ClockTrack()
        self.leg: RoomLeg | None = None
        self.muted = False
        self.held = False
        self.frames_in = 0
        self.frames_out = 0
        self._notify = notify
        self._closed = closed
        self._to_browser = FrameResampler(room_rate, OUT_RATE)
        self._silence = np.zeros(OUT_RATE // 50, dtype=np.int16)
        self._last_piece: Pcm | None = None

    @property
    def level_dbfs(self) -> float:
        """The level of the last frame the browser sent (read for meters, a few times a
        second, rather than computed for every frame)."""
        piece = self._last_piece
        return SILENT_DBFS if piece is None else max(SILENT_DBFS, level_dbfs(piece))

    # ------------------------------------------------------------------ room → browser (LegSink)

    def hear(self, frame: Pcm) -> None:
        pcm = self._to_browser.process(frame)  # the filter's history must see every frame
        self.track.push(self._silence if self.held else pcm)
        self.frames_out += 1

    def notify(self, event: Mapping[str, Any]) -> None:
        self._notify(event)

    def leg_closed(self, reason: str | None) -> None:
        self._closed(reason)

    # ------------------------------------------------------------------ browser → room

    async def consume(self, track: MediaStreamTrack) -> None:
        """Feed the room from the browser's track until it ends."""
        assembler: FrameAssembler | None = None
        resampler: FrameResampler | None = None
        rate = 0
        while True:
            try:
                received = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(received, AudioFrame):
                continue
            frame = received
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            mono: Pcm = (
                pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
                if channels > 1
                else pcm.reshape(-1).astype(np.int16, copy=False)
            )
            if frame.sample_rate != rate:
                rate = int(frame.sample_rate)
                assembler = FrameAssembler(rate // 50)
                resampler = FrameResampler(rate, self.room_rate)
            assert assembler is not None and resampler is not None
            for piece in assembler.push(mono):
                self.frames_in += 1
                self._last_piece = piece
                leg = self.leg
                if leg is not None and not self.muted and not self.held:
                    leg.send_audio(resampler.process(piece))
                else:
                    resampler.process(piece)
