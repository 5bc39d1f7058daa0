"""The call state machine: the one owner of a call's status.

A call is ``routed`` when its webhook was answered with markup carrying a ref, ``answered``
when its media socket claimed the ref and joined the room, then ``ended`` (it ran its course)
or ``failed`` (it never could). Every change goes through :class:`CallLifecycle`, in one store
transaction per transition; transitions the table below does not allow are refused and logged,
never applied. Listeners run inside that transaction (the lifecycle events hook in there), so a
transition and what it causes commit together or not at all.

::

    (webhook) ──route──▶ routed ──answer──▶ answered ──end──▶ ended | failed
        │                  │ claim (a socket took the ref; still routed)
        └──refuse──▶ failed└──end──▶ ended | failed

The end reason decides the end status: :attr:`EndReason.status`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import structlog

from callbridge.store.db import Database
from callbridge.store.models import Call
from callbridge.store.repository import DuplicateCallError, Repository, transaction

log = structlog.get_logger("callbridge.calls.state")

__all__ = [
    "CallLifecycle",
    "CallStatus",
    "DuplicateCallError",
    "EndReason",
    "Transition",
    "TransitionListener",
]


class CallStatus(StrEnum):
    """Where a call is in its life."""

    ROUTED = "routed"
    """The webhook was answered with markup; the provider has not opened the media socket."""
    ANSWERED = "answered"
    """The media socket claimed the ref and the call joined its room."""
    ENDED = "ended"
    """The call ran its course (someone hung up, or it hit a limit)."""
    FAILED = "failed"
    """The call could not be connected, or broke."""


class EndReason(StrEnum):
    """Why a call ended or failed; each reason implies its end status."""

    CALLER_HANGUP = "caller-hangup"
    """The provider said the caller hung up (its ``stop``), or a SIP caller sent BYE."""
    CANCELLED = "cancelled"
    """The caller gave up before the call was answered (a SIP CANCEL)."""
    STREAM_CLOSED = "stream-closed"
    """The provider closed the media socket without a ``stop``."""
    ROOM_HANGUP = "room-hangup"
    """A room participant hung the call up."""
    API_HANGUP = "api-hangup"
    """``POST /v2/calls/{id}/hangup``."""
    MAX_DURATION = "max-duration"
    """The call reached ``server.max_call_seconds``."""
    ROOM_CLOSED = "room-closed"
    """The room transport ended the call's leg (the room closed or failed)."""
    SHUTDOWN = "shutdown"
    """The server holding the call stopped."""
    NO_ROUTE = "no-route"
    """No routing strategy chose a room; the provider was answered with a polite reject."""
    REF_EXPIRED = "ref-expired"
    """The provider never opened the media socket before the ref expired."""
    HANDSHAKE_REFUSED = "handshake-refused"
    """The media socket was refused for another reason than its signature (e.g. the
    connector was deleted meanwhile)."""
    SIGNATURE = "signature"
    """The media socket's handshake signature was missing or wrong."""
    NO_ROOM = "no-room"
    """The call could not join its room (unknown transport, or the transport refused)."""
    NO_START = "no-start"
    """The media socket never sent its ``start``."""
    AGENT_UNAVAILABLE = "agent-unavailable"
    """The agent (or other member) the call was sent to could not be reached, and no fallback
    room was configured."""
    INTERRUPTED = "interrupted"
    """The server process holding the call died; another one closed the record."""
    ERROR = "error"
    """An unexpected error ended the call (logged with its traceback)."""

    @property
    def status(self) -> CallStatus:
        """The end status this reason gives a call."""
        return CallStatus.ENDED if self in _ENDED_REASONS else CallStatus.FAILED


MAX_END_DETAIL_CHARS: Final = 2000
"""The length of ``calls.end_detail``."""

_ENDED_REASONS: Final = frozenset(
    {
        EndReason.CALLER_HANGUP,
        EndReason.CANCELLED,
        EndReason.STREAM_CLOSED,
        EndReason.ROOM_HANGUP,
        EndReason.API_HANGUP,
        EndReason.MAX_DURATION,
        EndReason.ROOM_CLOSED,
        EndReason.SHUTDOWN,
    }
)
_ROUTED = frozenset({CallStatus.ROUTED})
_ANSWERED = frozenset({CallStatus.ANSWERED})
_LIVE = frozenset({CallStatus.ROUTED, CallStatus.ANSWERED})

ENDS_FROM: Final[dict[EndReason, frozenset[CallStatus]]] = {
    EndReason.CALLER_HANGUP: _ANSWERED,
    EndReason.CANCELLED: _ROUTED,
    EndReason.STREAM_CLOSED: _ANSWERED,
    EndReason.ROOM_HANGUP: _ANSWERED,
    EndReason.MAX_DURATION: _ANSWERED,
    EndReason.ROOM_CLOSED: _ANSWERED,
    EndReason.API_HANGUP: _LIVE,
    EndReason.SHUTDOWN: _LIVE,
    EndReason.INTERRUPTED: _LIVE,
    EndReason.ERROR: _LIVE,
    EndReason.REF_EXPIRED: _ROUTED,
    EndReason.HANDSHAKE_REFUSED: _ROUTED,
    EndReason.SIGNATURE: _ROUTED,
    EndReason.NO_ROOM: _ROUTED,
    EndReason.NO_START: _ROUTED,
    EndReason.AGENT_UNAVAILABLE: _ANSWERED,
    EndReason.NO_ROUTE: frozenset(),  # only at creation: see CallLifecycle.refuse
}
"""The statuses a call may end from, per reason: the transition table of the end states."""


@dataclass(frozen=True)
class Transition:
    """One applied change of a call's state.

    Attributes:
        call: the call row after the change.
        before: its status before (``None`` when the call was just created).
        after: its status now.
        reason: why it ended (end transitions only).
        detail: free text explaining the reason (no secrets), e.g. the signature problem.
    """

    call: Call
    before: CallStatus | None
    after: CallStatus
    reason: EndReason | None = None
    detail: str | None = None
    media: Mapping[str, int] | None = None
    """The call's media figures, on an end after bridging (frames each way, underruns…)."""


TransitionListener = Callable[[Repository, Transition], Awaitable[None]]
"""Runs inside the transition's transaction; raising rolls the transition back."""

EventRecorder = Callable[[Repository, Call, str, Mapping[str, Any]], Awaitable[str]]
"""Writes one event of a call (type, data) inside the caller's transaction; returns its id."""


class CallLifecycle:
    """The only code that changes a call's status.

    Args:
        db: the store.
        clock: wall-clock seconds, for every timestamp.
        instance_id: this server process (it becomes the owner of the calls it routes and
            claims).
        listeners: run inside each transition's transaction, in order.
        committed: told of each transition once its transaction committed (counters that must
            not count a transition that rolled back); they must not block or raise.
        recorder: writes the events of a call that are not status changes (DTMF, members
            joining and leaving), through :meth:`record_event`.
    """

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        *,
        instance_id: str,
        listeners: Sequence[TransitionListener] = (),
        committed: Sequence[Callable[[Transition], None]] = (),
        recorder: EventRecorder | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.instance_id = instance_id
        self.listeners = list(listeners)
        self.committed = list(committed)
        self.recorder = recorder

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def _notify(self, repo: Repository, transition: Transition) -> None:
        for listener in self.listeners:
            await listener(repo, transition)

    def _announce(self, transition: Transition) -> Call:
        """Tell the ``committed`` listeners (after the commit); returns the call."""
        for listener in self.committed:
            try:
                listener(transition)
            except Exception:
                log.exception("a committed-transition listener failed")
        return transition.call

    async def route(
        self,
        *,
        call_id: str,
        apikey: str,
        connector_id: str,
        provider: str,
        provider_call_id: str,
        room_id: str,
        ref_ttl_seconds: float,
        from_number: str | None = None,
        to_number: str | None = None,
        account_id: str | None = None,
        region: str | None = None,
        route_strategy: str | None = None,
        route_rule_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Call:
        """Create the ``routed`` call ``call_id`` (the id its ref record carries), whose ref
        expires ``ref_ttl_seconds`` from now; ``region`` and the strategy and rule that routed
        it are recorded with it.

        Raises:
            DuplicateCallError: the connector already has this provider call (a retried
                webhook); nothing changed.
        """
        return await self._create(
            CallStatus.ROUTED,
            call_id=call_id,
            apikey=apikey,
            connector_id=connector_id,
            provider=provider,
            provider_call_id=provider_call_id,
            from_number=from_number,
            to_number=to_number,
            room_id=room_id,
            account_id=account_id,
            ref_expires_at=self._now() + timedelta(seconds=ref_ttl_seconds),
            region=region,
            route_strategy=route_strategy,
            route_rule_id=route_rule_id,
            route_metadata=json.dumps(dict(metadata), separators=(",", ":")) if metadata else None,
        )

    async def refuse(
        self,
        *,
        apikey: str,
        connector_id: str,
        provider: str,
        provider_call_id: str,
        detail: str,
        from_number: str | None = None,
        to_number: str | None = None,
        account_id: str | None = None,
    ) -> Call:
        """Create a call that failed at once with :attr:`EndReason.NO_ROUTE`.

        Raises:
            DuplicateCallError: as :meth:`route`.
        """
        return await self._create(
            EndReason.NO_ROUTE.status,
            EndReason.NO_ROUTE,
            detail,
            apikey=apikey,
            connector_id=connector_id,
            provider=provider,
            provider_call_id=provider_call_id,
            from_number=from_number,
            to_number=to_number,
            account_id=account_id,
        )

    async def _create(
        self,
        status: CallStatus,
        reason: EndReason | None = None,
        detail: str | None = None,
        **fields: Any,
    ) -> Call:
        async with transaction(self.db, self.clock, write=True) as repo:
            call = await repo.insert_call(
                status=status,
                owner_id=self.instance_id,
                end_reason=reason,
                end_detail=_clipped(detail),
                **fields,
            )
            transition = Transition(call, None, status, reason, detail)
            await self._notify(repo, transition)
        return self._announce(transition)

    async def claim(self, call_id: str) -> Call | None:
        """Record that this process's media socket claimed the call's ref (it stays
        ``routed``, now owned by this process, and its ref can no longer expire).

        Returns ``None`` (logged) when the call is no longer waiting for its socket: it was
        ended meanwhile (API hang-up, expiry) or claimed already.
        """
        async with transaction(self.db, self.clock, write=True) as repo:
            call = await repo.update_call(
                call_id,
                _ROUTED,
                {"claimed_at": repo.now(), "owner_id": self.instance_id},
                unclaimed_only=True,
            )
            if call is None:
                await self._refused(repo, call_id, "claim")
        return call

    async def answer(self, call_id: str) -> Call | None:
        """``routed`` → ``answered``; ``None`` (logged) when not allowed."""
        async with transaction(self.db, self.clock, write=True) as repo:
            call = await repo.update_call(
                call_id,
                _ROUTED,
                {"status": CallStatus.ANSWERED, "answered_at": repo.now()},
            )
            if call is None:
                await self._refused(repo, call_id, "answer")
                return None
            transition = Transition(call, CallStatus.ROUTED, CallStatus.ANSWERED)
            await self._notify(repo, transition)
        return self._announce(transition)

    async def record_event(
        self, call_id: str, event_type: str, data: Mapping[str, Any]
    ) -> str | None:
        """Write an event of a live call that changes no status (``call-dtmf``,
        ``participant-joined``…); its id, or ``None`` when the call is over or nothing records."""
        if self.recorder is None:
            return None
        async with transaction(self.db, self.clock, write=True) as repo:
            call = await repo.get_call_by_id(call_id)
            if call is None or call.status not in _LIVE:
                return None
            return await self.recorder(repo, call, event_type, data)

    async def move(self, call_id: str, room_id: str) -> Call | None:
        """Record that an ``answered`` call moved to ``room_id`` (a transfer); its status does
        not change. ``None`` when the call is no longer answered."""
        async with transaction(self.db, self.clock, write=True) as repo:
            return await repo.update_call(call_id, (CallStatus.ANSWERED,), {"room_id": room_id})

    async def end(
        self,
        call_id: str,
        reason: EndReason,
        detail: str | None = None,
        media: Mapping[str, int] | None = None,
    ) -> Call | None:
        """End the call with ``reason`` (which decides ``ended`` or ``failed``); ``media``:
        its media figures, if it was bridged here.

        Returns the updated call, or ``None`` (logged) when the reason is not allowed from
        the call's status, e.g. the call had already ended: the first end wins.
        """
        return await self._end(call_id, reason, detail, unclaimed_only=False, media=media)

    async def expire(self, call_id: str) -> Call | None:
        """End a ``routed`` call whose ref expired unclaimed (:attr:`EndReason.REF_EXPIRED`);
        ``None`` when a socket claimed it meanwhile or it ended otherwise."""
        return await self._end(call_id, EndReason.REF_EXPIRED, None, unclaimed_only=True)

    async def _end(
        self,
        call_id: str,
        reason: EndReason,
        detail: str | None,
        *,
        unclaimed_only: bool,
        media: Mapping[str, int] | None = None,
    ) -> Call | None:
        allowed = ENDS_FROM[reason]
        async with transaction(self.db, self.clock, write=True) as repo:
            before = await repo.get_call_by_id(call_id)
            call, previous = None, None
            if before is not None and before.status in allowed:
                previous = CallStatus(before.status)
                call = await repo.update_call(
                    call_id,
                    (previous,),
                    {
                        "status": reason.status,
                        "end_reason": reason,
                        "end_detail": _clipped(detail),
                        "ended_at": repo.now(),
                        **(
                            {"media": json.dumps(dict(media), separators=(",", ":"))}
                            if media
                            else {}
                        ),
                    },
                    unclaimed_only=unclaimed_only,
                )
            if call is None:
                await self._refused(repo, call_id, f"end ({reason})")
                return None
            transition = Transition(call, previous, reason.status, reason, detail, media)
            await self._notify(repo, transition)
        return self._announce(transition)

    async def _refused(self, repo: Repository, call_id: str, attempted: str) -> None:
        current = await repo.get_call_by_id(call_id)
        log.info(
            "call transition refused",
            call_id=call_id,
            attempted=attempted,
            status=current.status if current else None,
            end_reason=current.end_reason if current else None,
        )

    async def heartbeat(self) -> None:
        """Record that this process is alive (creates its instance row the first time)."""
        async with transaction(self.db, self.clock, write=True) as repo:
            await repo.record_heartbeat(self.instance_id, socket.gethostname(), os.getpid())

    async def retire(self) -> None:
        """Forget this process's instance row (a clean stop)."""
        async with transaction(self.db, self.clock, write=True) as repo:
            await repo.forget_instance(self.instance_id)

    async def unclaimed_expired(self, grace_seconds: float, limit: int = 500) -> list[str]:
        """Calls whose ref expired unclaimed more than ``grace_seconds`` ago."""
        async with transaction(self.db, self.clock) as repo:
            moment = repo.now() - timedelta(seconds=grace_seconds)
            return await repo.unclaimed_calls_expired_before(moment, limit)

    async def orphaned(self, owner_timeout_seconds: float, limit: int = 500) -> list[str]:
        """Live calls held by other processes that stopped heartbeating
        ``owner_timeout_seconds`` ago; also forgets such processes once they hold no live
        call. This process's own calls are never orphans."""
        async with transaction(self.db, self.clock) as repo:
            alive_since = repo.now() - timedelta(seconds=owner_timeout_seconds)
            orphans = await repo.calls_of_dead_owners(
                alive_since, limit, alive_owner=self.instance_id
            )
        if not orphans:
            async with transaction(self.db, self.clock, write=True) as repo:
                await repo.forget_instances_dead_since(alive_since)
        return orphans


def _clipped(detail: str | None) -> str | None:
    """``detail`` cut to what ``calls.end_detail`` holds (``None`` for empty)."""
    return detail[:MAX_END_DETAIL_CHARS] if detail else None
