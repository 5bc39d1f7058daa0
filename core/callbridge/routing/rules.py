"""Routing rules: what a rule matches, where it sends a call, and why it did or did not.

A rule is pure data (:class:`RoutingRule`); :func:`evaluate` checks it against a call's facts
and says, in words an operator reads, what matched and what did not. The ``phone_rules`` and
``default_rule`` strategies, and the explain API, are built on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from callbridge.routing.numbers import Address
from callbridge.routing.windows import TimeWindow
from callbridge.store.ids import is_room_id

DispatchType = Literal["room", "caller", "callee"]
RuleSource = Literal["api", "config"]
CodecName = Literal["PCMU", "PCMA", "L16"]
_ROOM_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")
_SHOWN_VALUES = 5


@dataclass(frozen=True)
class RuleMatch:
    """What a call must look like; every condition given must hold, an empty one always does.

    Attributes:
        to: called numbers (E.164) or identities, exactly.
        to_prefixes: called-number prefixes (``+1415``).
        from_: caller numbers (E.164) or identities, exactly.
        from_prefixes: caller-number prefixes.
        connector_ids: connectors whose calls the rule takes.
        providers: providers whose calls the rule takes.
        window: when the rule applies.
    """

    to: tuple[str, ...] = ()
    to_prefixes: tuple[str, ...] = ()
    from_: tuple[str, ...] = ()
    from_prefixes: tuple[str, ...] = ()
    connector_ids: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    window: TimeWindow | None = None

    def identity(self) -> tuple[object, ...]:
        """The match as a comparable value: two rules with equal identities and priority
        conflict."""
        return (
            frozenset(self.to),
            frozenset(self.to_prefixes),
            frozenset(self.from_),
            frozenset(self.from_prefixes),
            frozenset(self.connector_ids),
            frozenset(self.providers),
            self.window,
        )


@dataclass(frozen=True)
class Dispatch:
    """Where a matching call goes: a fixed room (``room``: ``room_id``), a room per caller
    (``caller``: ``room_prefix`` + the caller) or per called number (``callee``)."""

    type: DispatchType
    room_id: str | None = None
    room_prefix: str = ""

    def describe(self) -> str:
        if self.type == "room":
            return f"room {self.room_id}"
        return f"room {self.room_prefix}<{'caller' if self.type == 'caller' else 'callee'}>"


@dataclass(frozen=True)
class RoutingRule:
    """One routing rule of an API key.

    Attributes:
        id: ``rr_…`` (API) or the id the YAML gives it.
        apikey: the API key owning it.
        name: a label.
        priority: higher is tried first; ties go to the older rule, then the smaller id.
        match: the conditions.
        dispatch: the room it chooses.
        transport: the room transport (instance) calls go to; ``None``: the default.
        region: the region whose ingest URL the call's media uses.
        codec: the provider-leg codec (``PCMU``, ``PCMA``, ``L16``).
        metadata: free strings carried into the call, its events and its room members.
        source: ``api`` or ``config`` (YAML, read-only through the API).
        created_at: when it was created (the tie-break after priority).
    """

    id: str
    apikey: str
    name: str
    priority: int
    match: RuleMatch
    dispatch: Dispatch
    transport: str | None = None
    region: str | None = None
    codec: CodecName | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: RuleSource = "api"
    created_at: datetime | None = None


@dataclass(frozen=True)
class CallFacts:
    """What rules look at. ``from_``/``to`` are normalised (see :mod:`.numbers`)."""

    connector_id: str
    provider: str
    from_: Address | None
    to: Address | None
    at: datetime


@dataclass(frozen=True)
class RuleVerdict:
    """One rule checked against one call: whether it matched, the room it gives, and the
    reasons (every failed condition when it did not match; what matched when it did)."""

    rule_id: str
    name: str
    priority: int
    matched: bool
    reasons: tuple[str, ...]
    room_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "ruleId": self.rule_id,
            "name": self.name,
            "priority": self.priority,
            "matched": self.matched,
            "roomId": self.room_id,
            "reasons": list(self.reasons),
        }


def precedence(rules: Iterable[RoutingRule]) -> list[RoutingRule]:
    """``rules`` in the order they are tried: higher priority first, then older, then by id."""
    return sorted(rules, key=_precedence_key)


def _precedence_key(rule: RoutingRule) -> tuple[int, float, str]:
    created = rule.created_at.timestamp() if rule.created_at is not None else 0.0
    return (-rule.priority, created, rule.id)


def evaluate(rule: RoutingRule, facts: CallFacts) -> RuleVerdict:
    """Check ``rule`` against ``facts``, with the reasons."""
    failed: list[str] = []
    held: list[str] = []
    match = rule.match
    _check_address("to", facts.to, match.to, match.to_prefixes, failed, held)
    _check_address("from", facts.from_, match.from_, match.from_prefixes, failed, held)
    if match.connector_ids:
        if facts.connector_id in match.connector_ids:
            held.append(f"connector {facts.connector_id}")
        else:
            failed.append(f"connector {facts.connector_id} not in {_shown(match.connector_ids)}")
    if match.providers:
        if facts.provider in match.providers:
            held.append(f"provider {facts.provider}")
        else:
            failed.append(f"provider {facts.provider} not in {_shown(match.providers)}")
    if match.window is not None:
        if match.window.contains(facts.at):
            held.append(f"within hours {match.window.describe()}")
        else:
            failed.append(f"outside hours {match.window.describe()}")
    if failed:
        return RuleVerdict(rule.id, rule.name, rule.priority, False, tuple(failed))
    room_id, problem = room_for(rule.dispatch, facts)
    if room_id is None:
        return RuleVerdict(rule.id, rule.name, rule.priority, False, (problem,))
    reasons = tuple(held) or ("the rule matches every call",)
    return RuleVerdict(rule.id, rule.name, rule.priority, True, reasons, room_id)


def first_match(
    rules: Sequence[RoutingRule], facts: CallFacts
) -> tuple[RoutingRule | None, list[RuleVerdict]]:
    """The first rule in precedence order that matches, and the verdicts up to it."""
    verdicts: list[RuleVerdict] = []
    for rule in precedence(rules):
        verdict = evaluate(rule, facts)
        verdicts.append(verdict)
        if verdict.matched:
            return rule, verdicts
    return None, verdicts


def room_for(dispatch: Dispatch, facts: CallFacts) -> tuple[str | None, str]:
    """The room ``dispatch`` gives this call, or ``None`` and why it gives none."""
    if dispatch.type == "room":
        return dispatch.room_id, ""
    party = facts.from_ if dispatch.type == "caller" else facts.to
    label = "caller" if dispatch.type == "caller" else "callee"
    if party is None:
        return None, f"a room per {label} needs the {label}'s number, and the call has none"
    room_id = dispatch.room_prefix + _ROOM_UNSAFE.sub("_", party.key.removeprefix("+"))
    if not is_room_id(room_id):
        return None, f"the {label} {party.key} makes no valid room id"
    return room_id, ""


def _check_address(
    label: str,
    party: Address | None,
    exact: tuple[str, ...],
    prefixes: tuple[str, ...],
    failed: list[str],
    held: list[str],
) -> None:
    if not exact and not prefixes:
        return
    if party is None:
        failed.append(f"{label} is absent")
        return
    key = party.key
    if key in exact:
        held.append(f"{label} {key}")
        return
    if party.e164 is not None and any(party.e164.startswith(prefix) for prefix in prefixes):
        held.append(f"{label} {key} starts with {_matching_prefix(party.e164, prefixes)}")
        return
    if party.e164 is None and prefixes and not exact:
        failed.append(f"{label} {key} is not a phone number, so no prefix matches it")
        return
    wanted = []
    if exact:
        wanted.append(_shown(exact))
    if prefixes:
        wanted.append(f"prefixes {_shown(prefixes)}")
    failed.append(f"{label} {key} not in {' or '.join(wanted)}")


def _matching_prefix(number: str, prefixes: tuple[str, ...]) -> str:
    return max((prefix for prefix in prefixes if number.startswith(prefix)), key=len)


def _shown(values: Sequence[str]) -> str:
    shown = list(values[:_SHOWN_VALUES])
    more = len(values) - len(shown)
    return "[" + ", ".join(shown) + (f", … {more} more" if more else "") + "]"
