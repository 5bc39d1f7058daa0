"""An in-memory :class:`callbridge.protocols.KeyStore` for tests: one dict, shared by the
signers started on it as replicas share the store."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable


class MemoryKeyStore:
    """Keys by name; ``creations`` counts how often each name's ``create`` was called."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys: dict[str, str] = dict(keys or {})
        self.creations: Counter[str] = Counter()
        self._lock = asyncio.Lock()

    async def get_or_create(self, name: str, create: Callable[[], str]) -> str:
        async with self._lock:
            if name not in self.keys:
                self.keys[name] = create()
                self.creations[name] += 1
            return self.keys[name]
