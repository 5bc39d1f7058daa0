"""A provider's outbound audio queue: what a simulated caller hears, and when marks are reached."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class PlaybackBuffer:
    """Audio bytes and mark names from the server, played out in arrival order.

    A mark is reached once every byte queued before it has played. With a ``delay``, audio
    becomes playable only ``delay`` seconds (by ``clock``) after it arrived, like a provider's
    jitter buffer; without one the clock is never read.
    """

    def __init__(self, delay: float = 0.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: deque[tuple[float, bytes] | str] = deque()
        self._delay = delay
        self._clock = clock
        self.buffered_bytes = 0
        """Audio queued and not yet played or cleared."""

    def add_audio(self, data: bytes) -> None:
        """Queue ``data`` (nothing when empty)."""
        if data:
            ready = self._clock() + self._delay if self._delay else 0.0
            self._items.append((ready, data))
            self.buffered_bytes += len(data)

    def add_mark(self, name: str) -> bool:
        """Queue a mark; ``True`` when nothing is queued, so it is reached at once."""
        if not self._items:
            return True
        self._items.append(name)
        return False

    def play(self, size: int) -> tuple[bytes, list[str]]:
        """Take up to ``size`` bytes of playable audio; also return the marks reached meanwhile."""
        now = self._clock() if self._delay else 0.0
        played = bytearray()
        reached: list[str] = []
        while self._items and (len(played) < size or isinstance(self._items[0], str)):
            head = self._items.popleft()
            if isinstance(head, str):
                reached.append(head)
                continue
            ready, data = head
            if ready > now:
                self._items.appendleft(head)
                break
            take = size - len(played)
            played += data[:take]
            if len(data) > take:
                self._items.appendleft((ready, data[take:]))
        self.buffered_bytes -= len(played)
        return bytes(played), reached

    def clear(self) -> tuple[int, list[str]]:
        """Drop unplayed audio and marks; return how many bytes were dropped and the marks."""
        dropped = self.buffered_bytes
        marks = [item for item in self._items if isinstance(item, str)]
        self._items.clear()
        self.buffered_bytes = 0
        return dropped, marks
