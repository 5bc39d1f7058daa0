"""Signing keys every replica shares, kept in the store (a :class:`~callbridge.protocols.KeyStore`).

The first replica to need a key creates it; a replica racing it loses the insert and reads the
winner's, so every replica signs with the same key.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from callbridge.redaction import remember_secrets
from callbridge.store.db import Database
from callbridge.store.models import SigningKey
from callbridge.store.repository import Clock, transaction


class StoredKeys:
    """Keys in the ``signing_keys`` table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get_or_create(self, name: str, create: Callable[[], str]) -> str:
        value = await self._read(name)
        if value is None:
            try:
                async with transaction(self._db, self._clock, write=True) as repo:
                    repo.session.add(SigningKey(name=name, value=create(), created_at=repo.now()))
            except IntegrityError:  # another replica stored one first
                pass
            value = await self._read(name)
        if value is None:  # pragma: no cover - the insert either happened or lost to one
            raise RuntimeError(f"signing key {name} could not be stored")
        remember_secrets([value])
        return value

    async def _read(self, name: str) -> str | None:
        async with transaction(self._db, self._clock) as repo:
            return await repo.session.scalar(
                select(SigningKey.value).where(SigningKey.name == name)
            )
