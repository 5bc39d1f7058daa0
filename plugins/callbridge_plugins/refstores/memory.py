"""The ``memory`` ref store: single-process, single-use refs with an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

import structlog
from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.plugin_types import RefStorePlugin
from callbridge.protocols import PluginContext, RefRecord, RefStoreFull

REF_BYTES = 24  # 192 bits

log = structlog.get_logger("callbridge.refstores.memory")


class MemoryRefStoreConfig(BaseModel):
    """Options of the ``memory`` ref store."""

    model_config = {"extra": "forbid"}

    max_refs: int = Field(
        100_000,
        gt=0,
        description="Outstanding refs kept at most; when full, expired refs are swept at once "
        "and, if still full, new calls are answered 503 until refs are claimed or expire.",
    )
    sweep_interval_seconds: float = Field(
        10.0, gt=0, le=3600, description="How often expired refs are dropped."
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
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Start the timer that drops expired refs."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-ref-sweeper")

    # Nothing below awaits between reading and changing the dicts, so every method is atomic
    # on the event loop without a lock.

    async def issue(self, record: RefRecord, ttl_seconds: float, idempotency_key: str) -> str:
        now = self._clock()
        found = self._live(idempotency_key, now)
        if found is not None:
            return found[0]
        if len(self._entries) >= self._config.max_refs:
            self.sweep()
        if len(self._entries) >= self._config.max_refs:
            raise RefStoreFull(
                f"{self._config.max_refs} calls are waiting for their media socket "
                "(refs.config.memory.max_refs); try again later"
            )
        ref = secrets.token_urlsafe(REF_BYTES)
        self._entries[ref] = _Entry(record, now + ttl_seconds, idempotency_key)
        self._by_key[idempotency_key] = ref
        return ref

    async def find(self, idempotency_key: str) -> tuple[str, RefRecord] | None:
        return self._live(idempotency_key, self._clock())

    async def claim(self, ref: str, provider: str) -> RefRecord | None:
        entry = self._entries.get(ref)
        if entry is None or entry.record.provider != provider:
            return None
        self._drop(ref, entry)
        if entry.expires_at <= self._clock():
            return None
        return entry.record

    async def aclose(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._entries.clear()
        self._by_key.clear()

    def sweep(self) -> int:
        """Drop every expired ref now; returns how many."""
        now = self._clock()
        expired = [(ref, entry) for ref, entry in self._entries.items() if entry.expires_at <= now]
        for ref, entry in expired:
            self._drop(ref, entry)
        return len(expired)

    def _live(self, idempotency_key: str, now: float) -> tuple[str, RefRecord] | None:
        ref = self._by_key.get(idempotency_key)
        entry = self._entries.get(ref) if ref is not None else None
        if ref is None or entry is None or entry.expires_at <= now:
            return None
        return ref, entry.record

    def _drop(self, ref: str, entry: _Entry) -> None:
        del self._entries[ref]
        if self._by_key.get(entry.idempotency_key) == ref:
            del self._by_key[entry.idempotency_key]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval_seconds)
            try:
                swept = self.sweep()
            except Exception:  # a sweep must never stop the timer
                log.exception("ref sweep failed")
                continue
            if swept:
                log.debug("expired refs dropped", count=swept, outstanding=len(self._entries))


@hookimpl
def callbridge_ref_stores():  # type: ignore[no-untyped-def]
    yield RefStorePlugin(
        name="memory",
        factory=MemoryRefStore,
        config_model=MemoryRefStoreConfig,
        description="In-process single-use refs (one replica)",
    )
