"""The rule engine: E.164 normalisation, time windows (across DST), matching with reasons,
precedence, dispatch types, regions, and the chain's precedence of strategies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from callbridge.protocols import (
    CallInfo,
    ConnectorView,
    Route,
    RouteDecision,
    RoutingContext,
)
from callbridge.routing.chain import route_call
from callbridge.routing.numbers import address, country_of, rule_address, rule_prefix, to_e164
from callbridge.routing.regions import choose_region, home_country
from callbridge.routing.rules import (
    CallFacts,
    Dispatch,
    RoutingRule,
    RuleMatch,
    evaluate,
    first_match,
    precedence,
    room_for,
)
from callbridge.routing.windows import TimeWindow, describe_days, parse_days
from callbridge.settings import RoutingSettings

NOON_UTC = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)  # a Monday, 12:00 in New York


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("given", "country", "expected"),
    [
        ("+14155550100", None, "+14155550100"),
        ("14155550100", None, "+14155550100"),  # without +: tried as international
        ("+1 (415) 555-0100", None, "+14155550100"),
        ("(415) 555-0100", "US", "+14155550100"),  # national, with the country
        ("415.555.0100", "US", "+14155550100"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", None, "+442079460958"),
        ("09876543210", "IN", "+919876543210"),
        ("98765 43210", "IN", "+919876543210"),
        ("tel:+14155550100", None, "+14155550100"),
    ],
)
def test_numbers_normalise_to_e164(given: str, country: str | None, expected: str) -> None:
    assert to_e164(given, country) == expected


@pytest.mark.parametrize(
    "identity",
    [
        "client:alice",
        "sip:bob@example.com",
        "sips:desk@pbx.example",
        "anonymous",
        "Restricted",
        "alice@example.com",
        "311",
        "12",
    ],
)
def test_identities_and_short_codes_are_never_coerced(identity: str) -> None:
    assert to_e164(identity, "US") is None
    party = address(identity, "US")
    assert party is not None and party.e164 is None and party.key == identity
    assert rule_address(identity, "US") == identity


def test_national_number_without_a_country_is_not_guessed_as_national() -> None:
    # "4155550100" alone reads as +41 (Switzerland), never as a US number
    assert to_e164("4155550100", None) != "+14155550100"
    assert to_e164("4155550100", "US") == "+14155550100"


def test_prefixes_and_countries() -> None:
    assert rule_prefix("1415") == "+1415"
    assert rule_prefix("+91") == "+91"
    with pytest.raises(ValueError, match="not a number prefix"):
        rule_prefix("abc")
    assert country_of(address("+919876543210")) == "IN"
    assert country_of(address("client:alice")) is None


# ----------------------------------------------------------------------------- windows


def test_days_parse_and_describe() -> None:
    assert parse_days(["mon-fri"]) == frozenset(range(5))
    assert parse_days(["fri-mon"]) == frozenset({4, 5, 6, 0})
    assert parse_days(["Saturday", "sun"]) == frozenset({5, 6})
    assert describe_days(parse_days(["mon-fri"])) == "Mon-Fri"
    assert describe_days(parse_days(["mon", "wed", "thu", "fri"])) == "Mon,Wed-Fri"
    with pytest.raises(ValueError):
        parse_days(["someday"])


def test_window_follows_local_time_across_the_dst_change() -> None:
    office = TimeWindow.parse(["mon-fri"], "09:00", "17:00", "America/New_York")
    # 2026-03-08 is the US change to summer time: 13:30 UTC is 08:30 EST on Friday the 6th,
    # but 09:30 EDT on Monday the 9th
    assert not office.contains(datetime(2026, 3, 6, 13, 30, tzinfo=UTC))
    assert office.contains(datetime(2026, 3, 9, 13, 30, tzinfo=UTC))
    # and back in November (the 1st): 13:30 UTC is 09:30 EDT on Friday Oct 30, 08:30 EST on
    # Monday Nov 2
    assert office.contains(datetime(2026, 10, 30, 13, 30, tzinfo=UTC))
    assert not office.contains(datetime(2026, 11, 2, 13, 30, tzinfo=UTC))
    # 16:59 and 17:00 local
    assert office.contains(datetime(2026, 3, 9, 20, 59, tzinfo=UTC))
    assert not office.contains(datetime(2026, 3, 9, 21, 0, tzinfo=UTC))
    # weekends are out
    assert not office.contains(datetime(2026, 3, 7, 15, 0, tzinfo=UTC))
    assert office.describe() == "Mon-Fri 09:00-17:00 America/New_York"


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    night = TimeWindow.parse(["fri"], "22:00", "06:00", "Europe/Paris")
    assert night.contains(datetime(2026, 12, 4, 22, 30, tzinfo=UTC))  # Fri 23:30 Paris
    assert night.contains(datetime(2026, 12, 5, 3, 0, tzinfo=UTC))  # Sat 04:00 Paris
    assert not night.contains(datetime(2026, 12, 6, 3, 0, tzinfo=UTC))  # Sun 04:00
    assert not night.contains(datetime(2026, 12, 4, 3, 0, tzinfo=UTC))  # Fri 04:00
    whole_day = TimeWindow.parse(["sun"], "00:00", "24:00", "UTC")
    assert whole_day.contains(datetime(2026, 12, 6, 23, 59, tzinfo=UTC))


# ----------------------------------------------------------------------------- rules


def _facts(
    frm: str | None = "+14155550123", to: str | None = "+14155550100", **kw: Any
) -> CallFacts:
    return CallFacts(
        connector_id=kw.get("connector_id", "cn_a"),
        provider=kw.get("provider", "twilio"),
        from_=address(frm, "US"),
        to=address(to, "US"),
        at=kw.get("at", NOON_UTC),
    )


def _rule(
    rule_id: str, match: RuleMatch, dispatch: Dispatch | None = None, **kw: Any
) -> RoutingRule:
    return RoutingRule(
        id=rule_id,
        apikey="ak",
        name=kw.pop("name", ""),
        priority=kw.pop("priority", 0),
        match=match,
        dispatch=dispatch or Dispatch("room", room_id="r"),
        **kw,
    )


def test_every_condition_must_hold_and_each_failure_is_explained() -> None:
    rule = _rule(
        "rr_1",
        RuleMatch(
            to=("+14155550199",),
            from_prefixes=("+91",),
            connector_ids=("cn_b",),
            providers=("plivo",),
            window=TimeWindow.parse(["sat-sun"], "09:00", "17:00", "America/New_York"),
        ),
    )
    verdict = evaluate(rule, _facts())
    assert not verdict.matched
    assert verdict.reasons == (
        "to +14155550100 not in [+14155550199]",
        "from +14155550123 not in prefixes [+91]",
        "connector cn_a not in [cn_b]",
        "provider twilio not in [plivo]",
        "outside hours Sat,Sun 09:00-17:00 America/New_York",
    )
    matching = _rule(
        "rr_2",
        RuleMatch(to=("+14155550100",), from_prefixes=("+1", "+1415"), providers=("twilio",)),
    )
    verdict = evaluate(matching, _facts(to="(415) 555-0100"))
    assert verdict.matched and verdict.room_id == "r"
    assert verdict.reasons == (
        "to +14155550100",
        "from +14155550123 starts with +1415",
        "provider twilio",
    )


def test_identities_match_only_exactly() -> None:
    rule = _rule("rr_1", RuleMatch(from_=("client:alice",), from_prefixes=("+1",)))
    assert evaluate(rule, _facts(frm="client:alice")).matched
    refused = evaluate(rule, _facts(frm="client:alicia"))
    assert refused.reasons == ("from client:alicia not in [client:alice] or prefixes [+1]",)
    prefix_only = _rule("rr_2", RuleMatch(from_prefixes=("+1",)))
    assert evaluate(prefix_only, _facts(frm="client:bob")).reasons == (
        "from client:bob is not a phone number, so no prefix matches it",
    )
    assert evaluate(prefix_only, _facts(frm=None)).reasons == ("from is absent",)


def test_every_dispatch_type() -> None:
    facts = _facts(frm="+14155550123", to="+14155550100")
    assert room_for(Dispatch("room", room_id="support"), facts) == ("support", "")
    assert room_for(Dispatch("caller", room_prefix="caller-"), facts) == ("caller-14155550123", "")
    assert room_for(Dispatch("callee", room_prefix="line-"), facts) == ("line-14155550100", "")
    assert room_for(Dispatch("caller"), _facts(frm="client:alice")) == ("client:alice", "")
    assert room_for(Dispatch("caller", room_prefix="c-"), _facts(frm="sip:a@b.c")) == (
        "c-sip:a_b.c",
        "",
    )
    room, why = room_for(Dispatch("caller"), _facts(frm=None))
    assert room is None and "needs the caller's number" in why


def test_precedence_priority_then_age_then_id() -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    new = datetime(2026, 6, 1, tzinfo=UTC)
    rules = [
        _rule("rr_c", RuleMatch(), priority=1, created_at=new),
        _rule("rr_b", RuleMatch(), priority=1, created_at=old),
        _rule("rr_a", RuleMatch(), priority=1, created_at=new),
        _rule("rr_z", RuleMatch(), priority=5, created_at=new),
    ]
    assert [rule.id for rule in precedence(rules)] == ["rr_z", "rr_b", "rr_a", "rr_c"]
    specific = _rule("rr_specific", RuleMatch(to=("+14155550100",)), priority=10)
    broad = _rule("rr_broad", RuleMatch(to_prefixes=("+1",)), priority=1)
    winner, verdicts = first_match([broad, specific], _facts())
    assert winner is specific and len(verdicts) == 1
    winner, verdicts = first_match([broad, specific], _facts(to="+14155550111"))
    assert winner is broad and [v.matched for v in verdicts] == [False, True]


# ----------------------------------------------------------------------------- regions


def test_region_pinning_and_derivation() -> None:
    routing = RoutingSettings(
        regions={
            "us002": {"ingest_url": "wss://us/ingest", "countries": ["US", "CA"]},
            "in002": {"ingest_url": "wss://in/ingest", "countries": ["IN"]},
        },
        default_region="us002",
    )
    india = address("+919876543210")
    picked = choose_region(
        routing, "wss://main/ingest", rule_region=None, connector_region=None, caller=india
    )
    assert (picked.name, picked.ingest_url) == ("in002", "wss://in/ingest")
    pinned = choose_region(
        routing, "wss://main/ingest", rule_region="us002", connector_region="in002", caller=india
    )
    assert (pinned.name, pinned.reason) == ("us002", "the rule pins region us002")
    by_connector = choose_region(
        routing, "x", rule_region=None, connector_region="in002", caller=None
    )
    assert by_connector.name == "in002"
    fallback = choose_region(
        routing, "x", rule_region=None, connector_region=None, caller=address("+442079460958")
    )
    assert (fallback.name, fallback.reason) == ("us002", "routing.default_region")
    unknown = choose_region(
        routing, "wss://main/ingest", rule_region=None, connector_region="eu9", caller=None
    )
    assert unknown.ingest_url == "wss://main/ingest" and "not configured" in unknown.reason
    nothing = choose_region(
        RoutingSettings(),
        "wss://main/ingest",
        rule_region=None,
        connector_region=None,
        caller=india,
    )
    assert (nothing.name, nothing.ingest_url) == (None, "wss://main/ingest")
    # national formats: the connector's region's country, else the default region's
    assert home_country(routing, "in002") == "IN"
    assert home_country(routing, None) == "US"
    assert home_country(RoutingSettings(default_country="GB"), None) == "GB"


# ----------------------------------------------------------------------------- the chain


class _Fixed:
    def __init__(self, name: str, room: str | None) -> None:
        self.name = name
        self._room = room

    async def route(self, context: RoutingContext) -> RouteDecision:
        if self._room is None:
            return RouteDecision(None, (f"{self.name} passes",))
        return RouteDecision(Route(self._room, self.name), (f"{self.name} decides",))


class _Legacy:
    """A third-party strategy written before decisions: a Route or None."""

    name = "legacy"

    async def route(self, context: RoutingContext) -> Route | None:
        return Route("legacy-room", self.name)


def _context() -> RoutingContext:
    return RoutingContext(
        call=CallInfo(provider="twilio", provider_call_id="CA1"),
        connector=ConnectorView("cn_a", "ak", "twilio", None, None, None),
        query={},
        facts=_facts(),
    )


async def test_each_strategy_shadows_the_next() -> None:
    chain = [_Fixed("first", None), _Fixed("second", "room-2"), _Fixed("third", "room-3")]
    outcome = await route_call(chain, _context())
    assert outcome.route is not None and outcome.route.room_id == "room-2"
    assert [step.strategy for step in outcome.steps] == ["first", "second"]
    assert outcome.steps[0].reasons == ("first passes",)
    outcome = await route_call([_Fixed("a", None), _Legacy()], _context())
    assert outcome.route == Route("legacy-room", "legacy")
    outcome = await route_call([_Fixed("a", None), _Fixed("b", None)], _context())
    assert outcome.route is None
    assert outcome.reason == "no routing strategy chose a room: a: a passes; b: b passes"
