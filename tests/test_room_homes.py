"""Room home leases against the local Redis: one home per room, renewed while members stay,
released by the last one, re-homed once lapsed; a draining replica homes no new room."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis

from callbridge.cluster.homes import Home, RoomHomes
from callbridge.cluster.relay import HomedRooms
from callbridge.protocols import LegSink, Participant, PluginError
from tests.services import redis_url

pytestmark = pytest.mark.services


class _Leg:
    def __init__(self, participant: Participant) -> None:
        self.participant_id = participant.participant_id
        self.sample_rate = 16000
        self.closed_reason: str | None = None
        self.left = False

    def send_audio(self, frame: np.ndarray) -> None: ...

    def send_event(self, event: Mapping[str, Any]) -> None: ...

    def media_stats(self) -> Mapping[str, int]:
        return {}

    async def leave(self) -> None:
        self.left = True


class _Rooms:
    """A stand-in room transport that records who joined here."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.joined: list[tuple[str, str]] = []

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def join(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> _Leg:
        self.joined.append((room_id, participant.participant_id))
        return _Leg(participant)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(await redis_url())
    yield client
    await client.aclose()


def replica(redis: Redis, name: str, lease: float = 0.6) -> RoomHomes:
    return RoomHomes(redis, Home(name, f"http://{name}:8000", f"http://{name}", ""), lease)


async def test_one_home_renewed_released_and_rehomed(redis: Redis) -> None:
    key = RoomHomes.key("ak", "local", "room-" + secrets.token_hex(4))
    first, second = replica(redis, "inst_a"), replica(redis, "inst_b")
    assert (await first.home_of(key)).instance_id == "inst_a"
    home = await second.home_of(key)
    assert (home.instance_id, home.internal_url, home.api_url) == (
        "inst_a",
        "http://inst_a:8000",
        "http://inst_a",
    )
    await asyncio.sleep(0.4)
    assert await first.renew(key)
    assert not await second.renew(key), "only the holder renews"
    await asyncio.sleep(0.4)
    assert (await second.home_of(key)).instance_id == "inst_a", "renewed: still A's"
    await second.release(key)
    assert (await second.find(key)) is not None, "only the holder releases"
    await first.release(key)
    assert await second.find(key) is None
    assert (await second.home_of(key)).instance_id == "inst_b"
    await asyncio.sleep(0.8)  # B never renews: its lease lapses
    assert (await first.home_of(key)).instance_id == "inst_a"
    await first.release(key)


async def test_members_hold_the_lease_and_the_last_one_lets_it_go(redis: Redis) -> None:
    room = "room-" + secrets.token_hex(4)
    homes = replica(redis, "inst_a", lease=0.6)
    rooms = HomedRooms(_Rooms(), "local", homes, lambda: b"k" * 32, 0.6)  # type: ignore[arg-type]
    one = await rooms.join("ak", room, Participant("p1", "client"), None)  # type: ignore[arg-type]
    two = await rooms.join("ak", room, Participant("p2", "client"), None)  # type: ignore[arg-type]
    key = RoomHomes.key("ak", "local", room)
    await asyncio.sleep(1.0)  # longer than the lease: renewed meanwhile
    assert (await homes.find(key)) is not None
    await one.leave()
    assert (await homes.find(key)) is not None, "a member is still here"
    await two.leave()
    assert await homes.find(key) is None, "the last member let the room go"
    await rooms.aclose()


async def test_a_draining_replica_homes_no_new_room(redis: Redis) -> None:
    room = "room-" + secrets.token_hex(4)
    inner = _Rooms()
    draining = False
    rooms = HomedRooms(
        inner,  # type: ignore[arg-type]
        "local",
        replica(redis, "inst_a"),
        lambda: b"k" * 32,
        0.6,
        lambda: draining,
    )
    kept = await rooms.join("ak", room, Participant("p1", "client"), None)  # type: ignore[arg-type]
    draining = True
    again = await rooms.join("ak", room, Participant("p2", "client"), None)  # type: ignore[arg-type]
    assert inner.joined == [(room, "p1"), (room, "p2")], "its own rooms still take members"
    with pytest.raises(PluginError, match="draining"):
        await rooms.join("ak", room + "-new", Participant("p3", "client"), None)  # type: ignore[arg-type]
    await kept.leave()
    await again.leave()
    await rooms.aclose()
