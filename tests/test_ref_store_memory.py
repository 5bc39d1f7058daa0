"""The ``memory`` ref store's own limits: a timer drops expired refs, and a full store refuses
new refs with a clear error instead of growing without bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callbridge.protocols import PluginContext, RefRecord, RefStoreFull
from callbridge_plugins.refstores.memory import MemoryRefStore, MemoryRefStoreConfig
from tests.servers import FakeClock


def record(n: int) -> RefRecord:
    return RefRecord(
        call_id=f"call_{n}",
        apikey="ak",
        connector_id="cn_1",
        provider="twilio",
        provider_call_id=f"CA{n}",
        room_id="room",
    )


def store(tmp_path: Path, clock: FakeClock, **config: object) -> MemoryRefStore:
    context = PluginContext(
        data_dir=tmp_path, clock=clock, public_api_url="http://x", public_ingest_url="ws://x"
    )
    return MemoryRefStore(MemoryRefStoreConfig(**config), context)


async def test_a_timer_drops_expired_refs(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    refs = store(tmp_path, clock, sweep_interval_seconds=0.05)
    await refs.start()
    try:
        for n in range(10):
            await refs.issue(record(n), 90, f"k{n}")
        clock.advance(60)
        kept = await refs.issue(record(99), 90, "k99")
        await asyncio.sleep(0.2)
        assert len(refs) == 11, "nothing has expired yet"
        clock.advance(31)
        await asyncio.sleep(0.2)
        assert len(refs) == 1, "the timer dropped the ten expired refs"
        assert await refs.claim(kept, "twilio") == record(99)
    finally:
        await refs.aclose()


async def test_a_full_store_refuses_with_a_clear_error(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    refs = store(tmp_path, clock, max_refs=3, sweep_interval_seconds=3600)
    for n in range(3):
        await refs.issue(record(n), 90, f"k{n}")
    with pytest.raises(RefStoreFull, match="3 calls are waiting for their media socket"):
        await refs.issue(record(3), 90, "k3")
    assert len(refs) == 3
    # A retry of a call that already holds a ref is still answered.
    assert await refs.find("k1") is not None
    assert await refs.issue(record(1), 90, "k1") == (await refs.find("k1") or ("",))[0]
    clock.advance(91)
    await refs.issue(record(4), 90, "k4")  # expired refs are swept to make room
    assert len(refs) == 1
    await refs.aclose()
