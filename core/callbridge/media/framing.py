"""Re-chunking audio into whole 20 ms frames, and pacing frames out at real time."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt


class FrameAssembler:
    """Cuts a stream of int16 chunks of any size into frames of ``frame_samples``.

    The remainder smaller than one frame stays in a preallocated buffer until the next push.
    """

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self.frame_samples = frame_samples
        self._buffer = np.zeros(frame_samples, dtype=np.int16)
        self._pending = 0

    @property
    def pending(self) -> int:
        """Samples buffered, waiting to complete a frame."""
        return self._pending

    def push(self, pcm: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
        """Add ``pcm`` and return every frame now complete (zero or more).

        The frames are new arrays, independent of ``pcm`` and of the internal buffer.
        """
        size = self.frame_samples
        held = self._pending
        count = (held + len(pcm)) // size
        if count == 0:
            self._buffer[held : held + len(pcm)] = pcm
            self._pending += len(pcm)
            return []
        used = count * size - held
        block = np.empty(count * size, dtype=np.int16)
        block[:held] = self._buffer[:held]
        block[held:] = pcm[:used]
        rest = len(pcm) - used
        self._buffer[:rest] = pcm[used:]
        self._pending = rest
        return list(block.reshape(count, size))

    def clear(self) -> None:
        """Drop the buffered remainder."""
        self._pending = 0


class ByteFramer:
    """Cuts a stream of encoded bytes into frames of ``frame_bytes``, keeping the remainder."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered, waiting to complete a frame."""
        return len(self._buffer)

    def push(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame now complete (zero or more)."""
        self._buffer += data
        size = self.frame_bytes
        count = len(self._buffer) // size
        if count == 0:
            return []
        view = memoryview(self._buffer)
        frames = [bytes(view[i * size : (i + 1) * size]) for i in range(count)]
        view.release()
        del self._buffer[: count * size]
        return frames

    def clear(self) -> None:
        """Drop the buffered remainder."""
        self._buffer.clear()


_MAX_BEHIND_INTERVALS = 10


class Pacer:
    """Lets frames go out at real time, at most ``lead`` frames ahead of playback.

    Frame ``k`` after the anchor may be sent at ``anchor + (k - lead) * interval``: the first
    ``lead + 1`` frames go at once, then one per interval. Deadlines are absolute (from the
    running loop's clock), so late wake-ups do not accumulate drift. A sender more than ten
    intervals behind its schedule re-anchors instead of bursting to catch up; the receiver's
    buffer has drained by then anyway.
    """

    def __init__(self, interval: float = 0.02, lead: int = 3) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if lead < 0:
            raise ValueError(f"lead must not be negative, got {lead}")
        self.interval = interval
        self.lead = lead
        self._anchor: float | None = None
        self._sent = 0

    async def wait(self) -> None:
        """Return when the next frame may be sent; counts that frame as sent."""
        now = asyncio.get_running_loop().time()
        if self._anchor is None or now - self._deadline() > _MAX_BEHIND_INTERVALS * self.interval:
            self._anchor = now
            self._sent = 0
        deadline = self._deadline()
        if deadline > now:
            await asyncio.sleep(deadline - now)
        self._sent += 1

    def reset(self) -> None:
        """Forget the schedule (after a ``clear``); the next frames go out with a fresh lead."""
        self._anchor = None
        self._sent = 0

    def _deadline(self) -> float:
        assert self._anchor is not None
        return self._anchor + (self._sent - self.lead) * self.interval
