"""Restoring the order of frames a provider may deliver out of order (Telnyx)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """Releases items in sequence-number order, waiting at most ``depth`` items for a gap.

    Each :meth:`push` returns the items it made releasable, in order (often just the pushed
    one). When a sequence number is missing, later items are held; once ``depth`` of them are
    waiting, the gap is given up on and counted in :attr:`missing`. Items older than the last
    released one, and duplicates of held ones, are dropped and counted in :attr:`dropped`.

    The starting point is not assumed: the first ``depth`` items are held, and release begins
    at the lowest of them, so a swapped first pair is restored too. A stream shorter than that
    is released by :meth:`flush`.

    Example (depth 4, frame 5 lost, frame 2 late)::

        push(1) -> []  push(3) -> []  push(2) -> []  push(4) -> [1, 2, 3, 4]
        push(6) -> []  push(7) -> []  push(8) -> []  push(9) -> [6, 7, 8, 9]   (5 missing)
    """

    def __init__(self, depth: int = 4) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.dropped = 0
        self.missing = 0
        self._held: dict[int, T] = {}
        self._next: int | None = None

    @property
    def pending(self) -> int:
        """Items held, waiting for an earlier sequence number."""
        return len(self._held)

    def push(self, seq: int, item: T) -> list[T]:
        """Add ``item`` numbered ``seq``; return the items now released, in order."""
        if (self._next is not None and seq < self._next) or seq in self._held:
            self.dropped += 1
            return []
        self._held[seq] = item
        return self._release()

    def flush(self) -> list[T]:
        """Release everything held, in order, gaps and all (at the end of a stream)."""
        if not self._held:
            return []
        order = sorted(self._held)
        first = order[0] if self._next is None else self._next
        self.missing += order[-1] - first + 1 - len(order)
        released = [self._held[seq] for seq in order]
        self._held.clear()
        self._next = order[-1] + 1
        return released

    def _release(self) -> list[T]:
        held = self._held
        if self._next is None:
            if len(held) < self.depth:
                return []
            self._next = min(held)
        released: list[T] = []
        next_seq = self._next
        while True:
            while next_seq in held:
                released.append(held.pop(next_seq))
                next_seq += 1
            if len(held) < self.depth:
                break
            lowest = min(held)
            self.missing += lowest - next_seq
            next_seq = lowest
        self._next = next_seq
        return released
