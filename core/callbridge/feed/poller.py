"""The process-wide event feed: polls the store's ``events`` table in ``position`` order and hands
each new event to the subscribed sockets of its API key.

Every process sharing the store runs one, so a socket on any replica sees the events written
by all of them; each poll that finds new events also pokes this process's webhook worker, so
deliveries start at once instead of at its next poll.

**Positions and commit order (PostgreSQL).** ``position`` is drawn when a row is inserted, but
rows become visible when their transaction commits, and concurrent transactions may commit out
of order: a poller could see position 12 while 11 is still uncommitted, step past 11, and never
deliver it. The feed therefore advances its high-water mark (:attr:`EventFeed.position`) only
over contiguous positions: at a gap it holds every later event back and re-reads, and only when
the gap has not filled for ``settle_seconds`` (1 s) does it take the missing position for a
rolled-back insert (sequences are not transactional, so such gaps are normal) and move on. An
insert whose transaction commits more than a second after drawing its position is therefore
not delivered live (its webhook deliveries are unaffected, and a later ``since`` replay
includes it). SQLite has one writer at a time and reuses a rolled-back rowid, so gaps there
only come from deleted rows.

Because events leave the feed in position order, a socket's events are in store order, which
is what makes ``since`` (replay from the position after an id) exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final, Protocol

import structlog
from sqlalchemy import func, select

from callbridge.feed.records import FeedEvent
from callbridge.feed.topics import TopicKey, event_keys
from callbridge.settings import EventSocketSettings
from callbridge.store.db import Database
from callbridge.store.models import Event
from callbridge.store.repository import transaction

SETTLE_SECONDS: Final = 1.0
BATCH_SIZE: Final = 500
"""Events read per query (a poll reads on while batches come back full)."""

log = structlog.get_logger("callbridge.events")

_COLUMNS = (
    Event.position,
    Event.id,
    Event.apikey,
    Event.call_id,
    Event.connector_id,
    Event.room_id,
    Event.type,
    Event.body,
    Event.created_at,
)


class Subscriber(Protocol):
    """A socket as the feed sees it (:class:`callbridge.feed.session.FeedSession`)."""

    @property
    def apikey(self) -> str: ...

    def offer(self, event: FeedEvent, keys: tuple[TopicKey, ...]) -> None:
        """Take ``event`` if a subscribed topic is among ``keys``; must not block."""


class EventFeed:
    """See the module docstring. ``on_new_events`` is called after a poll that found events."""

    def __init__(
        self,
        db: Database,
        settings: EventSocketSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_new_events: Callable[[], None] | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.position = 0
        """Every event at or below this position has been handed out (or given up as a gap)."""
        self._on_new_events = on_new_events
        self._settle = settle_seconds
        self._batch = batch_size
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._gap: tuple[int, float] | None = None  # (first missing position, seen since)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def subscriber_count(self) -> int:
        return sum(len(group) for group in self._subscribers.values())

    def register(self, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(subscriber.apikey, set()).add(subscriber)

    def unregister(self, subscriber: Subscriber) -> None:
        group = self._subscribers.get(subscriber.apikey)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self._subscribers[subscriber.apikey]

    async def start(self) -> None:
        """Start after the newest stored event, and poll until :meth:`stop`."""
        async with transaction(self.db, self.clock) as repo:
            self.position = int(await repo.session.scalar(select(func.max(Event.position))) or 0)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="event-feed")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        interval = self.settings.poll_interval_seconds
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            try:
                found = await self.poll_once()
            except Exception:
                log.exception("reading new events failed")
                found = 0
            if found and self._on_new_events is not None:
                self._on_new_events()

    async def poll_once(self) -> int:
        """Hand out the events committed since the last poll, in position order; returns how
        many (events held back behind a gap are not counted until handed out)."""
        handed = 0
        while True:
            rows = await self._read_after(self.position)
            for event in rows:
                if event.position != self.position + 1 and not self._gap_settled():
                    return handed
                self._gap = None
                self.position = event.position
                self._fan_out(event)
                handed += 1
            if len(rows) < self._batch:
                return handed

    def _gap_settled(self) -> bool:
        missing = self.position + 1
        now = time.monotonic()
        if self._gap is None or self._gap[0] != missing:
            self._gap = (missing, now)
        if now - self._gap[1] < self._settle:
            return False
        log.warning("event positions skipped: never committed", first_missing=missing)
        return True

    def _fan_out(self, event: FeedEvent) -> None:
        group = self._subscribers.get(event.apikey)
        if not group:
            return
        keys = event_keys(event)
        for subscriber in list(group):
            try:
                subscriber.offer(event, keys)
            except Exception:
                log.exception("an event socket refused an event", event_id=event.id)

    async def _read_after(self, position: int) -> list[FeedEvent]:
        statement = (
            select(*_COLUMNS)
            .where(Event.position > position)
            .order_by(Event.position)
            .limit(self._batch)
        )
        async with transaction(self.db, self.clock) as repo:
            rows = await repo.session.execute(statement)
            return [FeedEvent(*row) for row in rows]

    async def read(self, apikey: str, after: int, upto: int, limit: int) -> list[FeedEvent]:
        """The API key's events with ``after < position <= upto``, oldest first, at most
        ``limit`` (a replay's page)."""
        statement = (
            select(*_COLUMNS)
            .where(Event.apikey == apikey, Event.position > after, Event.position <= upto)
            .order_by(Event.position)
            .limit(limit)
        )
        async with transaction(self.db, self.clock) as repo:
            rows = await repo.session.execute(statement)
            return [FeedEvent(*row) for row in rows]

    async def find(self, apikey: str, event_id: str, not_before: datetime) -> int | None:
        """The position of the API key's event ``event_id`` if it was created at or after
        ``not_before``; ``None`` when unknown, another key's, or older."""
        statement = select(Event.position).where(
            Event.id == event_id, Event.apikey == apikey, Event.created_at >= not_before
        )
        async with transaction(self.db, self.clock) as repo:
            position = await repo.session.scalar(statement)
        return None if position is None else int(position)
