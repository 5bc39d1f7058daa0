"""A room member's sink that records what it hears, for tests of rooms and bridges."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np


class RecordingSink:
    """A :class:`~callbridge.protocols.LegSink` keeping copies of every frame and event."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.events: list[dict[str, Any]] = []
        self.closed_reason: str | None = None
        self.closed = False
        self._changed = asyncio.Event()

    def hear(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())
        self._changed.set()

    def notify(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))
        self._changed.set()

    def leg_closed(self, reason: str | None) -> None:
        self.closed = True
        self.closed_reason = reason
        self._changed.set()

    def audio(self) -> np.ndarray:
        """Everything heard so far, as one array."""
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.frames)

    async def wait_until(self, condition: Any) -> None:
        async with asyncio.timeout(2):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def next_event(self, name: str | None = None) -> dict[str, Any]:
        """The first event not taken yet (named ``name`` when given); earlier ones are skipped."""
        async with asyncio.timeout(2):
            while True:
                while self.events:
                    event = self.events.pop(0)
                    if name is None or event.get("event") == name:
                        return event
                self._changed.clear()
                await self._changed.wait()
