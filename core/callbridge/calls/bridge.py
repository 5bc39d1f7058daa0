"""The media bridge: one claimed provider stream as a member of its room.

Caller → room: the stream's receive loop (the call's one pump task) decodes each frame,
resamples it to the room's rate and pushes it into the room leg, all in the same step.
Room → caller: the bridge is the leg's :class:`~callbridge.protocols.LegSink`; the room calls
:meth:`CallBridge.hear` on the media clock's tick (or the moment the other member of a
two-member room speaks), and the frame is resampled, encoded and written to the provider's
socket right there. No per-call timer, pacer or queue: the one media clock paces everything.

Marks and clears travel with the audio: the room hands a participant's ``mark`` to the bridge
only after the audio that preceded it, so it reaches the provider after that audio; a ``clear``
resets the outbound resampler and drops audio still waiting for the socket before the
provider's own clear goes out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace

from callbridge.calls.state import EndReason
from callbridge.media.codecs import Codec, get_codec
from callbridge.media.framing import FrameAssembler
from callbridge.media.playout import FarEndPlayout
from callbridge.media.resample import FrameResampler
from callbridge.protocols import (
    AudioIn,
    ClearDone,
    DtmfIn,
    MarkEcho,
    MediaStream,
    Pcm,
    RoomLeg,
    StreamStarted,
    StreamStopped,
)

log = structlog.get_logger("callbridge.bridge")


@dataclass(frozen=True)
class BridgeEnd:
    """Why a bridged call ended, as the state machine records it."""

    reason: EndReason
    detail: str | None = None


FRAME_SECONDS = 0.02


@dataclass
class MediaStats:
    """Counters reported when a call ends."""

    frames_in: int = 0
    frames_out: int = 0
    dtmf: int = 0
    dtmf_out: int = 0
    dtmf_out_unsupported: int = 0
    transfers: int = 0
    marks: int = 0
    clears: int = 0
    jitter: float = 0.0
    """Inter-arrival jitter of the caller's frames in seconds (RFC 3550's running estimate)."""

    def as_dict(self, malformed: int, far_end_dropped: int = 0) -> dict[str, int]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "far_end_dropped": far_end_dropped,
            "dtmf": self.dtmf,
            "dtmf_out": self.dtmf_out,
            "dtmf_out_unsupported": self.dtmf_out_unsupported,
            "transfers": self.transfers,
            "marks": self.marks,
            "clears": self.clears,
            "malformed": malformed,
            "jitter_us": round(self.jitter * 1_000_000),
        }


class CallBridge:
    """Bridges one claimed provider stream and its room leg until either side ends.

    Create it, join the room with it as the sink, :meth:`attach` the leg, then :meth:`run`.
    """

    def __init__(
        self,
        call_id: str,
        stream: MediaStream,
        started: StreamStarted,
        room_rate: int,
        *,
        echoes_marks_on_clear: bool = True,
    ) -> None:
        self.call_id = call_id
        self.stream = stream
        self.leg: RoomLeg | None = None
        self.codec: Codec = get_codec(started.codec)
        self.stats = MediaStats()
        self._to_room = FrameResampler(self.codec.sample_rate, room_rate)
        self._to_caller = FrameResampler(room_rate, self.codec.sample_rate)
        self._caller_frames = FrameAssembler(self.codec.frame_samples)
        self.far_end = FarEndPlayout()
        self._now = time.monotonic
        self._echoes_marks_on_clear = echoes_marks_on_clear
        self._end: BridgeEnd | None = None
        self._ended = asyncio.Event()
        # Marks sent to the provider and not yet reported, in order; True once a clear was sent
        # after them, so their echo (or the clear confirmation) reports them "cleared".
        self._pending_marks: dict[str, bool] = {}
        self.on_transfer: Callable[[str, str | None], None] | None = None
        """Called with ``(room_id, transport)`` when a room member asks to move the call."""
        self._span: trace.Span = trace.INVALID_SPAN
        self._sent_audio = False
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        """Called with a lifecycle event's type and data (``call-dtmf``,
        ``participant-joined``/``-left``), in the order they happen."""
        self._members: set[str] = set()

    def attach(self, leg: RoomLeg) -> None:
        """The room leg this bridge feeds (joined with this bridge as its sink)."""
        self.leg = leg

    def detach(self) -> None:
        """Stop feeding the room (while the call moves): the caller's audio is dropped until
        the next :meth:`attach`."""
        self.leg = None

    def retune(self, room_rate: int) -> None:
        """Convert for a room at ``room_rate`` from now on (a transfer to another transport)."""
        if self._to_room.out_rate != room_rate:
            self._to_room = FrameResampler(self.codec.sample_rate, room_rate)
            self._to_caller = FrameResampler(room_rate, self.codec.sample_rate)

    def request_hangup(self, reason: EndReason = EndReason.API_HANGUP) -> None:
        """End the call from outside (API hang-up, server shutdown) with ``reason``."""
        self._finish(BridgeEnd(reason))

    async def run(self, max_seconds: float) -> BridgeEnd:
        """Bridge until one side ends; returns why."""
        self._span = trace.get_current_span()  # sinks are called from other tasks
        self._span.add_event(
            "codec",
            {
                "callbridge.codec": f"{self.codec.name}/{self.codec.sample_rate}",
                "callbridge.room.sample_rate": self._to_room.out_rate,
            },
        )
        pump = asyncio.create_task(self._caller_to_room(), name="caller-to-room")
        ended = asyncio.create_task(self._ended.wait(), name="bridge-ended")
        try:
            done, _ = await asyncio.wait(
                {pump, ended}, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if pump in done:
                self._finish(pump.result())
            elif not done:
                self._finish(BridgeEnd(EndReason.MAX_DURATION))
            assert self._end is not None
            return self._end
        finally:
            for task in (pump, ended):
                task.cancel()
            await asyncio.gather(pump, ended, return_exceptions=True)

    def _finish(self, end: BridgeEnd) -> None:
        if self._end is None:
            self._end = end
            self._ended.set()

    # ------------------------------------------------------------------ caller → room

    async def _caller_to_room(self) -> BridgeEnd:
        stream, codec = self.stream, self.codec
        assert self.leg is not None, "attach() the room leg before run()"
        frame_samples = codec.frame_samples
        assembler = self._caller_frames
        stats = self.stats
        now = self._now
        last_arrival = 0.0
        while True:
            event = await stream.receive()
            # The leg and the resampler change when the call moves to another room.
            leg = self.leg
            if isinstance(event, AudioIn):
                if not stats.frames_in:
                    self._span.add_event("first audio from the caller")
                stats.frames_in += 1
                arrival = now()
                if last_arrival:
                    # RFC 3550: J += (|D| - J) / 16, D the deviation from the 20 ms spacing
                    stats.jitter += (
                        abs(arrival - last_arrival - FRAME_SECONDS) - stats.jitter
                    ) / 16
                last_arrival = arrival
                if leg is None:
                    continue
                pcm = codec.decode(event.payload)
                to_room = self._to_room
                if len(pcm) == frame_samples and not assembler.pending:
                    leg.send_audio(to_room.process(pcm))
                else:
                    for frame in assembler.push(pcm):
                        leg.send_audio(to_room.process(frame))
            elif isinstance(event, DtmfIn):
                self.stats.dtmf += 1
                self._span.add_event("dtmf", {"callbridge.dtmf.digit": event.digit})
                self._emit("call-dtmf", {"digit": event.digit})
                if leg is not None:
                    leg.send_event({"event": "dtmf", "digit": event.digit, "callId": self.call_id})
            elif isinstance(event, MarkEcho):
                cleared = self._pending_marks.pop(event.name, False)
                self._report_mark(event.name, cleared)
            elif isinstance(event, ClearDone):
                if not self._echoes_marks_on_clear:
                    flushed = [name for name, cleared in self._pending_marks.items() if cleared]
                    for name in flushed:
                        del self._pending_marks[name]
                        self._report_mark(name, True)
            elif isinstance(event, StreamStopped):
                if event.reason == "stop":
                    return BridgeEnd(EndReason.CALLER_HANGUP)
                return BridgeEnd(EndReason.STREAM_CLOSED, event.reason)

    def _report_mark(self, name: str, cleared: bool) -> None:
        if self.leg is not None:
            self.leg.send_event(
                {
                    "event": "mark",
                    "name": name,
                    "status": "cleared" if cleared else "played",
                    "callId": self.call_id,
                }
            )

    # ------------------------------------------------------------------ room → caller (LegSink)

    def hear(self, frame: Pcm) -> None:
        """One frame of what the caller hears: resampled, encoded and written at once."""
        if self._end is not None:
            return
        pcm = self._to_caller.process(frame)  # the filter's history must see every frame
        if self.far_end.admit(self._now()):
            self.stream.send_audio(self.codec.encode(pcm))
            self.stats.frames_out += 1
            if not self._sent_audio:
                self._sent_audio = True
                self._span.add_event("first audio to the caller")

    def notify(self, event: Mapping[str, Any]) -> None:
        """A room event for this call: ``clear``, ``mark``, ``hangup``, ``transfer`` (handed
        to :attr:`on_transfer`) and ``dtmf`` ``digits`` (played to the caller where the
        provider's stream can: its ``send_dtmf``; counted as unsupported otherwise)."""
        if self._end is not None:
            return
        kind = event.get("event")
        if kind in ("participant-joined", "participant-left"):
            self._member_event(kind, event)
            return
        target = event.get("callId")
        if target is not None and target != self.call_id:
            return
        if kind == "clear":
            self.stats.clears += 1
            self._span.add_event("clear")
            self._to_caller.reset()
            self.far_end.reset()
            for name in self._pending_marks:
                self._pending_marks[name] = True
            self.stream.send_clear()
        elif kind == "mark" and "status" not in event and _valid_mark_name(event.get("name")):
            self.stats.marks += 1
            self._span.add_event("mark sent", {"callbridge.mark.name": event["name"]})
            self._pending_marks[event["name"]] = False
            self.stream.send_mark(event["name"])
        elif kind == "hangup":
            reason = (
                EndReason.AGENT_UNAVAILABLE
                if event.get("unavailable") is True
                else EndReason.ROOM_HANGUP
            )
            self._finish(BridgeEnd(reason, _short(event.get("reason"))))
        elif kind == "transfer" and isinstance(event.get("roomId"), str):
            self.stats.transfers += 1
            self._span.add_event("transfer", {"callbridge.room.id": event["roomId"]})
            if self.on_transfer is not None:
                transport = event.get("transport")
                self.on_transfer(event["roomId"], transport if isinstance(transport, str) else None)
        elif kind == "dtmf" and isinstance(event.get("digits"), str):
            send_dtmf = getattr(self.stream, "send_dtmf", None)
            if send_dtmf is None:
                self.stats.dtmf_out_unsupported += 1
            else:
                self.stats.dtmf_out += 1
                send_dtmf(event["digits"])

    def _member_event(self, kind: str, event: Mapping[str, Any]) -> None:
        """A member of the call's room joined or left: an event of the call (a member never
        "left" without having "joined" while the call was there)."""
        member = event.get("participantId")
        if not isinstance(member, str):
            return
        if kind == "participant-joined":
            self._members.add(member)
            self._emit(
                "participant-joined",
                {
                    "participantId": member,
                    "kind": str(event.get("kind", "")),
                    "displayName": str(event.get("displayName", "")),
                },
            )
        elif member in self._members:
            self._members.discard(member)
            self._emit("participant-left", {"participantId": member})

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event_type, data)

    def leg_closed(self, reason: str | None) -> None:
        """The room ended this call's leg."""
        self._finish(BridgeEnd(EndReason.ROOM_CLOSED, reason))


def _short(text: object) -> str | None:
    return text[:200] if isinstance(text, str) and text else None


def _valid_mark_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 128
