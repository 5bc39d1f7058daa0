"""The store side of lifecycle events: numbering, writing events with their deliveries,
subscriptions, and leasing due deliveries for the workers.

Every function works inside the caller's session and transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from callbridge.store.ids import new_delivery_id, new_event_id
from callbridge.store.models import (
    Call,
    Delivery,
    DeliveryAttempt,
    Event,
    WebhookSubscription,
)

__all__ = ["new_event_id"]

MAX_STORED_BODY_CHARS = 20_000
"""How much of a receiver's answer an attempt keeps."""


async def next_call_seq(session: AsyncSession, call_id: str) -> int:
    """The call's next event number (1, 2, …). The increment is one ``UPDATE``, so two
    writers (processes) never get the same number."""
    result = await session.execute(
        update(Call)
        .where(Call.id == call_id)
        .values(event_seq=Call.event_seq + 1)
        .returning(Call.event_seq),
        execution_options={"synchronize_session": False},
    )
    seq = result.scalar_one_or_none()
    if seq is None:
        raise LookupError(f"no call {call_id}")
    return int(seq)


async def insert_event(
    session: AsyncSession,
    *,
    event_id: str,
    apikey: str,
    call_id: str | None,
    connector_id: str | None,
    room_id: str | None,
    seq: int,
    event_type: str,
    body: str,
    now: datetime,
    trace_parent: str | None = None,
) -> list[str]:
    """Store the event and one pending delivery per enabled subscription of ``apikey`` that
    wants ``event_type``; returns the deliveries' subscription ids."""
    session.add(
        Event(
            id=event_id,
            apikey=apikey,
            call_id=call_id,
            connector_id=connector_id,
            room_id=room_id,
            seq=seq,
            type=event_type,
            body=body,
            trace_parent=trace_parent,
            created_at=now,
        )
    )
    targets = [
        subscription.id
        for subscription in await active_subscriptions(session, apikey)
        if event_type in json.loads(subscription.events)
    ]
    for subscription_id in targets:
        session.add(
            Delivery(
                id=new_delivery_id(),
                event_id=event_id,
                subscription_id=subscription_id,
                call_id=call_id,
                seq=seq,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    await session.flush()
    return targets


async def active_subscriptions(session: AsyncSession, apikey: str) -> list[WebhookSubscription]:
    """The API key's subscriptions that are not disabled."""
    statement = select(WebhookSubscription).where(
        WebhookSubscription.apikey == apikey, WebhookSubscription.disabled_at.is_(None)
    )
    return list(await session.scalars(statement))


async def lease_due(
    session: AsyncSession,
    *,
    owner: str,
    now: datetime,
    lease_seconds: float,
    limit: int,
    skip_locked: bool,
) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries to ``owner`` for ``lease_seconds``.

    Due: pending with ``next_attempt_at`` reached, or delivering with a lapsed lease (its
    worker died). A delivery waits while an earlier event of the same call for the same
    subscription is not delivered or given up yet, so each call's events arrive in order. On
    PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``: concurrent workers take
    different rows.
    """
    earlier = aliased(Delivery)
    blocked = exists().where(
        and_(
            earlier.subscription_id == Delivery.subscription_id,
            earlier.call_id == Delivery.call_id,
            earlier.seq < Delivery.seq,
            earlier.status.in_(("pending", "delivering")),
        )
    )
    due = ((Delivery.status == "pending") & (Delivery.next_attempt_at <= now)) | (
        (Delivery.status == "delivering") & (Delivery.leased_until < now)
    )
    statement = (
        select(Delivery)
        .where(due, ~blocked)
        .order_by(Delivery.next_attempt_at, Delivery.seq)
        .limit(limit)
    )
    if skip_locked:
        statement = statement.with_for_update(skip_locked=True, of=Delivery)
    rows = list(await session.scalars(statement))
    until = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.status = "delivering"
        row.leased_until = until
        row.lease_owner = owner
        row.updated_at = now
    await session.flush()
    return rows


async def record_attempt(
    session: AsyncSession,
    delivery: Delivery,
    *,
    now: datetime,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    response_body: str | None,
    manual: bool,
) -> None:
    """Keep one attempt's outcome (the body cut to :data:`MAX_STORED_BODY_CHARS`)."""
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            status_code=status_code,
            latency_ms=latency_ms,
            error=None if error is None else error[:500],
            response_body=None if response_body is None else response_body[:MAX_STORED_BODY_CHARS],
            manual=manual,
        )
    )


async def deliveries_of(
    session: AsyncSession, subscription_id: str, *, limit: int, offset: int
) -> Sequence[Delivery]:
    statement = (
        select(Delivery)
        .where(Delivery.subscription_id == subscription_id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(await session.scalars(statement))


async def attempts_of(session: AsyncSession, delivery_ids: Iterable[str]) -> list[DeliveryAttempt]:
    statement = (
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_(list(delivery_ids)))
        .order_by(DeliveryAttempt.id)
    )
    return list(await session.scalars(statement))


# --------------------------------------------------------------------------- subscriptions


async def get_subscription(
    session: AsyncSession, apikey: str, subscription_id: str
) -> WebhookSubscription | None:
    """The API key's subscription, or ``None``."""
    return await session.scalar(
        select(WebhookSubscription).where(
            WebhookSubscription.id == subscription_id, WebhookSubscription.apikey == apikey
        )
    )


async def list_subscriptions(
    session: AsyncSession, apikey: str, *, limit: int, offset: int
) -> tuple[int, list[WebhookSubscription]]:
    """The API key's subscriptions, newest first, and how many there are."""
    from sqlalchemy import func

    total = await session.scalar(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(WebhookSubscription.apikey == apikey)
    )
    statement = (
        select(WebhookSubscription)
        .where(WebhookSubscription.apikey == apikey)
        .order_by(WebhookSubscription.created_at.desc(), WebhookSubscription.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return int(total or 0), list(await session.scalars(statement))


async def count_deliveries(session: AsyncSession, subscription_id: str) -> int:
    from sqlalchemy import func

    total = await session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.subscription_id == subscription_id)
    )
    return int(total or 0)


async def requeue_failed(
    session: AsyncSession, subscription_id: str, since: datetime, now: datetime
) -> int:
    """Queue every failed delivery of the subscription created since ``since`` again."""
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.status == "failed",
            Delivery.created_at >= since,
        )
        .values(status="pending", next_attempt_at=now, updated_at=now),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


UNFINISHED: tuple[str, ...] = ("pending", "delivering")


async def prune_events(session: AsyncSession, before: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` events written before ``before`` whose deliveries are all
    finished (delivered or failed), with those deliveries and their attempts; returns how many
    events went."""
    unfinished = exists().where(Delivery.event_id == Event.id, Delivery.status.in_(UNFINISHED))
    ids = list(
        await session.scalars(
            select(Event.id)
            .where(Event.created_at < before, ~unfinished)
            .order_by(Event.position)
            .limit(limit)
        )
    )
    if not ids:
        return 0
    deliveries = select(Delivery.id).where(Delivery.event_id.in_(ids))
    await session.execute(
        delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(deliveries)),
        execution_options={"synchronize_session": False},
    )
    await session.execute(
        delete(Delivery).where(Delivery.event_id.in_(ids)),
        execution_options={"synchronize_session": False},
    )
    await session.execute(
        delete(Event).where(Event.id.in_(ids)), execution_options={"synchronize_session": False}
    )
    return len(ids)
