"""Old lifecycle events are deleted with their finished deliveries and attempts, never while a
delivery of theirs is still pending, and never the recent ones (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select, update

from callbridge.store.db import Database
from callbridge.store.models import Delivery, DeliveryAttempt, Event, WebhookSubscription
from callbridge.store.repository import transaction
from callbridge.webhooks.store import insert_event, prune_events
from tests.stores import StepClock, clock, database, db

__all__ = ["clock", "database", "db"]  # fixtures

AGES_AND_OUTCOMES = {
    "evt_old_done": (40, "delivered"),
    "evt_old_pending": (40, "pending"),
    "evt_old_failed": (31, "failed"),
    "evt_recent": (5, "delivered"),
}


async def test_old_finished_events_go_and_the_rest_stay(db: Database, clock: StepClock) -> None:
    async with transaction(db, clock, write=True) as repo:
        apikey = (await repo.create_api_key("tests")).apikey
        now = repo.now()
        repo.session.add(
            WebhookSubscription(
                id="wh_retention00000",
                apikey=apikey,
                url="https://receiver.example/hook",
                events=json.dumps(["call-started"]),
                signer="rsa_sha256",
                created_at=now,
                updated_at=now,
            )
        )
        await repo.session.flush()
        for event_id, (days, _) in AGES_AND_OUTCOMES.items():
            await insert_event(
                repo.session,
                event_id=event_id,
                apikey=apikey,
                call_id=None,
                connector_id=None,
                room_id=None,
                seq=1,
                event_type="call-started",
                body="{}",
                now=now - timedelta(days=days),
            )
        for event_id, (_, status) in AGES_AND_OUTCOMES.items():
            await repo.session.execute(
                update(Delivery).where(Delivery.event_id == event_id).values(status=status)
            )
        delivery_id = await repo.session.scalar(
            select(Delivery.id).where(Delivery.event_id == "evt_old_done")
        )
        assert delivery_id is not None
        repo.session.add(
            DeliveryAttempt(
                delivery_id=delivery_id, attempted_at=now, status_code=200, latency_ms=3
            )
        )
    async with transaction(db, clock, write=True) as repo:
        pruned = await prune_events(repo.session, repo.now() - timedelta(days=30))
    assert pruned == 2
    async with transaction(db, clock) as repo:
        left = set(await repo.session.scalars(select(Event.id)))
        deliveries = set(await repo.session.scalars(select(Delivery.event_id)))
        attempts = await repo.session.scalar(select(func.count()).select_from(DeliveryAttempt))
    assert left == {"evt_old_pending", "evt_recent"}, "pending or recent events stay"
    assert deliveries == {"evt_old_pending", "evt_recent"}
    assert attempts == 0, "the deleted deliveries' attempts went with them"
    async with transaction(db, clock, write=True) as repo:
        assert await prune_events(repo.session, repo.now() - timedelta(days=30)) == 0
