"""How the caller's frames arrived: lost, reordered, duplicate and late frames, and jitter.

:class:`FrameArrivals` is told of every caller frame where it comes off the wire, with the
provider's media counter (Twilio and Plivo ``media.chunk``, Telnyx ``media.chunk``) when the
protocol has one, and the monotonic time it arrived. The definitions:

- **lost**: sequence numbers skipped and never filled in later. A gap counts at once and a
  frame that fills it later takes it back (it is *reordered*, not lost). Lost frames at the
  very end of a stream cannot be seen.
- **reordered**: frames that arrived after a frame with a higher sequence number.
- **duplicates**: a sequence number that had already arrived. Whether a number arrived is
  remembered for the last :data:`WINDOW` numbers; an older one (more than 1.28 s behind) can
  no longer be told from a duplicate and is counted as reordered (a gap it filled stays lost).
- **late**: frames that arrived more than :data:`LATE_SECONDS` behind the stream's best-case
  schedule. Frame *n* (its sequence number, else its place among the arrivals) has the
  *transit* ``now - n * 20 ms``; the best case, the *base*, is the lowest transit seen, so a
  frame is late when its transit exceeds the base by more than 40 ms: after a stall, the frames
  that waited; in a burst, the first ones. The base may creep up by :data:`DRIFT_ALLOWANCE`
  of 20 ms per frame (10 µs), so a provider whose clock runs slower than ours (a few hundred
  ppm) never makes every frame of a long call late; a lasting rise in network delay stops
  counting as late after that creep has caught up with it (100 s for 50 ms).
- **jitter**: RFC 3550's running estimate of the variation of the transit between consecutive
  arrivals, ``J += (|D| - J) / 16`` with ``D`` the difference of two transits, in seconds.

Duplicates are left out of the lateness and the jitter. A jump of more than :data:`MAX_JUMP`
numbers either way (a minute of frames) is a restarted or garbled counter, not loss: counting
starts over from that frame, so no figure can grow by more than that per frame. A stream
without sequence numbers
(the custom protocol, whose frames come in order over one socket) has no lost, reordered or
duplicate frames to count, and its lateness uses the arrival count, so it assumes none were
lost. A stream gives sequence numbers for all its frames or for none.

Observing a frame allocates nothing: a few integer and float updates on slots.
"""

from __future__ import annotations

from callbridge.media.clock import FRAME_SECONDS

LATE_SECONDS = 0.040
"""How far behind the best-case schedule a frame may arrive before it counts as late."""
DRIFT_ALLOWANCE = 500e-6
"""How fast (a fraction of the frame spacing, per frame) the best case may creep up."""
WINDOW = 64
"""How many sequence numbers below the highest one are remembered (duplicates)."""
MAX_JUMP = 3000
"""The largest jump of sequence numbers taken as a gap; a larger one restarts the count."""
_WINDOW_MASK = (1 << WINDOW) - 1


class FrameArrivals:
    """Counts lost, reordered, duplicate and late frames of one stream and its jitter (module
    docstring); :meth:`observe` each frame as it arrives.

    Args:
        frame_seconds: the frames' spacing.
        late_seconds: how far behind the best case a late frame is.
        drift_allowance: the creep of the best case per frame, as a fraction of the spacing.
    """

    __slots__ = (
        "_base",
        "_creep",
        "_first",
        "_frame_seconds",
        "_highest",
        "_last_transit",
        "_late_seconds",
        "_origin",
        "_seen",
        "duplicates",
        "frames",
        "jitter",
        "late",
        "lost",
        "reordered",
    )

    def __init__(
        self,
        frame_seconds: float = FRAME_SECONDS,
        late_seconds: float = LATE_SECONDS,
        drift_allowance: float = DRIFT_ALLOWANCE,
    ) -> None:
        self.frames = 0
        """Frames observed, duplicates included."""
        self.lost = 0
        """Sequence numbers skipped and not filled in (so far)."""
        self.reordered = 0
        """Frames that arrived after a frame with a higher sequence number."""
        self.duplicates = 0
        """Frames whose sequence number had already arrived."""
        self.late = 0
        """Frames that arrived more than ``late_seconds`` behind the best-case schedule."""
        self.jitter = 0.0
        """RFC 3550 inter-arrival jitter, in seconds."""
        self._frame_seconds = frame_seconds
        self._late_seconds = late_seconds
        self._creep = frame_seconds * drift_allowance
        self._highest = -1  # the highest sequence number seen; -1 before the first
        self._first = 0  # the lowest: the numbers between it and the highest can be lost
        self._origin = 0  # the number the schedule counts from (kept small for float precision)
        self._seen = 0  # bit k: sequence number highest - k has arrived
        self._base = 0.0
        self._last_transit = 0.0

    def observe(self, sequence: int | None, now: float) -> None:
        """Count one frame numbered ``sequence`` (``None``: the stream has no numbers) that
        arrived at ``now`` (monotonic seconds)."""
        self.frames += 1
        restart = self.frames == 1
        if sequence is None:
            sequence = self.frames - 1
        else:
            highest = self._highest
            if highest < 0 or abs(sequence - highest) > MAX_JUMP:
                restart = True
                self._seen = 1
                self._first = self._highest = self._origin = sequence
            elif sequence > highest:
                self.lost += sequence - highest - 1
                shift = sequence - highest
                self._seen = ((self._seen << shift) | 1) & _WINDOW_MASK if shift < WINDOW else 1
                self._highest = sequence
            elif highest - sequence < WINDOW:
                bit = 1 << (highest - sequence)
                if self._seen & bit:
                    self.duplicates += 1
                    return
                self._seen |= bit
                self.reordered += 1
                if sequence > self._first:
                    self.lost -= 1  # it fills a gap counted as lost
                else:  # it comes before the stream's first frame: the numbers between may be lost
                    self.lost += self._first - sequence - 1
                    self._first = sequence
            else:
                self.reordered += 1
        transit = now - (sequence - self._origin) * self._frame_seconds
        if restart:
            self._base = transit
        else:
            self.jitter += (abs(transit - self._last_transit) - self.jitter) / 16
            base = self._base + self._creep
            if transit < base:
                base = transit
            elif transit - base > self._late_seconds:
                self.late += 1
            self._base = base
        self._last_transit = transit
