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

Media quality: each caller frame is observed by a :class:`~callbridge.media.arrivals.
FrameArrivals` (lost, late, reordered and duplicate frames, jitter) with the clock read the
frame costs anyway, unless the stream observes its frames itself (Telnyx, before its reorder
buffer). A mark's latency runs from the moment it is sent to the provider to its echo; a
clear's from the room's ``clear`` to the provider's confirmation: its ``clearedAudio``
(:class:`~callbridge.protocols.ClearDone`), or, from a provider that echoes pending marks on
clear, the echo of a mark that was pending at that clear. A clear with neither is not timed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace

from callbridge.calls.state import EndReason
from callbridge.media.arrivals import FrameArrivals
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


UNCONFIRMED_CLEARS = 16
"""Clears remembered while they wait for the provider's confirmation (older ones go untimed)."""


@dataclass(slots=True)
class Latencies:
    """Round trips of one kind: how many were timed, their sum and the longest, in seconds."""

    count: int = 0
    total: float = 0.0
    longest: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.longest:
            self.longest = seconds

    def figures(self, name: str) -> dict[str, int]:
        """``{name}_ms_mean`` and ``{name}_ms_max`` in whole milliseconds; nothing when none
        was timed."""
        if not self.count:
            return {}
        return {
            f"{name}_ms_mean": round(self.total / self.count * 1000),
            f"{name}_ms_max": round(self.longest * 1000),
        }


@dataclass
class MediaStats:
    """Counters reported when a call ends (the README's Observability section)."""

    frames_in: int = 0
    frames_out: int = 0
    dtmf: int = 0
    dtmf_out: int = 0
    dtmf_out_unsupported: int = 0
    transfers: int = 0
    marks: int = 0
    """Marks sent to the provider."""
    marks_played: int = 0
    """Marks reported to the room as played."""
    marks_cleared: int = 0
    """Marks reported to the room as cleared."""
    clears: int = 0
    arrivals: FrameArrivals = field(default_factory=FrameArrivals)
    """How the caller's frames arrived: lost, late, reordered, duplicates and jitter."""
    mark_latency: Latencies = field(default_factory=Latencies)
    """From sending a mark to its echo, for the marks played."""
    clear_latency: Latencies = field(default_factory=Latencies)
    """From the room's clear to the provider's confirmation, for the clears confirmed."""

    def as_dict(self, malformed: int, far_end_dropped: int = 0) -> dict[str, int]:
        arrivals = self.arrivals
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "far_end_dropped": far_end_dropped,
            "lost": arrivals.lost,
            "late": arrivals.late,
            "reordered": arrivals.reordered,
            "duplicates": arrivals.duplicates,
            "dtmf": self.dtmf,
            "dtmf_out": self.dtmf_out,
            "dtmf_out_unsupported": self.dtmf_out_unsupported,
            "transfers": self.transfers,
            "marks": self.marks,
            "marks_played": self.marks_played,
            "marks_cleared": self.marks_cleared,
            "clears": self.clears,
            "clears_confirmed": self.clear_latency.count,
            "malformed": malformed,
            "jitter_us": round(arrivals.jitter * 1_000_000),
            **self.mark_latency.figures("mark_latency"),
            **self.clear_latency.figures("clear_latency"),
        }


@dataclass(slots=True)
class _SentMark:
    sent_at: float
    cleared_at: float | None = None  # the first clear sent after it


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
        observed = getattr(stream, "arrivals", None)
        if isinstance(observed, FrameArrivals):
            self.stats.arrivals = observed
        self._stream_observes_arrivals = self.stats.arrivals is observed
        self._to_room = FrameResampler(self.codec.sample_rate, room_rate)
        self._to_caller = FrameResampler(room_rate, self.codec.sample_rate)
        self._caller_frames = FrameAssembler(self.codec.frame_samples)
        self.far_end = FarEndPlayout()
        self._now = time.monotonic
        self._echoes_marks_on_clear = echoes_marks_on_clear
        self._end: BridgeEnd | None = None
        self._ended = asyncio.Event()
        # Marks sent to the provider and not yet reported, in order; once a clear was sent
        # after one, its echo (or the clear confirmation) reports it "cleared".
        self._pending_marks: dict[str, _SentMark] = {}
        # When the clears still waiting for the provider's confirmation were sent, oldest first.
        self._unconfirmed_clears: deque[float] = deque(maxlen=UNCONFIRMED_CLEARS)
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
        observe = None if self._stream_observes_arrivals else stats.arrivals.observe
        while True:
            event = await stream.receive()
            # The leg and the resampler change when the call moves to another room.
            leg = self.leg
            if isinstance(event, AudioIn):
                if not stats.frames_in:
                    self._span.add_event("first audio from the caller")
                stats.frames_in += 1
                if observe is not None:
                    observe(event.sequence, now())
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
                self._mark_echoed(event.name, now())
            elif isinstance(event, ClearDone):
                self._clear_done(now())
            elif isinstance(event, StreamStopped):
                if event.reason == "stop":
                    return BridgeEnd(EndReason.CALLER_HANGUP)
                return BridgeEnd(EndReason.STREAM_CLOSED, event.reason)

    def _mark_echoed(self, name: str, now: float) -> None:
        mark = self._pending_marks.pop(name, None)
        self._report_mark(name, mark, now)
        if mark is not None and mark.cleared_at is not None and self._echoes_marks_on_clear:
            # The provider echoes every pending mark when it clears: the echo confirms the clear.
            clears = self._unconfirmed_clears
            if clears and clears[0] <= mark.cleared_at:
                while clears and clears[0] <= mark.cleared_at:
                    clears.popleft()  # an older clear with no mark pending is never confirmed
                self._clear_confirmed(now - mark.cleared_at)

    def _clear_done(self, now: float) -> None:
        if not self._echoes_marks_on_clear:
            pending = self._pending_marks
            flushed = [name for name, mark in pending.items() if mark.cleared_at is not None]
            for name in flushed:
                self._report_mark(name, pending.pop(name), now)
        if self._unconfirmed_clears:
            self._clear_confirmed(now - self._unconfirmed_clears.popleft())

    def _clear_confirmed(self, latency: float) -> None:
        self.stats.clear_latency.add(latency)
        self._span.add_event(
            "clear confirmed", {"callbridge.clear.latency_ms": round(latency * 1000, 1)}
        )

    def _report_mark(self, name: str, mark: _SentMark | None, now: float) -> None:
        cleared = mark is not None and mark.cleared_at is not None
        attributes: dict[str, str | float] = {"callbridge.mark.name": name}
        if mark is not None:
            latency = now - mark.sent_at
            attributes["callbridge.mark.latency_ms"] = round(latency * 1000, 1)
            if not cleared:
                self.stats.mark_latency.add(latency)
        if cleared:
            self.stats.marks_cleared += 1
        else:
            self.stats.marks_played += 1
        self._span.add_event("mark cleared" if cleared else "mark played", attributes)
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
        if self.far_end.admit(self._now(), pcm):
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
            sent_at = self._now()
            self._unconfirmed_clears.append(sent_at)
            for mark in self._pending_marks.values():
                if mark.cleared_at is None:
                    mark.cleared_at = sent_at
            self.stream.send_clear()
        elif kind == "mark" and "status" not in event and _valid_mark_name(event.get("name")):
            self.stats.marks += 1
            self._span.add_event("mark sent", {"callbridge.mark.name": event["name"]})
            self._pending_marks[event["name"]] = _SentMark(self._now())
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
