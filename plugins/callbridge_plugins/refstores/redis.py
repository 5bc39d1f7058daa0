"""The ``redis`` ref store: single-use refs every replica shares.

A ref's record lives in a hash ``<prefix>ref:<sha1(ref)>`` (fields ``provider``, ``record``,
``key``) and its idempotency key in ``<prefix>key:<idempotency key>`` → ref; both expire
with the ref (Redis' own ``PX`` expiry). Issuing and claiming are each one Lua script, so a ref
raced by sockets on any number of replicas is consumed exactly once, and a claim on another
provider's path leaves it claimable. The record is stored as versioned JSON
(``{"v": 1, "record": {…}}``); a record of an unknown version is refused, never guessed at.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Final

import msgspec
import structlog
from pydantic import BaseModel, Field, SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from callbridge import hookimpl
from callbridge.plugin_types import RefStorePlugin
from callbridge.protocols import PluginContext, RefRecord, RefStoreFull

REF_BYTES = 24  # 192 bits
RECORD_VERSION: Final = 1

log = structlog.get_logger("callbridge.refstores.redis")


class RedisRefStoreConfig(BaseModel):
    """Options of the ``redis`` ref store."""

    model_config = {"extra": "forbid"}

    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (redis:// or rediss://, may hold a password: use {$env} or "
        "{$file}); every replica must use the same Redis and key_prefix.",
    )
    key_prefix: str = Field(
        "callbridge:refs:",
        min_length=1,
        max_length=100,
        description="Prefix of every key this store writes.",
    )
    timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Connect and command timeout; a call waits at most this."
    )


class _Version(msgspec.Struct):
    v: int


class _Envelope(msgspec.Struct):
    v: int
    record: RefRecord


# Expiry follows the server's clock (``now`` below, like every other store), so replicas agree
# with the call rows' ref_expires_at; Redis' own expiry, a little later, only reclaims memory.

# KEYS: idempotency key, ref hash prefix. ARGV: ref, provider, record, expires at, now, ttl ms.
_ISSUE: Final = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local expires = redis.call('HGET', KEYS[2] .. redis.sha1hex(existing), 'expires')
  if expires and tonumber(expires) > tonumber(ARGV[5]) then return existing end
end
local hash = KEYS[2] .. redis.sha1hex(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[6])
redis.call('HSET', hash, 'provider', ARGV[2], 'record', ARGV[3], 'key', KEYS[1],
  'expires', ARGV[4])
redis.call('PEXPIRE', hash, ARGV[6])
return ARGV[1]
"""

# KEYS: idempotency key, ref hash prefix. ARGV: now. Returns {ref, record} or nil.
_FIND: Final = """
local ref = redis.call('GET', KEYS[1])
if not ref then return nil end
local fields = redis.call('HMGET', KEYS[2] .. redis.sha1hex(ref), 'record', 'expires')
if not fields[1] or tonumber(fields[2]) <= tonumber(ARGV[1]) then return nil end
return {ref, fields[1]}
"""

# KEYS: ref hash. ARGV: ref, provider, now. Returns the record, or nil (unknown, expired,
# claimed, or another provider's: that one stays claimable).
_CLAIM: Final = """
local fields = redis.call('HMGET', KEYS[1], 'provider', 'record', 'key', 'expires')
if not fields[1] or fields[1] ~= ARGV[2] then return nil end
redis.call('DEL', KEYS[1])
if redis.call('GET', fields[3]) == ARGV[1] then redis.call('DEL', fields[3]) end
if tonumber(fields[4]) <= tonumber(ARGV[3]) then return nil end
return fields[2]
"""

EXPIRY_GRACE_SECONDS: Final = 30.0
"""How much longer than its ref Redis keeps a record before reclaiming it."""


class RedisRefStore:
    """Refs in Redis: a webhook answered by one replica, its media socket claimed on another."""

    name = "redis"

    def __init__(self, config: RedisRefStoreConfig, context: PluginContext) -> None:
        self._config = config
        self._prefix = config.key_prefix
        self._clock = context.clock
        self._redis: Redis | None = None
        self._scripts: dict[str, Any] = {}

    async def start(self) -> None:
        """Connect (lazily: the first command opens the pool) and register the scripts."""
        if self._redis is None:
            timeout = self._config.timeout_seconds
            self._redis = Redis.from_url(
                self._config.url.get_secret_value(),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self._scripts = {
                name: self._redis.register_script(body)
                for name, body in (("issue", _ISSUE), ("find", _FIND), ("claim", _CLAIM))
            }

    async def issue(self, record: RefRecord, ttl_seconds: float, idempotency_key: str) -> str:
        ref = secrets.token_urlsafe(REF_BYTES)
        payload = msgspec.json.encode(_Envelope(RECORD_VERSION, record))
        now = self._clock()
        keep_ms = round((ttl_seconds + EXPIRY_GRACE_SECONDS) * 1000)
        try:
            issued = await self._script("issue")(
                keys=[self._key(idempotency_key), self._prefix + "ref:"],
                args=[ref, record.provider, payload, repr(now + ttl_seconds), repr(now), keep_ms],
            )
        except RedisError as exc:
            log.warning("ref store unavailable", error=type(exc).__name__)
            raise RefStoreFull("the ref store (Redis) is unavailable; try again later") from exc
        return _text(issued)

    async def find(self, idempotency_key: str) -> tuple[str, RefRecord] | None:
        try:
            found = await self._script("find")(
                keys=[self._key(idempotency_key), self._prefix + "ref:"],
                args=[repr(self._clock())],
            )
        except RedisError as exc:
            log.warning("ref store unavailable", error=type(exc).__name__)
            return None
        if not found:
            return None
        ref, payload = found
        record = _decode(payload)
        return None if record is None else (_text(ref), record)

    async def claim(self, ref: str, provider: str) -> RefRecord | None:
        try:
            payload = await self._script("claim")(
                keys=[self._hash(ref)], args=[ref, provider, repr(self._clock())]
            )
        except RedisError as exc:
            log.warning("ref store unavailable: claim refused", error=type(exc).__name__)
            return None
        return None if payload is None else _decode(payload)

    async def ping(self) -> bool:
        """Whether Redis answers (the server's readiness)."""
        if self._redis is None:
            return False
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def aclose(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    def _script(self, name: str) -> Any:
        if self._redis is None:
            raise RuntimeError("the redis ref store is not started")
        return self._scripts[name]

    def _key(self, idempotency_key: str) -> str:
        return f"{self._prefix}key:{idempotency_key}"

    def _hash(self, ref: str) -> str:
        digest = hashlib.sha1(ref.encode(), usedforsecurity=False).hexdigest()
        return f"{self._prefix}ref:{digest}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(payload: bytes | str) -> RefRecord | None:
    """The record of a stored envelope; ``None`` (logged) for another version or bad data."""
    try:
        version = msgspec.json.decode(payload, type=_Version).v
        if version != RECORD_VERSION:
            log.warning("ref record of another schema version: refused", version=version)
            return None
        return msgspec.json.decode(payload, type=_Envelope).record
    except msgspec.DecodeError:
        log.warning("ref record unreadable: refused")
        return None


@hookimpl
def callbridge_ref_stores():  # type: ignore[no-untyped-def]
    yield RefStorePlugin(
        name="redis",
        factory=RedisRefStore,
        config_model=RedisRefStoreConfig,
        description="Single-use refs in Redis, shared by every replica",
    )
