"""The ``memory`` ref store: single-process, single-use refs with an injected clock."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.plugin_types import RefStorePlugin
from callbridge.protocols import PluginContext, RefRecord

REF_BYTES = 24  # 192 bits


class MemoryRefStoreConfig(BaseModel):
    """Options of the ``memory`` ref store."""

    model_config = {"extra": "forbid"}

    max_refs: int = Field(
        100_000, gt=0, description="Outstanding refs kept at most; expired ones are swept first."
    )


@dataclass(slots=True)
class _Entry:
    record: RefRecord
    expires_at: float
    idempotency_key: str


class MemoryRefStore:
    """Refs held in this process only; use the ``redis`` store when replicas share calls."""

    name = "memory"

    def __init__(self, config: MemoryRefStoreConfig, context: PluginContext) -> None:
        self._config = config
        self._clock = context.clock
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}
        # Claims never await while holding state, so the lock only guards issue/claim ordering
        # should a future change add an await between check and delete.
        self._lock = asyncio.Lock()

    async def issue(self, record: RefRecord, ttl_seconds: float, idempotency_key: str) -> str:
        async with self._lock:
            now = self._clock()
            existing = self._by_key.get(idempotency_key)
            if existing is not None:
                entry = self._entries.get(existing)
                if entry is not None and entry.expires_at > now:
                    return existing
            if len(self._entries) >= self._config.max_refs:
                self._sweep(now)
            if len(self._entries) >= self._config.max_refs:
                raise RuntimeError("too many outstanding call refs")
            ref = secrets.token_urlsafe(REF_BYTES)
            self._entries[ref] = _Entry(record, now + ttl_seconds, idempotency_key)
            self._by_key[idempotency_key] = ref
            return ref

    async def claim(self, ref: str) -> RefRecord | None:
        async with self._lock:
            entry = self._entries.pop(ref, None)
            if entry is None:
                return None
            if self._by_key.get(entry.idempotency_key) == ref:
                del self._by_key[entry.idempotency_key]
            if entry.expires_at <= self._clock():
                return None
            return entry.record

    async def aclose(self) -> None:
        self._entries.clear()
        self._by_key.clear()

    def _sweep(self, now: float) -> None:
        for ref in [r for r, e in self._entries.items() if e.expires_at <= now]:
            entry = self._entries.pop(ref)
            if self._by_key.get(entry.idempotency_key) == ref:
                del self._by_key[entry.idempotency_key]


@hookimpl
def callbridge_ref_stores():  # type: ignore[no-untyped-def]
    yield RefStorePlugin(
        name="memory",
        factory=MemoryRefStore,
        config_model=MemoryRefStoreConfig,
        description="In-process single-use refs (one replica)",
    )
