"""Routing rules between their API/YAML shape (:mod:`callbridge.routing.shapes`), the
engine's :class:`~callbridge.routing.rules.RoutingRule` and the store's JSON ``spec``.

Building a rule normalises it: numbers to E.164 (national formats with the rule's
``defaultCountry``), prefixes to ``+`` and digits, days and hours checked, the time zone known.
Every problem raises :class:`RuleError` naming the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import msgspec

from callbridge.routing.numbers import rule_address, rule_prefix
from callbridge.routing.rules import Dispatch, RoutingRule, RuleMatch, RuleSource
from callbridge.routing.shapes import (
    CalleeDispatch,
    CallerDispatch,
    DispatchShape,
    MatchShape,
    RoomDispatch,
    RuleBody,
    TimeWindowShape,
)
from callbridge.routing.windows import TimeWindow


class RuleError(ValueError):
    """A rule field whose value cannot be accepted: ``field`` as a dotted path
    (``match.to[0]``), ``problem`` what is wrong and what would be accepted."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class RuleChecks:
    """What a rule may name on this server: ``None`` skips a check (a rule read back from the
    store was checked when it was written)."""

    transports: Collection[str] | None = None
    regions: Collection[str] | None = None
    providers: Collection[str] | None = None
    default_country: str | None = None
    """Country for national-format numbers of rules that name none (``routing.default_country``)."""


def build_rule(
    body: RuleBody,
    *,
    rule_id: str,
    apikey: str,
    source: RuleSource,
    created_at: datetime | None,
    checks: RuleChecks = RuleChecks(),
) -> RoutingRule:
    """The engine's rule for ``body``; raises :class:`RuleError` naming the bad field."""
    match = _match(body.match, checks)
    dispatch = _dispatch(body.dispatch)
    _check_choice("transport", body.transport, checks.transports, "room transports")
    _check_choice("region", body.region, checks.regions, "regions")
    return RoutingRule(
        id=rule_id,
        apikey=apikey,
        name=body.name,
        priority=body.priority,
        match=match,
        dispatch=dispatch,
        transport=body.transport,
        region=body.region,
        codec=body.codec,
        metadata=dict(body.metadata),
        source=source,
        created_at=created_at,
    )


def body_of(rule: RoutingRule) -> RuleBody:
    """The API shape of ``rule`` (normalised values)."""
    match = rule.match
    window = match.window
    return RuleBody(
        dispatch=_dispatch_shape(rule.dispatch),
        match=MatchShape(
            to=list(match.to),
            to_prefixes=list(match.to_prefixes),
            from_=list(match.from_),
            from_prefixes=list(match.from_prefixes),
            connector_ids=list(match.connector_ids),
            providers=list(match.providers),
            time_window=None if window is None else TimeWindowShape(**_window_fields(window)),  # type: ignore[arg-type]
        ),
        name=rule.name,
        priority=rule.priority,
        transport=rule.transport,
        region=rule.region,
        codec=rule.codec,
        metadata=dict(rule.metadata),
    )


def _window_fields(window: TimeWindow) -> dict[str, object]:
    data = window.to_json()
    return {
        "days": data["days"],
        "start": data["start"],
        "end": data["end"],
        "time_zone": data["timeZone"],
    }


def spec_json(rule: RoutingRule) -> str:
    """What the store keeps of ``rule`` besides its columns."""
    return msgspec.json.encode(body_of(rule)).decode()


def rule_from_spec(spec: str, *, rule_id: str, apikey: str, created_at: datetime) -> RoutingRule:
    """A stored rule back as the engine's rule."""
    body = msgspec.json.decode(spec, type=RuleBody)
    return build_rule(body, rule_id=rule_id, apikey=apikey, source="api", created_at=created_at)


def match_key(match: RuleMatch) -> str:
    """A digest of the normalised match: equal for matches that take the same calls."""
    window = match.window
    canonical = [
        sorted(set(match.to)),
        sorted(set(match.to_prefixes)),
        sorted(set(match.from_)),
        sorted(set(match.from_prefixes)),
        sorted(set(match.connector_ids)),
        sorted(set(match.providers)),
        None if window is None else window.to_json(),
    ]
    return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()


def _match(shape: MatchShape, checks: RuleChecks) -> RuleMatch:
    country = shape.default_country.upper() if shape.default_country else checks.default_country
    window = None
    if shape.time_window is not None:
        w = shape.time_window
        try:
            window = TimeWindow.parse(w.days, w.start, w.end, w.time_zone)
        except ValueError as exc:
            raise RuleError("match.timeWindow", str(exc)) from None
    for index, provider in enumerate(shape.providers):
        _check_choice(f"match.providers[{index}]", provider, checks.providers, "providers")
    return RuleMatch(
        to=_addresses("match.to", shape.to, country),
        to_prefixes=_prefixes("match.toPrefixes", shape.to_prefixes),
        from_=_addresses("match.from", shape.from_, country),
        from_prefixes=_prefixes("match.fromPrefixes", shape.from_prefixes),
        connector_ids=tuple(dict.fromkeys(shape.connector_ids)),
        providers=tuple(dict.fromkeys(shape.providers)),
        window=window,
    )


def _addresses(field: str, values: list[str], country: str | None) -> tuple[str, ...]:
    normalised: list[str] = []
    for index, value in enumerate(values):
        try:
            normalised.append(rule_address(value, country))
        except ValueError as exc:
            raise RuleError(f"{field}[{index}]", str(exc)) from None
    return tuple(dict.fromkeys(normalised))


def _prefixes(field: str, values: list[str]) -> tuple[str, ...]:
    normalised: list[str] = []
    for index, value in enumerate(values):
        try:
            normalised.append(rule_prefix(value))
        except ValueError as exc:
            raise RuleError(f"{field}[{index}]", str(exc)) from None
    return tuple(dict.fromkeys(normalised))


def _dispatch(shape: DispatchShape) -> Dispatch:
    if isinstance(shape, RoomDispatch):
        return Dispatch("room", room_id=shape.room_id)
    if isinstance(shape, CallerDispatch):
        return Dispatch("caller", room_prefix=shape.room_prefix)
    return Dispatch("callee", room_prefix=shape.room_prefix)


def _dispatch_shape(dispatch: Dispatch) -> DispatchShape:
    if dispatch.type == "room":
        assert dispatch.room_id is not None
        return RoomDispatch(room_id=dispatch.room_id)
    if dispatch.type == "caller":
        return CallerDispatch(room_prefix=dispatch.room_prefix)
    return CalleeDispatch(room_prefix=dispatch.room_prefix)


def _check_choice(
    field: str, value: str | None, choices: Collection[str] | None, what: str
) -> None:
    if value is None or choices is None or value in choices:
        return
    if not choices:
        raise RuleError(field, f"{value!r} is not known: this server has no {what} configured")
    raise RuleError(field, f"must be one of: {', '.join(sorted(choices))}")
