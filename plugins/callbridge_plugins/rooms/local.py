"""The ``local`` room transport: in-process rooms driven by the process's one media clock.

Every member of a room has an adaptive playout buffer for what it says
(:class:`~callbridge.media.playout.PlayoutBuffer`) and a sink for what it hears
(:class:`~callbridge.protocols.LegSink`). Rooms are tickers of the media clock; how a room
moves audio depends on how many members it has:

- **Two members: direct.** A frame goes to the other member the moment it arrives (no tick
  wait), as long as the sender is not running ahead of real time: each member keeps a schedule
  of when the audio it has sent ends (played at real time from when each frame left) and may be
  less than ``direct_lead_frames`` frames ahead of it; frames beyond wait in its playout buffer
  and leave on the ticks that bring them within the lead. When the listener is running dry and
  the member has been quiet for two frames, the listener hears silence, so each side keeps a
  steady 50 frames a second; when the member speaks again its schedule starts over, so that
  silence never holds its audio back.
- **Three or more: mixing.** Every tick takes one frame from each member's playout buffer
  (silence on underrun), sums them once and gives each member the sum minus its own part
  (N-1 mix), clipped to int16.
- **One member:** what it says is heard by nobody and dropped; it hears silence, one frame
  per tick, so its call keeps a steady stream.

A room switches mode the moment a member joins or leaves; frames already waiting are carried
over, so no side hears a gap longer than one frame.

A tick that raises is logged (at most once a second) and counted, and the room keeps going;
if every tick fails for :data:`MAX_FAILING_TICKS` in a row, the room ends its legs with the
reason ``room mixer failed`` rather than leaving its calls silent.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.media.analysis import level_dbfs
from callbridge.media.clock import FRAME_SECONDS, MediaClock, Registration
from callbridge.media.playout import PlayoutBuffer
from callbridge.plugin_types import RoomTransportPlugin
from callbridge.protocols import LegSink, Participant, PluginContext, PluginError

LEVEL_STALE_SECONDS = 0.25
"""A member that said nothing for this long has no level (silent)."""
SILENT_DBFS = -100.0
MAX_FAILING_TICKS = 50
"""Consecutive failing ticks (one second) after which a room ends its legs."""
MIXER_FAILED = "room mixer failed"
_EPSILON = 1e-6
_QUIET_SECONDS = 2 * FRAME_SECONDS + _EPSILON
"""How long a member of a two-member room may send nothing before the other hears silence."""
_FILL_SLACK_SECONDS = FRAME_SECONDS / 4
"""How close to running dry a listener may come before it hears silence for a quiet member: the
media clock's own jitter (a tick up to 5 ms late is on time), and no more, so the silence
queued at the listener when the member speaks again is as short as it can be."""

log = structlog.get_logger("callbridge.rooms.local")


class LocalRoomsConfig(BaseModel):
    """Options of the ``local`` room transport."""

    model_config = {"extra": "forbid"}

    sample_rate: Literal[8000, 16000, 24000, 48000] = Field(
        default=16000,
        description="Sample rate of room audio in Hz. 8000 suits rooms of phone calls only "
        "(no resampling on the provider legs); 16000 and up carry wideband members.",
    )
    playout_target_frames: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Frames each member's playout buffer should hold when a tick comes to take "
        "one (1: just that frame); depth that stays above it for a whole window is drained.",
    )
    playout_max_frames: int = Field(
        default=25,
        ge=2,
        le=3000,
        description="Frames a member's playout buffer holds at most (500 ms by default); "
        "beyond, the oldest is dropped.",
    )
    playout_window_frames: int = Field(
        default=10,
        ge=1,
        le=500,
        description="Ticks over which standing delay is judged before it is drained; latency "
        "is back at its baseline within two windows after a burst or a stall.",
    )
    queue_max_frames: int = Field(
        default=3000,
        ge=50,
        le=30000,
        description="Frames (60 s by default) a member that joined with `queue` playout (an "
        "agent sending speech faster than real time) may have waiting; beyond, the oldest is "
        "dropped.",
    )
    direct_lead_frames: int = Field(
        default=1,
        ge=1,
        le=50,
        description="In a two-member room, how far ahead of real time (in frames) a member's "
        "audio may run and still be forwarded the moment it arrives; 1 absorbs up to a frame of "
        "arrival jitter without ever queueing a whole frame at the listener.",
    )


def mix_minus_one(
    inputs: npt.NDArray[np.int16],
    total: npt.NDArray[np.int32],
    work: npt.NDArray[np.int32],
    out: npt.NDArray[np.int16] | None = None,
) -> npt.NDArray[np.int16]:
    """N-1 mix: row ``i`` of the result is the sum of every input row except row ``i``, clipped.

    Args:
        inputs: ``(N, samples)`` int16, one row per participant.
        total: ``(samples,)`` int32 scratch, overwritten.
        work: ``(N, samples)`` int32 scratch, overwritten.
        out: ``(N, samples)`` int16 to write the result into; a new array when ``None``.
    """
    # Plain ufuncs: np.sum and np.clip add several µs of Python overhead per call.
    np.add.reduce(inputs, axis=0, dtype=np.int32, out=total)
    np.subtract(total, inputs, out=work)
    np.minimum(work, 32767, out=work)
    np.maximum(work, -32768, out=work)
    if out is None:
        return work.astype(np.int16)
    np.copyto(out, work, casting="unsafe")
    return out


class LocalLeg:
    """One member of a local room (a :class:`~callbridge.protocols.RoomLeg`)."""

    def __init__(
        self, room: _Room, participant: Participant, sink: LegSink, config: LocalRoomsConfig
    ) -> None:
        self.participant = participant
        self.participant_id = participant.participant_id
        self.sample_rate: int = config.sample_rate
        self.frame_samples = config.sample_rate // 50
        self.sink = sink
        queued = participant.playout == "queue"
        capacity = config.queue_max_frames if queued else config.playout_max_frames
        self.playout = PlayoutBuffer(
            self.frame_samples,
            target=min(config.playout_target_frames, capacity),
            capacity=capacity,
            window=config.playout_window_frames,
            drain=not queued,
        )
        self.closed_reason: str | None = None
        self._room = room
        self._closed = False
        # Direct mode: when the audio this member has sent so far ends, played at real time
        # from when each frame left (its schedule; see _Room._forward), and when its last
        # frame arrived.
        self.due = 0.0
        self.spoke_at = float("-inf")
        # How far ahead of its schedule the member's frames arrived, at least, over the
        # current window of arrivals (see _Room._schedule).
        self.ahead_min = float("inf")
        self.ahead_count = 0
        # The last frame this member said and when: kept (not copied, never changed), so the
        # room can tell members' levels on demand at no per-frame cost.
        self.last_frame: npt.NDArray[np.int16] | None = None
        self.last_frame_at = float("-inf")

    @property
    def closed(self) -> bool:
        """Whether the leg has left (or the transport was closed)."""
        return self._closed

    def participants(self) -> list[str]:
        """Ids of everyone in this leg's room, this leg included, in joining order."""
        return self._room.participant_ids()

    def send_audio(self, frame: npt.NDArray[np.int16]) -> None:
        """Put one 20 ms int16 frame into the room; a no-op after leaving.

        Raises:
            ValueError: the frame is not int16 or not exactly ``sample_rate // 50`` samples.
        """
        if self._closed:
            return
        if frame.dtype != np.int16 or frame.shape != (self.frame_samples,):
            raise ValueError(
                f"expected one 20 ms frame of {self.frame_samples} int16 samples, "
                f"got shape {frame.shape} of {frame.dtype}"
            )
        self._room.audio_from(self, frame)

    def levels(self) -> dict[str, float]:
        """Each member's level now (dBFS of the last frame it said, -100 when it said nothing
        for :data:`LEVEL_STALE_SECONDS`), by participant id, for live level meters."""
        now = self._room.now()
        levels = {}
        for leg in self._room.legs():
            frame = leg.last_frame
            level = SILENT_DBFS
            if frame is not None and now - leg.last_frame_at <= LEVEL_STALE_SECONDS:
                level = max(SILENT_DBFS, level_dbfs(frame))
            levels[leg.participant_id] = round(level, 1)
        return levels

    def others(self) -> list[dict[str, Any]]:
        """A ``participant-joined`` event for each other member now in the room (what a member
        that joined after them needs to show them)."""
        return [_joined_event(leg.participant) for leg in self._room.legs() if leg is not self]

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Deliver a copy of ``event`` to every other member; a no-op after leaving."""
        if not self._closed:
            self._room.event_from(self, dict(event))

    def media_stats(self) -> Mapping[str, int]:
        """This member's playout-buffer counters."""
        return self.playout.stats.as_dict()

    async def leave(self) -> None:
        """Leave the room; idempotent. The sink hears nothing more."""
        if self._closed:
            return
        self._closed = True
        self._room.remove(self)

    def close(self, reason: str | None) -> None:
        """End the leg from the transport's side and tell its sink."""
        if self._closed:
            return
        self._closed = True
        self.closed_reason = reason
        self.playout.clear()
        self.sink.leg_closed(reason)


class _Room:
    """The members of one room; a ticker of the media clock."""

    def __init__(
        self,
        key: tuple[str, str],
        frame_samples: int,
        clock: MediaClock,
        config: LocalRoomsConfig,
        on_empty: Callable[[_Room], None],
    ) -> None:
        self.key = key
        self._frame_samples = frame_samples
        self._clock = clock
        self._config = config
        self._on_empty = on_empty
        self._legs: dict[str, LocalLeg] = {}
        self._order: list[LocalLeg] = []
        self._registration: Registration | None = None
        self._lead_seconds = config.direct_lead_frames * FRAME_SECONDS - _EPSILON
        self._silence = np.zeros(frame_samples, dtype=np.int16)
        self.failed_ticks = 0
        self.sink_failures = 0
        self._failing_in_a_row = 0
        self._last_failure_log = float("-inf")
        self._resize()

    @property
    def mode(self) -> str:
        """``direct`` with two members, ``mixing`` with three or more, else ``idle``."""
        count = len(self._order)
        return "direct" if count == 2 else "mixing" if count > 2 else "idle"

    def participant_ids(self) -> list[str]:
        return list(self._legs)

    def now(self) -> float:
        """The room's time: its media clock's."""
        return self._clock.now()

    def legs(self) -> list[LocalLeg]:
        return list(self._legs.values())

    def member_kinds(self) -> list[str]:
        return [leg.participant.kind for leg in self._legs.values()]

    def add(self, leg: LocalLeg) -> None:
        if leg.participant_id in self._legs:
            raise PluginError(
                f"participant {leg.participant_id!r} is already in room {self.key[1]!r}"
            )
        self.broadcast(_joined_event(leg.participant), sender=None)
        self._legs[leg.participant_id] = leg
        self._resize()
        if self._registration is None:
            self._registration = self._clock.register(self)

    def remove(self, leg: LocalLeg) -> None:
        if self._legs.get(leg.participant_id) is not leg:
            return
        # What it said but nobody heard yet is gone; its marks are still answered.
        leg.playout.clear()
        self._deliver_markers(leg)
        del self._legs[leg.participant_id]
        self._resize()
        self.broadcast({"event": "participant-left", "participantId": leg.participant_id}, None)
        if not self._legs:
            self._on_empty(self)
            self.stop()

    def stop(self, reason: str | None = None) -> None:
        """End every leg (telling their sinks) and leave the clock."""
        legs = list(self._legs.values())
        self._legs.clear()
        self._resize()
        for leg in legs:
            leg.close(reason)
        if self._registration is not None:
            self._registration.cancel()
            self._registration = None

    # ------------------------------------------------------------------ audio

    def audio_from(self, leg: LocalLeg, frame: npt.NDArray[np.int16]) -> None:
        now = self._clock.now()
        leg.last_frame, leg.last_frame_at = frame, now
        order = self._order
        if len(order) == 2:
            if leg.playout.depth == 0:
                if self._schedule(leg, now):
                    leg.playout.passed_through()
                    self._forward(leg, order[1] if order[0] is leg else order[0], frame, now)
                    return
            else:  # its audio is waiting: it runs ahead, and there is no lead to give back
                leg.ahead_count, leg.ahead_min = 0, float("inf")
                leg.spoke_at = now
            leg.playout.push(frame)
        elif len(order) > 2:
            leg.playout.push(frame)
        # Alone in the room: nobody hears it.

    def _schedule(self, leg: LocalLeg, now: float) -> bool:
        """Whether a frame ``leg`` says now, with nothing of its audio waiting, goes straight
        to the listener; brings the leg's schedule to where its frames really arrive.

        The schedule only ever runs ahead of the arrivals: a late frame moves it later and the
        on-time frames after it find it that much ahead. Left alone, that lead would add up
        over a call's hiccups and, once a whole frame, hold every frame until the next tick
        for the rest of the call. So the least lead the arrivals of a window found is given
        back at the window's end: the frames are forwarded as they come, and what the
        listener may still have queued is its own outbound leg's to take back (see
        :class:`~callbridge.media.playout.FarEndPlayout`).
        """
        if now - leg.spoke_at > _QUIET_SECONDS:
            # It speaks again after the room filled its silence: what the listener has queued
            # is that silence, not this member's audio, so its schedule starts over.
            leg.due = now
        leg.spoke_at = now
        ahead = leg.due - now
        if ahead < leg.ahead_min:
            leg.ahead_min = ahead
        leg.ahead_count += 1
        if leg.ahead_count >= self._config.playout_window_frames:
            if leg.ahead_min > 0:
                leg.due -= leg.ahead_min
            leg.ahead_count, leg.ahead_min = 0, float("inf")
        return self._may_forward(leg, now)

    def _may_forward(self, leg: LocalLeg, now: float) -> bool:
        """Whether ``leg`` is less than ``direct_lead_frames`` ahead of real time."""
        ahead = leg.due - now
        return ahead < self._lead_seconds

    def _forward(
        self, leg: LocalLeg, listener: LocalLeg, frame: npt.NDArray[np.int16], now: float
    ) -> None:
        leg.due = (leg.due if leg.due > now else now) + FRAME_SECONDS
        try:
            listener.sink.hear(frame)
        except Exception:
            # The listener's fault must not end the speaker's connection.
            self._sink_failed(listener)

    def on_tick(self, tick: int) -> None:
        """One 20 ms step of the room (called by the media clock)."""
        try:
            for leg in self._order:
                leg.playout.tick()
            if len(self._order) == 2:
                self._direct_tick()
            elif len(self._order) > 2:
                self._mix_tick()
            elif self._order:
                self._order[0].sink.hear(self._silence)
            for leg in self._order:
                self._deliver_markers(leg)
            self._failing_in_a_row = 0
        except Exception:
            if self._tick_failed():
                self._on_empty(self)
                self.stop(MIXER_FAILED)

    def _direct_tick(self) -> None:
        first, second = self._order
        now = self._clock.now()
        self._release_direct(first, second, now)
        self._release_direct(second, first, now)

    def _release_direct(self, leg: LocalLeg, other: LocalLeg, now: float) -> None:
        playout = leg.playout
        while playout.depth and self._may_forward(leg, now):
            frame = playout.pop()
            assert frame is not None
            self._forward(leg, other, frame, now)
        if leg.due - now < _FILL_SLACK_SECONDS and now - leg.spoke_at > _QUIET_SECONDS:
            # The other side is running dry (within the tick's own jitter) and this member
            # has been quiet for two frames (silent, or stalled; not just a late frame): it
            # hears silence.
            playout.note_empty()
            self._forward(leg, other, self._silence, now)

    def _mix_tick(self) -> None:
        legs = self._order
        inputs = self._inputs
        for index, leg in enumerate(legs):
            leg.playout.pop_into(inputs[index])
        mixed = mix_minus_one(inputs, self._total, self._work, self._mixed)
        for index, leg in enumerate(legs):
            leg.sink.hear(mixed[index])

    def _resize(self) -> None:
        previous = len(self._order)
        self._order = list(self._legs.values())
        count = len(self._order)
        if count == 2 and previous != 2:
            now = self._clock.now()
            for leg in self._order:
                leg.due = now
        if count > 2:  # the mixer's scratch arrays; direct and idle rooms need none
            self._inputs = np.zeros((count, self._frame_samples), dtype=np.int16)
            self._total = np.zeros(self._frame_samples, dtype=np.int32)
            self._work = np.zeros((count, self._frame_samples), dtype=np.int32)
            self._mixed = np.zeros((count, self._frame_samples), dtype=np.int16)

    # ------------------------------------------------------------------ events

    def event_from(self, leg: LocalLeg, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "mark" and leg.playout.add_marker(event):
            return
        if kind == "clear":
            leg.playout.clear()
            self._deliver_markers(leg)
        self.broadcast(event, sender=leg)

    def _deliver_markers(self, leg: LocalLeg) -> None:
        for marker in leg.playout.due_markers():
            self.broadcast(marker, sender=leg)

    def broadcast(self, event: dict[str, Any], sender: LocalLeg | None) -> None:
        for leg in self._order:
            if leg is not sender:
                try:
                    leg.sink.notify(copy.deepcopy(event))
                except Exception:
                    self._sink_failed(leg)

    def _sink_failed(self, leg: LocalLeg) -> None:
        """Count and log (at most once a second) a sink that raised outside a tick."""
        self.sink_failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 1.0:
            self._last_failure_log = now
            log.exception(
                "room member's sink failed",
                room_id=self.key[1],
                participant_id=leg.participant_id,
                sink_failures=self.sink_failures,
            )

    def _tick_failed(self) -> bool:
        """Count and log (at most once a second) a failed tick; whether to give up."""
        self.failed_ticks += 1
        self._failing_in_a_row += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 1.0:
            self._last_failure_log = now
            log.exception("room tick failed", room_id=self.key[1], failed_ticks=self.failed_ticks)
        if self._failing_in_a_row < MAX_FAILING_TICKS:
            return False
        log.error("room keeps failing; ending the room", room_id=self.key[1])
        return True


def _joined_event(participant: Participant) -> dict[str, Any]:
    return {
        "event": "participant-joined",
        "participantId": participant.participant_id,
        "kind": participant.kind,
        "displayName": participant.display_name,
        "metadata": dict(participant.metadata),
    }


class LocalRooms:
    """In-process rooms (a :class:`~callbridge.protocols.RoomTransport`), keyed by tenant and id.

    A room is created on its first join and registered with the context's media clock; it
    leaves the clock when its last member leaves.
    """

    name = "local"

    def __init__(self, config: LocalRoomsConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.sample_rate: int = config.sample_rate
        self._frame_samples = config.sample_rate // 50
        self._rooms: dict[tuple[str, str], _Room] = {}
        self._closed = False

    async def start(self) -> None:
        """Nothing to prepare; rooms start on demand."""

    async def aclose(self) -> None:
        """End every room; every leg's sink is told, and hears nothing more."""
        self._closed = True
        rooms = list(self._rooms.values())
        self._rooms.clear()
        for room in rooms:
            room.stop()

    async def join(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> LocalLeg:
        """Join ``room_id`` of ``tenant``, creating the room on first join.

        Raises:
            PluginError: the transport is closed, or ``participant_id`` is already in the room.
        """
        if self._closed:
            raise PluginError("the local room transport is closed")
        key = (tenant, room_id)
        room = self._rooms.get(key)
        if room is None:
            room = _Room(
                key, self._frame_samples, self.context.media_clock, self.config, self._forget
            )
            self._rooms[key] = room
        leg = LocalLeg(room, participant, sink, self.config)
        try:
            room.add(leg)
        except PluginError:
            if not room.participant_ids():
                self._forget(room)
            raise
        return leg

    def rooms(self) -> list[tuple[str, str]]:
        """Keys ``(tenant, room_id)`` of the rooms that currently have participants."""
        return list(self._rooms)

    def members_by_kind(self) -> dict[str, int]:
        """How many members every live room has, by participant kind (for metrics)."""
        counts: dict[str, int] = {}
        for room in self._rooms.values():
            for kind in room.member_kinds():
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def room_mode(self, tenant: str, room_id: str) -> str | None:
        """``direct``, ``mixing`` or ``idle`` for a live room; ``None`` when there is none."""
        room = self._rooms.get((tenant, room_id))
        return None if room is None else room.mode

    def _forget(self, room: _Room) -> None:
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]


@hookimpl
def callbridge_room_transports() -> Iterator[RoomTransportPlugin]:
    """Register the ``local`` room transport."""
    yield RoomTransportPlugin(
        name="local",
        factory=LocalRooms,
        config_model=LocalRoomsConfig,
        description="In-process rooms on the media clock: direct for two, mixed for more",
    )
