"""Room homes: each room lives on one replica, named by a lease in Redis.

The lease ``callbridge:cluster:room:<tenant>:<transport>:<room id>`` holds the home replica's
id, internal URL and public URLs. The first replica a member of an unhomed room reaches takes
the lease (``SET NX PX``) and becomes its home; it renews the lease while the room has members
there and gives it up when the last one leaves. A home that dies stops renewing: once the lease
lapses (``cluster.room_lease_seconds``), the next member re-homes the room wherever it arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

KEY_PREFIX: Final = "callbridge:cluster:room:"

# KEYS: lease. ARGV: our value, ttl ms. Returns the home's value (ours when we took it).
_TAKE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""
# KEYS: lease. ARGV: our value, ttl ms. 1 when renewed, 0 when it is not ours (any more).
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: our value. Deletes it only while it is ours.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Home:
    """A room's home replica: its id, how replicas reach it, and (``direct`` room mode) its
    own public API and media-socket URLs and SIP address (``host:port``, when it runs SIP)."""

    instance_id: str
    internal_url: str
    api_url: str = ""
    ingest_url: str = ""
    sip_address: str = ""


class RoomHomes:
    """The leases of room homes, for the replica ``me``."""

    def __init__(self, redis: Redis, me: Home, lease_seconds: float) -> None:
        self.me = me
        self._redis = redis
        self._value = json.dumps(
            {
                "instance": me.instance_id,
                "internal": me.internal_url,
                "api": me.api_url,
                "ingest": me.ingest_url,
                "sip": me.sip_address,
            }
        )
        self._ttl_ms = max(1, round(lease_seconds * 1000))
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def key(tenant: str, transport: str, room_id: str) -> str:
        return f"{KEY_PREFIX}{tenant}:{transport}:{room_id}"

    async def home_of(self, key: str) -> Home:
        """The room's home: the replica holding its lease, or this one, which takes it."""
        value: Any = await self._take(keys=[key], args=[self._value, self._ttl_ms])
        return _home(value)

    async def find(self, key: str) -> Home | None:
        """The room's home, without taking it; ``None`` when nobody holds it."""
        value: Any = await self._redis.get(key)
        return None if value is None else _home(value)

    async def renew(self, key: str) -> bool:
        """Extend this replica's lease; ``False`` when another replica holds it now."""
        return bool(await self._renew(keys=[key], args=[self._value, self._ttl_ms]))

    async def release(self, key: str) -> None:
        """Give the lease up (while it is this replica's)."""
        await self._release(keys=[key], args=[self._value])

    async def aclose(self) -> None:
        await self._redis.aclose()


def _home(value: str | bytes) -> Home:
    data = json.loads(value)
    return Home(
        str(data["instance"]),
        str(data["internal"]),
        str(data.get("api", "")),
        str(data.get("ingest", "")),
        str(data.get("sip", "")),
    )
