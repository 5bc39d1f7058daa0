"""Lifecycle events: built from the call state machine's transitions (and from what happens in
a bridged call), written in the same transaction as the change, each with one delivery row per
subscription that wants it.

The envelope is VideoSDK's, ``{"webhookType": …, "data": {…}}``, as compact JSON with no
non-integral floats and no integer above 2^53, so that ``JSON.stringify(JSON.parse(body))`` is
the body itself (receivers that re-serialise still verify the signature).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from callbridge.api.shapes import format_timestamp
from callbridge.calls.state import CallStatus, EndReason, Transition
from callbridge.store.models import Call
from callbridge.store.repository import Repository
from callbridge.telemetry import current_trace_parent
from callbridge.webhooks import store

CALL_STARTED: Final = "call-started"
CALL_ANSWERED: Final = "call-answered"
CALL_HANGUP: Final = "call-hangup"
CALL_FAILED: Final = "call-failed"
CALL_DTMF: Final = "call-dtmf"
PARTICIPANT_JOINED: Final = "participant-joined"
PARTICIPANT_LEFT: Final = "participant-left"
PING: Final = "ping"
EVENT_TYPES: Final = (
    CALL_STARTED,
    CALL_ANSWERED,
    CALL_HANGUP,
    CALL_FAILED,
    CALL_DTMF,
    PARTICIPANT_JOINED,
    PARTICIPANT_LEFT,
)
"""The event types a subscription may ask for (``ping`` is sent by the test endpoint only)."""
MAX_SAFE_INTEGER: Final = 2**53 - 1

_ENDED_BY: Final[Mapping[EndReason, str]] = {
    EndReason.CALLER_HANGUP: "caller",
    EndReason.STREAM_CLOSED: "caller",
    EndReason.ROOM_HANGUP: "room",
    EndReason.API_HANGUP: "api",
}


def ended_by(reason: EndReason) -> str:
    """Who ended a call: ``caller``, ``room``, ``api`` or ``system``."""
    return _ENDED_BY.get(reason, "system")


def encode(envelope: Mapping[str, Any]) -> str:
    """Compact JSON, refusing what would not survive a JavaScript round trip."""
    _check_json_safe(envelope)
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def _check_json_safe(value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is above 2^53 - 1")
        return
    if isinstance(value, float):
        raise ValueError("events carry no floats (durations are integer milliseconds)")
    if isinstance(value, Mapping):
        for item in value.values():
            _check_json_safe(item)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json_safe(item)
        return
    raise TypeError(f"not JSON: {type(value).__name__}")


def call_fields(call: Call) -> dict[str, Any]:
    """What every call event says about its call."""
    return {
        "callId": call.id,
        "connectorId": call.connector_id,
        "roomId": call.room_id,
        "providerCallId": call.provider_call_id,
        "provider": call.provider,
        "from": call.from_number,
        "to": call.to_number,
        "region": call.region,
        "metadata": json.loads(call.route_metadata) if call.route_metadata else {},
    }


def transition_event(transition: Transition) -> tuple[str, dict[str, Any]] | None:
    """The event type and data a transition emits, or ``None`` (a claim emits nothing)."""
    call, after = transition.call, transition.after
    data = call_fields(call)
    if transition.before is None and after is CallStatus.ROUTED:
        return CALL_STARTED, {**data, "status": "started"}
    if after is CallStatus.ANSWERED:
        return CALL_ANSWERED, {**data, "status": "answered", "answeredAt": _ts(call.answered_at)}
    if after in (CallStatus.ENDED, CallStatus.FAILED):
        reason = transition.reason or EndReason.ERROR
        data.update(
            status="hangup" if after is CallStatus.ENDED else "failed",
            endReason=reason.value,
            endDetail=transition.detail,
            endedBy=ended_by(reason),
            startedAt=_ts(call.created_at),
            answeredAt=_ts(call.answered_at),
            endedAt=_ts(call.ended_at),
            durationMs=_duration_ms(call.answered_at, call.ended_at),
            media=dict(transition.media or {}),
        )
        return (CALL_HANGUP if after is CallStatus.ENDED else CALL_FAILED), data
    return None


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _duration_ms(start: datetime | None, end: datetime | None) -> int:
    if start is None or end is None:
        return 0
    return max(0, round((end - start).total_seconds() * 1000))


async def record(repo: Repository, call: Call, event_type: str, data: Mapping[str, Any]) -> str:
    """Write one event of ``call`` (numbered after its last) and its deliveries; returns the
    event id. ``data`` adds to what every call event says (:func:`call_fields`). Runs inside
    the caller's transaction."""
    seq = await store.next_call_seq(repo.session, call.id)
    now = repo.now()
    event_id = store.new_event_id()
    envelope = {
        "webhookType": event_type,
        "data": {
            "eventId": event_id,
            "sequence": seq,
            "timestamp": format_timestamp(now),
            **call_fields(call),
            **data,
        },
    }
    body = encode(envelope)
    await store.insert_event(
        repo.session,
        event_id=event_id,
        apikey=call.apikey,
        call_id=call.id,
        connector_id=call.connector_id,
        room_id=call.room_id,
        seq=seq,
        event_type=event_type,
        body=body,
        now=now,
        trace_parent=current_trace_parent(),
    )
    return event_id


class EventWriter:
    """The call state machine's listener that turns transitions into events."""

    async def __call__(self, repo: Repository, transition: Transition) -> None:
        emitted = transition_event(transition)
        if emitted is not None:
            event_type, data = emitted
            await record(repo, transition.call, event_type, data)
