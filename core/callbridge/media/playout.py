"""The adaptive playout buffer in front of every inbound leg of a room.

A source (a caller's provider socket, a participant, later an agent, RTP or WebRTC) pushes
20 ms frames whenever they arrive; the room takes them out on the media clock. The buffer keeps
latency small and bounded:

- **Target depth.** ``target`` is how many frames should be waiting when a tick comes to take
  one: the default, 1, is just the frame it takes, so nothing stands behind it. Over every
  window of ``window`` ticks the buffer notes the smallest depth it had when the tick came; a
  depth that never fell to ``target`` during a whole window is standing delay (a burst, a
  stall that released a backlog, a source whose clock runs fast), and the oldest excess frames
  are dropped (counted as ``drained``). Latency is back at its baseline within two windows
  (400 ms with the local rooms' default window of 10 ticks). Arrival jitter, which lets the
  buffer run dry now and then, is never drained.
- **Underrun** plays silence, never a repeated frame; each time the buffer runs dry while
  audio was flowing counts one ``underrun``.
- **Capacity** bounds memory: pushing into a full buffer drops the oldest frame
  (``overflowed``).
- **Markers** (a participant's ``mark``) travel with the audio: a marker pushed after frame
  *n* is due once frame *n* has left the buffer, played or dropped.

Frames live in one ring array, allocated on the first push with room for a few frames,
doubled (up to ``capacity``) only when a burst needs it and released at the end of a window
that leaves it empty, so a call whose frames rarely wait holds kilobytes, not ``capacity``
frames. :meth:`push` copies the frame in, so the caller's array is free again as soon as it
returns.

:class:`FarEndPlayout` does the same for the other end of an outbound leg: it models a phone
network's playout queue from the send times and skips frames that would only keep a queue
standing there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]
_FRAME_SECONDS = 0.02
_FIRST_ROWS = 4
"""Frames the ring holds when first allocated (it doubles, up to the capacity, when full)."""


@dataclass
class PlayoutStats:
    """Counters of one playout buffer.

    Attributes:
        frames_in: frames pushed.
        frames_out: frames taken out to be heard.
        drained: frames dropped to bring standing delay back to the target depth.
        overflowed: frames dropped because the buffer was full.
        underruns: times the buffer ran dry while audio was flowing (silence was played).
        max_depth: the deepest the buffer has been, in frames.
    """

    frames_in: int = 0
    frames_out: int = 0
    drained: int = 0
    overflowed: int = 0
    underruns: int = 0
    max_depth: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "drained": self.drained,
            "overflowed": self.overflowed,
            "underruns": self.underruns,
            "max_depth": self.max_depth,
        }


class PlayoutBuffer:
    """A bounded FIFO of equal-size int16 frames with drain-to-target (module docstring).

    Args:
        frame_samples: samples per frame.
        target: frames that should be waiting when a tick comes to take one (at least 1).
        capacity: most frames held; a push beyond drops the oldest.
        window: ticks over which standing depth is judged before draining.
        drain: drain standing delay; ``False`` makes a plain real-time queue (a source that
            sends faster than real time on purpose), bounded by ``capacity``.
    """

    def __init__(
        self,
        frame_samples: int,
        *,
        target: int = 1,
        capacity: int = 50,
        window: int = 15,
        drain: bool = True,
    ) -> None:
        if frame_samples <= 0 or capacity <= 0 or window <= 0 or not 1 <= target <= capacity:
            raise ValueError(
                "need frame_samples > 0, capacity > 0, window > 0 and 1 <= target <= capacity"
            )
        self.frame_samples = frame_samples
        self.target = target
        self.window = window
        self.drain = drain
        self.stats = PlayoutStats()
        self._capacity = capacity
        # Allocated on the first push (in a two-member room most frames never wait), grown
        # when full; _rows is its length.
        self._frames: npt.NDArray[np.int16] | None = None
        self._rows = 0
        self._head = 0
        self._depth = 0
        self._pushed = 0  # frames ever pushed
        self._left = 0  # frames ever taken out or dropped
        self._markers: deque[tuple[int, Any]] = deque()
        self._window_ticks = 0
        self._window_min = capacity
        self._flowing = False

    @property
    def depth(self) -> int:
        """Frames waiting."""
        return self._depth

    @property
    def capacity(self) -> int:
        return self._capacity

    def push(self, frame: Pcm) -> None:
        """Copy one frame in; a full buffer drops its oldest frame first."""
        frames = self._frames
        if frames is None or self._depth == self._rows:
            if self._rows < self._capacity:
                frames = self._grow()
            else:
                self._drop(1)
                self.stats.overflowed += 1
        assert frames is not None
        frames[(self._head + self._depth) % self._rows] = frame
        self._depth += 1
        self._pushed += 1
        self.stats.frames_in += 1
        if self._depth > self.stats.max_depth:
            self.stats.max_depth = self._depth

    def _grow(self) -> Pcm:
        """A ring twice as long (a few frames at first, at most the capacity), with the
        waiting frames moved to its start in order."""
        rows = min(self._capacity, max(_FIRST_ROWS, 2 * self._rows))
        grown = np.zeros((rows, self.frame_samples), dtype=np.int16)
        frames, head, depth = self._frames, self._head, self._depth
        if frames is not None and depth:
            first = min(depth, self._rows - head)
            grown[:first] = frames[head : head + first]
            grown[first:depth] = frames[: depth - first]
        self._frames, self._rows, self._head = grown, rows, 0
        return grown

    def passed_through(self) -> None:
        """Count a frame that went straight through (forwarded on arrival, never buffered)."""
        self._pushed += 1
        self._left += 1
        self.stats.frames_in += 1
        self.stats.frames_out += 1
        self._flowing = True

    def pop(self) -> Pcm | None:
        """The oldest frame, or ``None`` when empty (an underrun if audio was flowing).

        The returned row is a view into the buffer: use it before the next :meth:`push`.
        """
        if self._depth == 0:
            self.note_empty()
            return None
        assert self._frames is not None  # frames were pushed
        frame: Pcm = self._frames[self._head]
        self._head = (self._head + 1) % self._rows
        self._depth -= 1
        self._left += 1
        self.stats.frames_out += 1
        self._flowing = True
        return frame

    def pop_into(self, out: Pcm) -> bool:
        """Copy the oldest frame into ``out``; on underrun fill ``out`` with silence."""
        frame = self.pop()
        if frame is None:
            out.fill(0)
            return False
        out[:] = frame
        return True

    def note_empty(self) -> None:
        """A tick found nothing to play: count an underrun if audio was flowing until now."""
        if self._flowing:
            self._flowing = False
            self.stats.underruns += 1

    def tick(self) -> None:
        """Call once per tick, before the tick takes its frames: notes the depth a tick found,
        and at the end of each window drains what never fell to the target."""
        if self._depth < self._window_min:
            self._window_min = self._depth
        self._window_ticks += 1
        if self._window_ticks < self.window:
            return
        if self.drain:
            excess = self._window_min - self.target
            if excess > 0:
                self._drop(excess)
                self.stats.drained += excess
        if self._depth == 0 and self._rows > _FIRST_ROWS:
            # A burst grew the ring and has passed: give the memory back.
            self._frames, self._rows, self._head = None, 0, 0
        self._window_ticks = 0
        self._window_min = self._capacity

    def clear(self) -> int:
        """Drop every waiting frame (a ``clear``); returns how many. Markers become due."""
        dropped = self._depth
        self._drop(dropped)
        return dropped

    def add_marker(self, marker: Any) -> bool:
        """Hold ``marker`` until the frames pushed before it have left; ``False`` (not held)
        when nothing is waiting, so the caller delivers it now."""
        if self._depth == 0 and not self._markers:
            return False
        self._markers.append((self._pushed, marker))
        return True

    def due_markers(self) -> list[Any]:
        """Markers whose preceding frames have all left, in order (removed from the buffer)."""
        markers = self._markers
        if not markers or markers[0][0] > self._left:
            return []
        due = []
        while markers and markers[0][0] <= self._left:
            due.append(markers.popleft()[1])
        return due

    def _drop(self, count: int) -> None:
        count = min(count, self._depth)
        if count:
            self._head = (self._head + count) % self._rows
        self._depth -= count
        self._left += count


QUIET_PEAK = 64
"""Largest sample magnitude of a frame that may be skipped to take back part of a frame of
standing delay (about -54 dBFS: silence, a filter's tail, line noise)."""
REPHASE_SECONDS = 0.01
"""Standing delay (half a frame) from which a quiet frame is skipped rather than queued."""


class FarEndPlayout:
    """A model of the far end's playout queue, so a sender never leaves lasting delay there.

    A phone network plays the frames it receives back to back at real time: frame *k* plays at
    ``max(its arrival, the end of frame k-1)``. Whenever frames reach it faster than that (a
    burst after a stall of the event loop, catch-up ticks, a source that ran ahead), the
    surplus becomes a queue that a plain forwarder never takes back. This model tracks, from
    the send times, how deep that queue is; when it has stood a whole frame or more above
    the frame being played for an entire window, :meth:`admit` refuses as many frames as the
    surplus, and the far end's delay is back to its baseline.

    Less than a frame can stand there too, for good: a stream whose frames change phase (a
    source that resumes after the room filled its silence, one late frame followed by
    on-time ones) keeps part of a frame queued ahead of everything that follows. Dropping a
    whole frame for it would cut audio, so only a *quiet* frame (every sample within
    ±:data:`QUIET_PEAK`, about -54 dBFS) is skipped while at least :data:`REPHASE_SECONDS`
    stand ahead of it: the far end plays its own silence for the rest of that frame's time
    instead, and the stream is back in phase with what it carries.

    Args:
        window: sends over which the standing queue is judged.
    """

    __slots__ = (
        "_ends_at",
        "_sends",
        "_skip",
        "_window",
        "_window_min",
        "dropped",
        "quiet_skipped",
    )

    def __init__(self, window: int = 15) -> None:
        self._ends_at = 0.0
        self._window = window
        self._sends = 0
        self._window_min = float("inf")
        self._skip = 0
        self.dropped = 0
        """Frames not sent to shorten the far end's queue (quiet ones included)."""
        self.quiet_skipped = 0
        """Of those, quiet frames skipped to take back less than a frame of standing delay."""

    def admit(self, now: float, frame: Pcm | None = None) -> bool:
        """Whether a frame leaving at ``now`` (seconds, monotonic) should be sent.

        Args:
            now: the send time.
            frame: the frame itself, when it may be skipped for being quiet (see the class);
                its samples are read only while half a frame or more stands ahead of it.
        """
        if self._skip:
            self._skip -= 1
            self.dropped += 1
            return False
        ends_at = self._ends_at
        start = ends_at if ends_at > now else now
        standing = start - now  # what is still queued ahead of this frame
        if (
            standing >= REPHASE_SECONDS
            and frame is not None
            and frame.max() <= QUIET_PEAK
            and frame.min() >= -QUIET_PEAK
        ):
            self.dropped += 1
            self.quiet_skipped += 1
            return False
        self._ends_at = start + _FRAME_SECONDS
        if standing < self._window_min:
            self._window_min = standing
        self._sends += 1
        if self._sends >= self._window:
            self._skip = int(self._window_min / _FRAME_SECONDS + 1e-6)
            self._sends = 0
            self._window_min = float("inf")
        return True

    def reset(self) -> None:
        """The far end dropped its queue (a ``clear``)."""
        self._ends_at = 0.0
        self._skip = 0
        self._sends = 0
        self._window_min = float("inf")
