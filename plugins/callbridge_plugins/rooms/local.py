"""The ``local`` room transport: in-process rooms mixed on a 20 ms clock.

Each room runs one mixer task. Every tick it takes at most one frame from each participant's
small inbound buffer (silence if none), sums all of them once, and gives each participant the
sum minus its own contribution (N-1 mix), clipped to int16.

A tick that raises is logged (at most once a second) and counted, and the room keeps mixing;
if every tick fails for :data:`MAX_FAILING_TICKS` in a row, the room ends its legs with the
reason ``room mixer failed`` rather than leaving its calls silent.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.plugin_types import RoomTransportPlugin
from callbridge.protocols import Participant, PluginContext, PluginError

FRAME_SECONDS = 0.02
MAX_FAILING_TICKS = 50
"""Consecutive failing mixer ticks (one second) after which a room ends its legs."""
MIXER_FAILED = "room mixer failed"
_MAX_CATCH_UP_TICKS = 3
# Events are rare; the cap only protects a leg whose owner never reads its events.
_EVENT_BACKLOG = 256

log = structlog.get_logger("callbridge.rooms.local")


class LocalRoomsConfig(BaseModel):
    """Options of the ``local`` room transport."""

    model_config = {"extra": "forbid"}

    sample_rate: Literal[8000, 16000, 24000, 48000] = Field(
        default=16000, description="Sample rate of room audio in Hz."
    )
    jitter_frames: int = Field(
        default=6,
        ge=1,
        le=500,
        description="Inbound 20 ms frames buffered per participant before the oldest is dropped.",
    )
    outbound_frames: int = Field(
        default=50,
        ge=1,
        le=3000,
        description="Mixed 20 ms frames buffered per participant before the oldest is dropped.",
    )


def mix_minus_one(
    inputs: npt.NDArray[np.int16], total: npt.NDArray[np.int32], work: npt.NDArray[np.int32]
) -> npt.NDArray[np.int16]:
    """N-1 mix: row ``i`` of the result is the sum of every input row except row ``i``, clipped.

    Args:
        inputs: ``(N, samples)`` int16, one row per participant.
        total: ``(samples,)`` int32 scratch, overwritten.
        work: ``(N, samples)`` int32 scratch, overwritten.

    Returns:
        A new ``(N, samples)`` int16 array.
    """
    # Plain ufuncs: np.sum and np.clip add several µs of Python overhead per call.
    np.add.reduce(inputs, axis=0, dtype=np.int32, out=total)
    np.subtract(total, inputs, out=work)
    np.minimum(work, 32767, out=work)
    np.maximum(work, -32768, out=work)
    return work.astype(np.int16)


class _FrameRing:
    """A fixed-capacity FIFO of equal-size frames in one preallocated array; full drops oldest."""

    def __init__(self, capacity: int, frame_samples: int) -> None:
        self._frames = np.zeros((capacity, frame_samples), dtype=np.int16)
        self._head = 0
        self._count = 0

    def push(self, frame: npt.NDArray[np.int16]) -> None:
        capacity = len(self._frames)
        self._frames[(self._head + self._count) % capacity] = frame
        if self._count == capacity:
            self._head = (self._head + 1) % capacity
        else:
            self._count += 1

    def pop_into(self, out: npt.NDArray[np.int16]) -> bool:
        if self._count == 0:
            return False
        out[:] = self._frames[self._head]
        self._head = (self._head + 1) % len(self._frames)
        self._count -= 1
        return True

    def clear(self) -> None:
        self._count = 0


class LocalLeg:
    """One participant's connection to a local room (a :class:`~callbridge.protocols.RoomLeg`)."""

    def __init__(self, room: _Room, participant: Participant, config: LocalRoomsConfig) -> None:
        self.participant = participant
        self.participant_id = participant.participant_id
        self.sample_rate: int = config.sample_rate
        self.frame_samples = config.sample_rate * 20 // 1000
        self._room = room
        self._inbound = _FrameRing(config.jitter_frames, self.frame_samples)
        self._outbound: deque[npt.NDArray[np.int16]] = deque(maxlen=config.outbound_frames)
        self._events: deque[dict[str, Any]] = deque(maxlen=_EVENT_BACKLOG)
        self._audio_ready = asyncio.Event()
        self._event_ready = asyncio.Event()
        self._closed = False
        self.closed_reason: str | None = None

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
        self._inbound.push(frame)

    async def receive_audio(self) -> npt.NDArray[np.int16] | None:
        """Next 20 ms frame of the room minus this participant; ``None`` once left."""
        while not self._closed:
            if self._outbound:
                return self._outbound.popleft()
            self._audio_ready.clear()
            await self._audio_ready.wait()
        return None

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """Deliver a copy of ``event`` to every other participant; a no-op after leaving."""
        if not self._closed:
            self._room.broadcast(dict(event), sender=self)

    async def receive_event(self) -> Mapping[str, Any] | None:
        """Next event for this participant; ``None`` once left."""
        while not self._closed:
            if self._events:
                return self._events.popleft()
            self._event_ready.clear()
            await self._event_ready.wait()
        return None

    async def leave(self) -> None:
        """Leave the room; idempotent. Pending and later ``receive_*`` calls return ``None``."""
        if self._closed:
            return
        self._close()
        await self._room.remove(self)

    def _take_inbound(self, out: npt.NDArray[np.int16]) -> None:
        if not self._inbound.pop_into(out):
            out.fill(0)

    def _deliver_audio(self, frame: npt.NDArray[np.int16]) -> None:
        self._outbound.append(frame)
        self._audio_ready.set()

    def _deliver_event(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._event_ready.set()

    def _close(self, reason: str | None = None) -> None:
        if not self._closed:
            self.closed_reason = reason
        self._closed = True
        self._outbound.clear()
        self._events.clear()
        self._inbound.clear()
        self._audio_ready.set()
        self._event_ready.set()


class _Room:
    """The legs of one room and the task mixing them."""

    def __init__(
        self, key: tuple[str, str], frame_samples: int, on_empty: Callable[[_Room], None]
    ) -> None:
        self.key = key
        self._frame_samples = frame_samples
        self._on_empty = on_empty
        self._legs: dict[str, LocalLeg] = {}
        self._task: asyncio.Task[None] | None = None
        self.failed_ticks = 0
        self._failing_in_a_row = 0
        self._last_failure_log = -1.0
        self._resize()

    def participant_ids(self) -> list[str]:
        return list(self._legs)

    def add(self, leg: LocalLeg) -> None:
        if leg.participant_id in self._legs:
            raise PluginError(
                f"participant {leg.participant_id!r} is already in room {self.key[1]!r}"
            )
        joined = _joined_event(leg.participant)
        self.broadcast(joined, sender=None)
        self._legs[leg.participant_id] = leg
        self._resize()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"local-room-mixer:{self.key[1]}")

    async def remove(self, leg: LocalLeg) -> None:
        if self._legs.get(leg.participant_id) is not leg:
            return
        del self._legs[leg.participant_id]
        self._resize()
        self.broadcast({"event": "participant-left", "participantId": leg.participant_id}, None)
        if not self._legs:
            self._on_empty(self)
            await self.stop()

    def broadcast(self, event: dict[str, Any], sender: LocalLeg | None) -> None:
        for leg in self._legs.values():
            if leg is not sender:
                leg._deliver_event(copy.deepcopy(event))

    async def stop(self, reason: str | None = None) -> None:
        for leg in list(self._legs.values()):
            leg._close(reason)
        self._legs.clear()
        self._resize()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # wait() rather than await: the mixer's CancelledError is expected, the caller's is not.
            await asyncio.wait({task})

    def tick(self) -> None:
        """Mix one frame for every leg and queue it on that leg."""
        legs = self._order
        if not legs:
            return
        for leg, row in zip(legs, self._inputs, strict=True):
            leg._take_inbound(row)
        mixed = mix_minus_one(self._inputs, self._total, self._work)
        for leg, row in zip(legs, mixed, strict=True):
            leg._deliver_audio(row)

    def _resize(self) -> None:
        self._order = list(self._legs.values())
        count = len(self._order)
        self._inputs = np.zeros((count, self._frame_samples), dtype=np.int16)
        self._total = np.zeros(self._frame_samples, dtype=np.int32)
        self._work = np.zeros((count, self._frame_samples), dtype=np.int32)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                self.tick()
                self._failing_in_a_row = 0
            except Exception:
                if self._tick_failed(loop.time()):
                    self._on_empty(self)
                    await self.stop(MIXER_FAILED)
                    return
            now = loop.time()
            # After a stall, make up at most a few missed ticks, then carry on from now.
            deadline = max(deadline + FRAME_SECONDS, now - _MAX_CATCH_UP_TICKS * FRAME_SECONDS)
            await asyncio.sleep(max(0.0, deadline - now))

    def _tick_failed(self, now: float) -> bool:
        """Count and log (at most once a second) a failed tick; whether to give up."""
        self.failed_ticks += 1
        self._failing_in_a_row += 1
        if now - self._last_failure_log >= 1.0:
            self._last_failure_log = now
            log.exception(
                "room mixer tick failed", room_id=self.key[1], failed_ticks=self.failed_ticks
            )
        if self._failing_in_a_row < MAX_FAILING_TICKS:
            return False
        log.error("room mixer keeps failing; ending the room", room_id=self.key[1])
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

    A room is created on its first join and dropped, with its mixer task, when its last
    participant leaves.
    """

    name = "local"

    def __init__(self, config: LocalRoomsConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.sample_rate: int = config.sample_rate
        self._frame_samples = config.sample_rate * 20 // 1000
        self._rooms: dict[tuple[str, str], _Room] = {}
        self._closed = False

    async def start(self) -> None:
        """Nothing to prepare; rooms start on demand."""

    async def aclose(self) -> None:
        """Stop every mixer; every leg's ``receive_*`` returns ``None`` from now on."""
        self._closed = True
        rooms = list(self._rooms.values())
        self._rooms.clear()
        for room in rooms:
            await room.stop()

    async def join(self, tenant: str, room_id: str, participant: Participant) -> LocalLeg:
        """Join ``room_id`` of ``tenant``, creating the room on first join.

        Raises:
            PluginError: the transport is closed, or ``participant_id`` is already in the room.
        """
        if self._closed:
            raise PluginError("the local room transport is closed")
        key = (tenant, room_id)
        room = self._rooms.get(key)
        if room is None:
            room = _Room(key, self._frame_samples, self._forget)
            self._rooms[key] = room
        leg = LocalLeg(room, participant, self.config)
        room.add(leg)
        return leg

    def rooms(self) -> list[tuple[str, str]]:
        """Keys ``(tenant, room_id)`` of the rooms that currently have participants."""
        return list(self._rooms)

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
        description="In-process rooms mixed on a 20 ms clock",
    )
