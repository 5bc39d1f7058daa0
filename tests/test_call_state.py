"""The call state machine on SQLite and PostgreSQL: the transition table, refusals, listeners in
the transition's transaction, claims, expiry and orphans; the migration of older rows; and the
rule that nothing else changes a call's status."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from callbridge.calls.state import (
    ENDS_FROM,
    CallLifecycle,
    CallStatus,
    DuplicateCallError,
    EndReason,
    Transition,
)
from callbridge.store.db import MIGRATIONS_PATH, Database
from callbridge.store.ids import new_call_id
from callbridge.store.repository import Repository, transaction
from tests.stores import StepClock, clock, database, db

__all__ = ["clock", "database", "db"]  # fixtures

ROOT = Path(__file__).resolve().parent.parent


async def _connector(db: Database, clock: StepClock) -> tuple[str, str]:
    async with transaction(db, clock) as repo:
        key = await repo.create_api_key("state")
        connector, _ = await repo.create_connector(key.apikey, "twilio")
    return key.apikey, connector.id


async def _routed(lifecycle: CallLifecycle, apikey: str, connector_id: str, sid: str) -> str:
    call = await lifecycle.route(
        call_id=new_call_id(),
        apikey=apikey,
        connector_id=connector_id,
        provider="twilio",
        provider_call_id=sid,
        room_id="room",
        ref_ttl_seconds=90,
    )
    return call.id


def test_every_reason_has_its_place_in_the_table() -> None:
    assert set(ENDS_FROM) == set(EndReason)
    assert {reason.status for reason in EndReason} == {CallStatus.ENDED, CallStatus.FAILED}
    for reason in (
        EndReason.REF_EXPIRED,
        EndReason.HANDSHAKE_REFUSED,
        EndReason.SIGNATURE,
        EndReason.NO_ROOM,
        EndReason.NO_START,
        EndReason.NO_ROUTE,
        EndReason.INTERRUPTED,
        EndReason.ERROR,
    ):
        assert reason.status == CallStatus.FAILED, reason
    assert EndReason.CALLER_HANGUP.status == CallStatus.ENDED


async def test_a_call_lives_routed_answered_ended(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycle = CallLifecycle(db, clock, instance_id="inst_a")
    call_id = await _routed(lifecycle, apikey, connector_id, "CA1")
    clock.advance(2)
    assert (claimed := await lifecycle.claim(call_id)) is not None
    assert claimed.status == "routed" and claimed.claimed_at is not None
    assert await lifecycle.claim(call_id) is None, "claimed once"
    clock.advance(1)
    answered = await lifecycle.answer(call_id)
    assert answered is not None and answered.status == "answered"
    assert answered.answered_at is not None and answered.answered_at.timestamp() == clock.now
    assert await lifecycle.answer(call_id) is None, "answered once"
    clock.advance(10)
    ended = await lifecycle.end(call_id, EndReason.CALLER_HANGUP)
    assert ended is not None
    assert (ended.status, ended.end_reason, ended.end_detail) == ("ended", "caller-hangup", None)
    assert ended.ended_at is not None and ended.ended_at.timestamp() == clock.now
    assert await lifecycle.end(call_id, EndReason.ERROR, "late") is None, "the first end wins"
    async with transaction(db, clock) as repo:
        stored = await repo.get_call(apikey, call_id)
    assert stored is not None and (stored.status, stored.end_reason) == ("ended", "caller-hangup")


async def test_illegal_transitions_are_refused_logged_and_never_applied(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycle = CallLifecycle(db, clock, instance_id="inst_a")
    call_id = await _routed(lifecycle, apikey, connector_id, "CA2")
    with structlog.testing.capture_logs() as logs:
        assert await lifecycle.end(call_id, EndReason.CALLER_HANGUP) is None, "not answered"
        assert await lifecycle.end(call_id, EndReason.NO_ROUTE) is None, "only at creation"
        assert await lifecycle.end("call_unknown", EndReason.ERROR) is None
    assert [entry["attempted"] for entry in logs] == [
        "end (caller-hangup)",
        "end (no-route)",
        "end (error)",
    ]
    assert all(entry["event"] == "call transition refused" for entry in logs)
    assert logs[0]["status"] == "routed"
    assert await lifecycle.answer(call_id) is not None
    assert await lifecycle.end(call_id, EndReason.NO_START) is None, "answered calls started"
    assert await lifecycle.end(call_id, EndReason.REF_EXPIRED) is None
    failed = await lifecycle.end(call_id, EndReason.ERROR, "unexpected ValueError")
    assert failed is not None and (failed.status, failed.end_detail) == (
        "failed",
        "unexpected ValueError",
    )
    assert await lifecycle.answer(call_id) is None, "no way back from an end"


async def test_refusals_at_the_socket_fail_the_call_with_their_reason(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycle = CallLifecycle(db, clock, instance_id="inst_a")
    for n, reason in enumerate(
        (
            EndReason.SIGNATURE,
            EndReason.HANDSHAKE_REFUSED,
            EndReason.NO_ROOM,
            EndReason.NO_START,
            EndReason.REF_EXPIRED,
        )
    ):
        call_id = await _routed(lifecycle, apikey, connector_id, f"CA-refused-{n}")
        ended = await lifecycle.end(call_id, reason, "why")
        assert ended is not None and (ended.status, ended.end_reason) == ("failed", reason)
    refused = await lifecycle.refuse(
        apikey=apikey,
        connector_id=connector_id,
        provider="twilio",
        provider_call_id="CA-no-route",
        detail="no routing strategy chose a room (tried: default_room)",
    )
    assert (refused.status, refused.end_reason) == ("failed", "no-route")
    assert refused.end_detail == "no routing strategy chose a room (tried: default_room)"
    assert refused.ended_at is not None


async def test_a_retried_webhook_cannot_create_a_second_call(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycle = CallLifecycle(db, clock, instance_id="inst_a")
    first = await _routed(lifecycle, apikey, connector_id, "CA-dup")
    with pytest.raises(DuplicateCallError) as caught:
        await _routed(lifecycle, apikey, connector_id, "CA-dup")
    assert caught.value.call.id == first


async def test_listeners_run_inside_the_transition(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    seen: list[Transition] = []

    async def record(repo: Repository, transition: Transition) -> None:
        seen.append(transition)

    async def explode_on_end(repo: Repository, transition: Transition) -> None:
        if transition.reason is not None:
            raise RuntimeError("the outbox is down")

    committed: list[Transition] = []
    lifecycle = CallLifecycle(
        db, clock, instance_id="inst_a", listeners=[record], committed=[committed.append]
    )
    call_id = await _routed(lifecycle, apikey, connector_id, "CA-listen")
    await lifecycle.answer(call_id)
    lifecycle.listeners.append(explode_on_end)
    with pytest.raises(RuntimeError, match="outbox"):
        await lifecycle.end(call_id, EndReason.ROOM_HANGUP)
    async with transaction(db, clock) as repo:
        stored = await repo.get_call(apikey, call_id)
    assert stored is not None and stored.status == "answered", "rolled back with its listener"
    assert [t.after for t in committed] == [CallStatus.ROUTED, CallStatus.ANSWERED], (
        "a transition that rolled back is never announced as committed"
    )
    assert [(t.before, t.after, t.reason) for t in seen] == [
        (None, CallStatus.ROUTED, None),
        (CallStatus.ROUTED, CallStatus.ANSWERED, None),
        (CallStatus.ANSWERED, CallStatus.ENDED, EndReason.ROOM_HANGUP),
    ]


async def test_expiry_takes_only_unclaimed_calls_past_their_ref(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycle = CallLifecycle(db, clock, instance_id="inst_a")
    waiting = await _routed(lifecycle, apikey, connector_id, "CA-wait")
    claimed = await _routed(lifecycle, apikey, connector_id, "CA-claimed")
    await lifecycle.claim(claimed)
    clock.advance(91)
    assert await lifecycle.unclaimed_expired(grace_seconds=2) == []
    clock.advance(2)
    assert await lifecycle.unclaimed_expired(grace_seconds=2) == [waiting]
    assert await lifecycle.expire(claimed) is None, "a claimed call never expires"
    expired = await lifecycle.expire(waiting)
    assert expired is not None and (expired.status, expired.end_reason) == ("failed", "ref-expired")
    assert await lifecycle.expire(waiting) is None


async def test_racing_ends_apply_once(db: Database, clock: StepClock) -> None:
    apikey, connector_id = await _connector(db, clock)
    lifecycles = [CallLifecycle(db, clock, instance_id=f"inst_{n}") for n in range(8)]
    call_id = await _routed(lifecycles[0], apikey, connector_id, "CA-race")
    reasons = [EndReason.API_HANGUP, EndReason.REF_EXPIRED, EndReason.ERROR, EndReason.SHUTDOWN]
    results = await asyncio.gather(
        *(lc.end(call_id, reasons[n % 4]) for n, lc in enumerate(lifecycles))
    )
    assert sum(result is not None for result in results) == 1


async def test_orphans_are_the_live_calls_of_processes_that_stopped(
    db: Database, clock: StepClock
) -> None:
    apikey, connector_id = await _connector(db, clock)
    dead = CallLifecycle(db, clock, instance_id="inst_dead")
    alive = CallLifecycle(db, clock, instance_id="inst_alive")
    await dead.heartbeat()
    await alive.heartbeat()
    answered = await _routed(dead, apikey, connector_id, "CA-o1")
    await dead.claim(answered)
    await dead.answer(answered)
    claimed = await _routed(dead, apikey, connector_id, "CA-o2")
    await dead.claim(claimed)
    unclaimed = await _routed(dead, apikey, connector_id, "CA-o3")  # may still be claimed
    mine = await _routed(alive, apikey, connector_id, "CA-o4")
    await alive.claim(mine)
    clock.advance(20)
    await alive.heartbeat()
    assert await alive.orphaned(owner_timeout_seconds=30) == []
    clock.advance(15)
    await alive.heartbeat()
    assert sorted(await alive.orphaned(owner_timeout_seconds=30)) == sorted([answered, claimed])
    assert await dead.orphaned(owner_timeout_seconds=30) == [], "nobody else is stale"
    for call_id in (answered, claimed):
        await alive.end(call_id, EndReason.INTERRUPTED, "gone")
    assert await alive.orphaned(owner_timeout_seconds=30) == []
    await alive.expire(unclaimed)
    assert await alive.orphaned(owner_timeout_seconds=30) == []
    async with db.engine.connect() as connection:
        instances = (await connection.execute(text("SELECT id FROM instances"))).scalars().all()
    assert instances == ["inst_alive"], "a dead process holding no call is forgotten"
    await alive.retire()


async def test_older_rows_are_migrated_onto_the_state_machine(database: Database) -> None:
    def upgrade(connection: Connection, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_PATH))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with database.engine.begin() as connection:
        await connection.run_sync(upgrade, "0002")
        await connection.execute(
            text(
                "INSERT INTO api_keys (apikey, secret, name, created_at) "
                "VALUES ('ak_old', 's', 'old', CURRENT_TIMESTAMP)"
            )
        )
        rows = [
            ("c1", "started", None),
            ("c2", "failed", "handshake refused: X-Twilio-Signature is missing"),
            ("c3", "failed", "handshake refused: the connector no longer exists"),
            ("c4", "failed", "no routing strategy chose a room (tried: default_room)"),
            ("c5", "ended", "ended-before-answer"),
            ("c6", "ended", "stream-closed"),
            ("c7", "failed", "something else entirely"),
        ]
        for call_id, status, reason in rows:
            await connection.execute(
                text(
                    "INSERT INTO calls (id, apikey, connector_id, provider, provider_call_id, "
                    "status, end_reason, created_at) VALUES (:id, 'ak_old', 'cn_old', 'twilio', "
                    ":id, :status, :reason, CURRENT_TIMESTAMP)"
                ),
                {"id": call_id, "status": status, "reason": reason},
            )
    await database.migrate()
    async with database.engine.connect() as connection:
        migrated = (
            await connection.execute(
                text("SELECT id, status, end_reason, end_detail FROM calls ORDER BY id")
            )
        ).all()
    assert [tuple(row) for row in migrated] == [
        ("c1", "routed", None, None),
        ("c2", "failed", "signature", "X-Twilio-Signature is missing"),
        ("c3", "failed", "handshake-refused", "the connector no longer exists"),
        ("c4", "failed", "no-route", "no routing strategy chose a room (tried: default_room)"),
        ("c5", "ended", "api-hangup", None),
        ("c6", "ended", "stream-closed", None),
        ("c7", "failed", "error", "something else entirely"),
    ]


def test_only_the_state_machine_changes_a_calls_status() -> None:
    """``insert_call`` and ``update_call`` (and any write to a call's ``status``) appear only in
    calls/state.py and the repository that defines them."""
    allowed = {
        ROOT / "core/callbridge/calls/state.py",
        ROOT / "core/callbridge/store/repository.py",
        # webhook delivery rows have a status of their own, changed only by these two
        ROOT / "core/callbridge/webhooks/store.py",
        ROOT / "core/callbridge/webhooks/delivery.py",
    }
    offenders = []
    for path in sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        if path in allowed or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"insert_call", "update_call"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    is_self = isinstance(target, ast.Attribute) and (
                        isinstance(target.value, ast.Name) and target.value.id == "self"
                    )
                    if (
                        not is_self
                        and isinstance(target, ast.Attribute)
                        and target.attr
                        in {
                            "status",
                            "end_reason",
                        }
                    ):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{target.attr}")
    assert offenders == []
