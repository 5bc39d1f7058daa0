"""The ``redis`` ref store against the local Redis: refs shared by replicas, claimed once,
stored with a versioned schema and reclaimed by Redis after they expire."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from callbridge.protocols import CodecSpec, PluginContext, RefRecord, RefStoreFull, StreamOptions
from callbridge_plugins.refstores.redis import RedisRefStore, RedisRefStoreConfig
from tests.servers import FakeClock
from tests.services import redis_url

pytestmark = pytest.mark.services


def full_record(call_id: str = "call_1") -> RefRecord:
    return RefRecord(
        call_id=call_id,
        apikey="ak_one",
        connector_id="cn_1",
        provider="telnyx",
        provider_call_id="v3:abc",
        room_id="room-1",
        transport="agents",
        options=StreamOptions(CodecSpec("L16", 16000), "start"),
        account_id="acc",
        from_number="+14155550100",
        to_number="+14155550199",
        verify_signatures=True,
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        metadata={"team": "blue"},
        region="eu",
        ingest_url="wss://eu.example.com/ingest",
    )


def replica(tmp_path: Path, url: str, prefix: str, clock: FakeClock) -> RedisRefStore:
    context = PluginContext(
        data_dir=tmp_path, clock=clock, public_api_url="http://x", public_ingest_url="ws://x"
    )
    return RedisRefStore(RedisRefStoreConfig(url=url, key_prefix=prefix), context)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    url = await redis_url()
    prefix = f"cb-test:{secrets.token_hex(6)}:"
    yield prefix
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_replicas_share_refs_and_a_raced_ref_is_claimed_once(
    tmp_path: Path, prefix: str
) -> None:
    url, clock = await redis_url(), FakeClock(1_000_000.0)
    replicas = [replica(tmp_path, url, prefix, clock) for _ in range(3)]
    for store in replicas:
        await store.start()
    try:
        ref = await replicas[0].issue(full_record(), 90, "cn_1:v3:abc")
        assert await replicas[1].issue(full_record(), 90, "cn_1:v3:abc") == ref, "a retry"
        assert await replicas[2].find("cn_1:v3:abc") == (ref, full_record())
        claims = await asyncio.gather(*(replicas[n % 3].claim(ref, "telnyx") for n in range(50)))
        won = [record for record in claims if record is not None]
        assert won == [full_record()], "every field survives, and exactly one claim wins"
    finally:
        for store in replicas:
            await store.aclose()


@pytest.fixture
async def store_and_redis(
    tmp_path: Path, prefix: str
) -> AsyncIterator[tuple[RedisRefStore, Redis]]:
    """One started store and a plain client to look at what it wrote."""
    url = await redis_url()
    store = replica(tmp_path, url, prefix, FakeClock(1_000_000.0))
    await store.start()
    client = Redis.from_url(url)
    try:
        yield store, client
    finally:
        await client.aclose()
        await store.aclose()


async def test_redis_reclaims_a_record_after_its_ref_expires(
    store_and_redis: tuple[RedisRefStore, Redis], prefix: str
) -> None:
    store, client = store_and_redis
    ref = await store.issue(full_record(), 90, "cn_1:v3:abc")
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    assert len(keys) == 2
    for key in keys:
        assert 90_000 < await client.pttl(key) <= 120_000
    assert ref.encode() not in b"".join(keys), "the ref itself is not a key name"


async def test_a_record_of_another_schema_version_is_refused(
    store_and_redis: tuple[RedisRefStore, Redis], prefix: str
) -> None:
    store, client = store_and_redis
    ref = await store.issue(full_record(), 90, "cn_1:v3:abc")
    (hash_key,) = [key async for key in client.scan_iter(match=prefix + "ref:*")]
    await client.hset(hash_key, "record", b'{"v":2,"record":{"call_id":"x"}}')
    assert await store.find("cn_1:v3:abc") is None
    assert await store.claim(ref, "telnyx") is None


async def test_an_unreachable_redis_refuses_new_calls_and_claims_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "pw" + secrets.token_hex(8)
    # nothing listens on port 9: every command fails at once
    context = PluginContext(
        data_dir=tmp_path,
        clock=FakeClock(),
        public_api_url="http://x",
        public_ingest_url="ws://x",
    )
    store = RedisRefStore(
        RedisRefStoreConfig(url=f"redis://:{password}@127.0.0.1:9/0", timeout_seconds=0.5),
        context,
    )
    await store.start()
    try:
        with pytest.raises(RefStoreFull, match="unavailable"):
            await store.issue(full_record(), 90, "cn_1:v3:abc")
        assert await store.claim("x" * 32, "telnyx") is None
        assert await store.find("cn_1:v3:abc") is None
    finally:
        await store.aclose()
    captured = capsys.readouterr()
    assert password not in captured.out + captured.err
