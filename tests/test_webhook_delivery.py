"""Durable delivery against a real local receiver: the retry schedule under a fake clock,
3xx/410/429/Retry-After, per-call order while an earlier event is retried, leases of a dead
worker, and two workers racing over PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer
from sqlalchemy import select

from callbridge.crypto import CredentialBox
from callbridge.protocols import KeyStore, SignedMessage
from callbridge.settings import WebhookSettings
from callbridge.store.db import Database
from callbridge.store.models import Delivery, WebhookSubscription
from callbridge.store.repository import transaction
from callbridge.webhooks import store
from callbridge.webhooks.delivery import AttemptResult, DeliveryWorker, Sender, next_delay
from tests.stores import START, StepClock, database
from tests.webhook_receiver import Answer, Receiver, receiving

__all__ = ["database"]

BOX = CredentialBox(bytes(32))
SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class FakeSigner:
    """Signs with the event id, so tests can tell deliveries apart."""

    name = "fake"

    async def start(self, keys: KeyStore) -> None:
        pass

    def sign(self, body: bytes, message: SignedMessage) -> Mapping[str, str]:
        return {"webhook-id": message.id, "webhook-timestamp": str(message.timestamp)}

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        secret: str | None = None,
        now: int | None = None,
    ) -> bool:
        return True

    def new_endpoint_secret(self) -> str | None:
        return None

    def public_key_pem(self) -> str | None:
        return None


def _settings(**overrides: Any) -> WebhookSettings:
    return WebhookSettings(
        signer="fake", signers=["fake"], allow_networks=["127.0.0.0/8"], **overrides
    )


@dataclass
class Rig:
    db: Database
    clock: StepClock
    receiver: Receiver
    worker: DeliveryWorker
    apikey: str
    subscription_id: str

    async def event(self, call_id: str, seq: int, event_type: str = "call-started") -> str:
        event_id = store.new_event_id()
        body = json.dumps(
            {
                "webhookType": event_type,
                "data": {"eventId": event_id, "callId": call_id, "sequence": seq},
            }
        )
        async with transaction(self.db, self.clock, write=True) as repo:
            await store.insert_event(
                repo.session,
                event_id=event_id,
                apikey=self.apikey,
                call_id=call_id,
                connector_id=None,
                room_id=None,
                seq=seq,
                event_type=event_type,
                body=body,
                now=repo.now(),
            )
        return event_id

    async def deliveries(self) -> list[Delivery]:
        async with transaction(self.db, self.clock) as repo:
            statement = select(Delivery).order_by(Delivery.call_id, Delivery.seq)
            return list(await repo.session.scalars(statement))

    async def subscription(self) -> WebhookSubscription:
        async with transaction(self.db, self.clock) as repo:
            row = await repo.session.get(WebhookSubscription, self.subscription_id)
        assert row is not None
        return row


async def _rig(
    db: Database, tmp_path: Path, receiver: Receiver, name: str = "w1", **settings: Any
) -> Rig:
    clock = StepClock()
    await db.migrate()
    async with transaction(db, clock, write=True) as repo:
        apikey = (await repo.create_api_key("tests")).apikey
        now = repo.now()
        repo.session.add(
            WebhookSubscription(
                id="wh_test0000000000",
                apikey=apikey,
                url=f"{receiver.url}/hook",
                events=json.dumps(["call-started", "call-answered", "call-hangup"]),
                signer="fake",
                created_at=now,
                updated_at=now,
            )
        )
    config = _settings(**settings)
    sender = Sender(
        config,
        {"fake": FakeSigner()},
        lambda: CredentialBox.generate() if hasattr(CredentialBox, "generate") else None,
        NoOpTracer(),
        clock,
    )  # type: ignore[arg-type]
    worker = DeliveryWorker(db, sender, config, name, clock, rand=lambda: 0.5)
    return Rig(db, clock, receiver, worker, apikey, "wh_test0000000000")


@pytest.fixture
async def rig(database: Database, tmp_path: Path) -> AsyncIterator[Rig]:
    async with receiving() as receiver:
        built = await _rig(database, tmp_path, receiver)
        try:
            yield built
        finally:
            await built.worker.stop()


def _until(rig: Rig, delivery: Delivery) -> None:
    assert delivery.next_attempt_at is not None
    rig.clock.now = delivery.next_attempt_at.timestamp()


# ----------------------------------------------------------------------------- schedule


def test_delays_follow_the_schedule_within_the_jitter() -> None:
    failed = AttemptResult(500, 3)
    for attempt, base in enumerate(SCHEDULE, start=1):
        low = next_delay(failed, attempt, SCHEDULE, 0.2, rand=lambda: 0.0)
        high = next_delay(failed, attempt, SCHEDULE, 0.2, rand=lambda: 0.999999)
        assert low == pytest.approx(base * 0.8) and high == pytest.approx(base * 1.2, rel=1e-5)
    assert next_delay(failed, len(SCHEDULE) + 1, SCHEDULE, 0.2) is None
    assert next_delay(AttemptResult(410, 1), 1, SCHEDULE, 0.2) is None
    assert next_delay(AttemptResult(429, 1), 1, SCHEDULE, 0.0) == 60.0
    assert next_delay(AttemptResult(None, 1, "timed out", timed_out=True), 1, SCHEDULE, 0.0) == 60.0
    assert next_delay(AttemptResult(503, 1, retry_after=900.0), 1, SCHEDULE, 0.0) == 900.0
    assert next_delay(AttemptResult(503, 1, retry_after=9e9), 1, SCHEDULE, 0.0) == 86400.0


async def test_eight_failures_are_eight_attempts_on_the_schedule_then_failed(rig: Rig) -> None:
    rig.receiver.default = Answer(500, body=b"nope")
    await rig.event("call_a", 1)
    gaps: list[float] = []
    for attempt in range(1, len(SCHEDULE) + 2):
        assert await rig.worker.run_once(wait=True) == 1
        (delivery,) = await rig.deliveries()
        assert delivery.attempts == attempt
        if attempt <= len(SCHEDULE):
            assert delivery.status == "pending"
            assert delivery.next_attempt_at is not None
            gaps.append(delivery.next_attempt_at.timestamp() - rig.clock.now)
            _until(rig, delivery)
    assert delivery.status == "failed" and delivery.next_attempt_at is None
    assert gaps == SCHEDULE  # rand 0.5: no jitter
    assert len(rig.receiver.received) == len(SCHEDULE) + 1
    rig.clock.advance(10**6)
    assert await rig.worker.run_once(wait=True) == 0
    ids = {request.headers["webhook-id"] for request in rig.receiver.received}
    stamps = {request.headers["webhook-timestamp"] for request in rig.receiver.received}
    assert len(ids) == 1 and len(stamps) == len(SCHEDULE) + 1  # one id, a timestamp per attempt


# ----------------------------------------------------------------------------- statuses


async def test_a_redirect_is_a_failure_and_never_followed(rig: Rig) -> None:
    rig.receiver.script.append(Answer(302, {"location": f"{rig.receiver.url}/elsewhere"}))
    await rig.event("call_a", 1)
    await rig.worker.run_once(wait=True)
    await asyncio.sleep(0.2)
    assert [request.path for request in rig.receiver.received] == ["/hook"]
    (delivery,) = await rig.deliveries()
    assert (delivery.status, delivery.last_status_code, delivery.attempts) == ("pending", 302, 1)


async def test_410_gives_up_and_disables_the_subscription(rig: Rig) -> None:
    rig.receiver.script.append(Answer(410))
    await rig.event("call_a", 1)
    await rig.worker.run_once(wait=True)
    (delivery,) = await rig.deliveries()
    assert delivery.status == "failed"
    subscription = await rig.subscription()
    assert subscription.disabled_at is not None and "410" in (subscription.disabled_reason or "")
    await rig.event("call_b", 1)
    assert len(await rig.deliveries()) == 1, "a disabled subscription gets no new deliveries"


@pytest.mark.parametrize(
    ("answer", "delay"),
    [
        (Answer(429, {"retry-after": "120"}), 120.0),
        (Answer(503, {"retry-after": "30"}), 30.0),
        (Answer(502), 60.0),
        (Answer(504), 60.0),
        (Answer(500), 5.0),
    ],
)
async def test_throttling_answers_slow_the_next_attempt(
    rig: Rig, answer: Answer, delay: float
) -> None:
    rig.receiver.script.append(answer)
    await rig.event("call_a", 1)
    await rig.worker.run_once(wait=True)
    (delivery,) = await rig.deliveries()
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at.timestamp() - rig.clock.now == pytest.approx(delay)


async def test_a_calls_later_event_waits_while_the_earlier_one_is_retried(rig: Rig) -> None:
    first = await rig.event("call_a", 1)
    second = await rig.event("call_a", 2, "call-answered")
    other = await rig.event("call_b", 1)
    rig.receiver.answer_for = lambda request: (
        Answer(500)
        if request.json()["data"]["eventId"] == first and rig.clock.now == START
        else None
    )
    assert await rig.worker.run_once(wait=True) == 2  # call_a #1 and call_b #1, not call_a #2
    sent = [request.json()["data"]["eventId"] for request in rig.receiver.received]
    assert sorted(sent) == sorted([first, other])
    assert await rig.worker.run_once(wait=True) == 0, "#2 waits for #1"
    rig.clock.advance(5)
    assert await rig.worker.run_once(wait=True) == 1
    assert await rig.worker.run_once(wait=True) == 1
    order = [request.json()["data"]["eventId"] for request in rig.receiver.received]
    assert [event for event in order if event != other] == [first, first, second]


class _HeldFirstPass:
    """Wraps a worker's passes: the first, once done, waits at ``gate`` (the test acts while
    the worker is still inside its pass); every pass is counted."""

    def __init__(self, worker: DeliveryWorker) -> None:
        self.passes = 0
        self.held = asyncio.Event()
        self.gate = asyncio.Event()
        self._run_once = worker.run_once
        worker.run_once = self  # type: ignore[method-assign]

    async def __call__(self, *, wait: bool = False) -> int:
        self.passes += 1
        leased = await self._run_once(wait=wait)
        self.held.set()
        await self.gate.wait()
        return leased


@contextlib.asynccontextmanager
async def _inside_the_first_pass(
    database: Database, tmp_path: Path
) -> AsyncIterator[tuple[Rig, _HeldFirstPass]]:
    """A running worker (polling once a minute) held inside its first pass; stopped on exit."""
    async with receiving() as receiver:
        rig = await _rig(database, tmp_path, receiver, poll_interval_seconds=60)
        first_pass = _HeldFirstPass(rig.worker)
        await rig.worker.start()
        try:
            await asyncio.wait_for(first_pass.held.wait(), 10)
            yield rig, first_pass
        finally:
            await rig.worker.stop()


async def test_an_event_written_during_a_pass_is_sent_without_waiting_for_the_next_poll(
    database: Database, tmp_path: Path
) -> None:
    async with _inside_the_first_pass(database, tmp_path) as (rig, first_pass):
        event_id = await rig.event("call_a", 1)  # the pass has leased; it is not done
        rig.worker.poke()
        first_pass.gate.set()
        async with asyncio.timeout(10):  # a minute, were the poke lost
            while not rig.receiver.received:  # noqa: ASYNC110 - polling the receiver
                await asyncio.sleep(0.01)
        assert rig.receiver.received[0].json()["data"]["eventId"] == event_id
        assert first_pass.passes == 2


async def test_a_stop_during_a_pass_ends_the_worker_after_that_pass(
    database: Database, tmp_path: Path
) -> None:
    async with _inside_the_first_pass(database, tmp_path) as (rig, first_pass):
        stopping = asyncio.create_task(rig.worker.stop())
        await asyncio.sleep(0)
        first_pass.gate.set()
        await asyncio.wait_for(stopping, 10)  # a minute, were the stop's wake-up lost
        assert first_pass.passes == 1


async def test_a_dead_workers_lease_lapses_and_another_delivers_once(
    database: Database, tmp_path: Path
) -> None:
    async with receiving() as receiver:
        rig = await _rig(database, tmp_path, receiver, lease_seconds=60)
        event_id = await rig.event("call_a", 1)
        async with transaction(rig.db, rig.clock, write=True) as repo:  # a worker leases, then dies
            leased = await store.lease_due(
                repo.session,
                owner="dead",
                now=repo.now(),
                lease_seconds=60,
                limit=10,
                skip_locked=False,
            )
        assert len(leased) == 1
        assert await rig.worker.run_once(wait=True) == 0
        rig.clock.advance(61)
        assert await rig.worker.run_once(wait=True) == 1
        (delivery,) = await rig.deliveries()
        assert delivery.status == "delivered"
        assert [request.headers["webhook-id"] for request in receiver.received] == [event_id]
        await rig.worker.stop()


@pytest.mark.services
async def test_two_workers_racing_over_postgresql_deliver_each_event_once(tmp_path: Path) -> None:
    from tests.stores import _postgres_database

    async for db in _postgres_database():
        async with receiving() as receiver:
            rig = await _rig(db, tmp_path, receiver, name="w1")
            config = _settings()
            other = DeliveryWorker(
                db,
                Sender(config, {"fake": FakeSigner()}, lambda: BOX, NoOpTracer(), rig.clock),
                config,
                "w2",
                rig.clock,
            )
            receiver.default = Answer(200, delay=0.01)
            events = [await rig.event(f"call_{n}", 1) for n in range(40)]
            for _ in range(20):
                await asyncio.gather(rig.worker.run_once(wait=True), other.run_once(wait=True))
            received = [request.headers["webhook-id"] for request in receiver.received]
            assert sorted(received) == sorted(events), "each event exactly once"
            deliveries = await rig.deliveries()
            assert {d.status for d in deliveries} == {"delivered"}
            await rig.worker.stop()
            await other.stop()
