"""The Routing Rules and Explain APIs over real HTTP, with rules and connectors in YAML."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar

from callbridge.api.auth import issue_token
from tests.api_app import ApiServer, ApiUnderTest, new_tenant, serving_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

RULE_ID = re.compile(r"^rr_[a-z0-9]{16}$")
CONFIG_KEY = "ak_config_tenant"
CONFIG_SECRET = "s" * 40
YAML_WEBHOOK_KEY = "whk_" + "Y" * 32
OVERRIDES: dict[str, Any] = {
    "auth": {
        "create_dev_key": False,
        "api_keys": [{"apikey": CONFIG_KEY, "secret": CONFIG_SECRET, "name": "gitops"}],
    },
    "routing": {
        "regions": {
            "us002": {"ingest_url": "wss://us.example.test/ingest", "countries": ["US", "CA"]},
            "in002": {"ingest_url": "wss://in.example.test/ingest", "countries": ["IN"]},
        },
        "default_region": "us002",
    },
    "routing_rules": [
        {
            "id": "cfg-support",
            "apikey": CONFIG_KEY,
            "priority": 100,
            "match": {"to": ["+1 (415) 555-0100"]},
            "dispatch": {"type": "room", "roomId": "support"},
        },
        {
            "id": "cfg-pinned",
            "apikey": CONFIG_KEY,
            "priority": 50,
            "match": {"to": ["+14155550177"]},
            "dispatch": {"type": "room", "roomId": "desk"},
            "region": "us002",
        },
        {
            "id": "cfg-fallback",
            "apikey": CONFIG_KEY,
            "dispatch": {"type": "room", "roomId": "voicemail"},
        },
    ],
    "connectors": [
        {
            "id": "cn_yaml_support",
            "provider": "twilio",
            "webhookKey": YAML_WEBHOOK_KEY,
            "defaultRuleId": "cfg-fallback",
        }
    ],
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    async with serving_app(tmp_path_factory.mktemp("routing"), OVERRIDES) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def api(served: tuple[ApiServer, Litestar]) -> ApiUnderTest:
    return await new_tenant(served[0])


@pytest_asyncio.fixture(loop_scope="module")
async def gitops(served: tuple[ApiServer, Litestar]) -> dict[str, str]:
    """Headers of the API key the YAML's rules and connector belong to."""
    return {"Authorization": f"Bearer {issue_token(CONFIG_KEY, CONFIG_SECRET)}"}


async def _rule(api: ApiUnderTest, expect: int = 201, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/v2/routing-rules", json=body, headers=api.headers)
    assert response.status_code == expect, response.text
    data: dict[str, Any] = response.json().get("data") or response.json()
    return data


async def _connector(api: ApiUnderTest, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/v2/connectors", json={"provider": "twilio", **body}, headers=api.headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _explain(
    api: ApiUnderTest, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = await api.client.post(
        "/v2/routing/explain", json=body, headers=headers or api.headers
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


ROOM = {"type": "room", "roomId": "support"}


# ----------------------------------------------------------------------------- CRUD


async def test_create_normalises_numbers_and_reads_back(api: ApiUnderTest) -> None:
    created = await _rule(
        api,
        name="support line",
        priority=10,
        match={
            "to": ["(415) 555-0100", "client:alice"],
            "fromPrefixes": ["1415", "+91"],
            "defaultCountry": "US",
            "timeWindow": {
                "days": ["mon-fri"],
                "start": "09:00",
                "end": "17:00",
                "timeZone": "America/New_York",
            },
        },
        dispatch=ROOM,
        metadata={"team": "support"},
    )
    assert RULE_ID.fullmatch(created["id"])
    assert created["match"]["to"] == ["+14155550100", "client:alice"]
    assert created["match"]["fromPrefixes"] == ["+1415", "+91"]
    assert created["match"]["timeWindow"]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert (created["source"], created["priority"], created["metadata"]) == (
        "api",
        10,
        {"team": "support"},
    )
    got = await api.client.get(f"/v2/routing-rules/{created['id']}", headers=api.headers)
    assert got.status_code == 200 and got.json()["data"] == created
    # another API key sees nothing
    other = await api.client.get(f"/v2/routing-rules/{created['id']}", headers=api.other_headers)
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"match": {"fromPrefixes": ["abc"]}, "dispatch": ROOM}, "match.fromPrefixes[0]"),
        ({"match": {"toPrefixes": ["+1 415"]}, "dispatch": ROOM}, "match.toPrefixes[0]"),
        ({"match": {"to": ["  "]}, "dispatch": ROOM}, "match.to[0]"),
        (
            {
                "match": {
                    "timeWindow": {
                        "days": ["funday"],
                        "start": "09:00",
                        "end": "17:00",
                        "timeZone": "UTC",
                    }
                },
                "dispatch": ROOM,
            },
            "match.timeWindow.days[0]",
        ),
        (
            {
                "match": {
                    "timeWindow": {
                        "days": ["mon"],
                        "start": "09:00",
                        "end": "17:00",
                        "timeZone": "Mars/Base",
                    }
                },
                "dispatch": ROOM,
            },
            "match.timeWindow.timeZone",
        ),
        (
            {
                "match": {
                    "timeWindow": {
                        "days": ["mon"],
                        "start": "24:00",
                        "end": "17:00",
                        "timeZone": "UTC",
                    }
                },
                "dispatch": ROOM,
            },
            "match.timeWindow.start",
        ),
        ({"match": {"defaultCountry": "XX"}, "dispatch": ROOM}, "match.defaultCountry"),
        ({"dispatch": {"type": "room"}}, "roomId"),
        ({"dispatch": {"type": "caller", "roomId": "x"}}, "roomId"),
        ({"dispatch": {"type": "bridge"}}, "dispatch"),
        ({"dispatch": ROOM, "transport": "nope"}, "transport: must be one of: local"),
        ({"dispatch": ROOM, "region": "eu001"}, "region: must be one of: in002, us002"),
        ({"dispatch": ROOM, "match": {"providers": ["acme"]}}, "match.providers[0]"),
        ({"dispatch": ROOM, "bogus": 1}, "bogus"),
    ],
)
async def test_bad_rules_are_refused_with_the_field(
    api: ApiUnderTest, body: dict[str, Any], message: str
) -> None:
    response = await api.client.post("/v2/routing-rules", json=body, headers=api.headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    listed = await api.client.get("/v2/routing-rules", headers=api.headers)
    assert listed.json()["data"] == []


async def test_numbers_in_any_format_and_identities_left_alone(api: ApiUnderTest) -> None:
    created = await _rule(
        api,
        match={
            "to": ["+1 415-555-0100", "14155550101", "0044 20 7946 0958", "sip:desk@example.com"],
            "from": ["311", "client:alice", "anonymous"],
        },
        dispatch=ROOM,
    )
    assert created["match"]["to"] == [
        "+14155550100",
        "+14155550101",
        "+442079460958",
        "sip:desk@example.com",
    ]
    assert created["match"]["from"] == ["311", "client:alice", "anonymous"]


async def test_same_match_and_priority_conflicts_naming_the_other(api: ApiUnderTest) -> None:
    first = await _rule(api, priority=5, match={"to": ["+14155550100"]}, dispatch=ROOM)
    clash = await api.client.post(
        "/v2/routing-rules",
        json={
            "priority": 5,
            "match": {"to": ["4155550100"], "defaultCountry": "US"},
            "dispatch": {"type": "room", "roomId": "x"},
        },
        headers=api.headers,
    )
    assert clash.status_code == 409
    assert first["id"] in clash.json()["message"]
    # another priority is no conflict; patching it onto the first one's priority is
    second = await _rule(api, priority=6, match={"to": ["+14155550100"]}, dispatch=ROOM)
    patched = await api.client.patch(
        f"/v2/routing-rules/{second['id']}", json={"priority": 5}, headers=api.headers
    )
    assert patched.status_code == 409 and first["id"] in patched.json()["message"]
    # another API key may have the same rule
    other = await api.client.post(
        "/v2/routing-rules",
        json={"priority": 5, "match": {"to": ["+14155550100"]}, "dispatch": ROOM},
        headers=api.other_headers,
    )
    assert other.status_code == 201


async def test_list_is_in_precedence_order(api: ApiUnderTest) -> None:
    low = await _rule(api, priority=1, match={"to": ["+14155550101"]}, dispatch=ROOM)
    api.clock.offset += 1
    high = await _rule(api, priority=9, match={"to": ["+14155550102"]}, dispatch=ROOM)
    api.clock.offset += 1
    tie_older = await _rule(api, priority=1, match={"to": ["+14155550103"]}, dispatch=ROOM)
    listed = await api.client.get("/v2/routing-rules", headers=api.headers)
    ids = [item["id"] for item in listed.json()["data"]]
    assert ids == [high["id"], low["id"], tie_older["id"]]


async def test_patch_replaces_fields_and_renormalises(api: ApiUnderTest) -> None:
    rule = await _rule(api, name="a", match={"to": ["+14155550100"]}, dispatch=ROOM)
    response = await api.client.patch(
        f"/v2/routing-rules/{rule['id']}",
        json={
            "name": "b",
            "match": {"from": ["+44 20 7946 0958"]},
            "dispatch": {"type": "caller", "roomPrefix": "c-"},
        },
        headers=api.headers,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["name"], data["match"], data["dispatch"]) == (
        "b",
        {"from": ["+442079460958"]},
        {"type": "caller", "roomPrefix": "c-"},
    )
    assert data["createdAt"] == rule["createdAt"]


async def test_default_rule_must_exist_and_guards_deletion(api: ApiUnderTest) -> None:
    refused = await api.client.post(
        "/v2/connectors",
        json={"provider": "twilio", "defaultRuleId": "rr_doesnotexist0000"},
        headers=api.headers,
    )
    assert refused.status_code == 400
    assert "defaultRuleId: no routing rule rr_doesnotexist0000" in refused.json()["message"]
    rule = await _rule(api, dispatch={"type": "room", "roomId": "fallback"})
    # another key's rule cannot be named
    theirs = await api.client.post(
        "/v2/routing-rules", json={"dispatch": ROOM}, headers=api.other_headers
    )
    assert theirs.status_code == 201
    cross = await api.client.post(
        "/v2/connectors",
        json={"provider": "twilio", "defaultRuleId": theirs.json()["data"]["id"]},
        headers=api.headers,
    )
    assert cross.status_code == 400
    first = await _connector(api, defaultRuleId=rule["id"])
    second = await _connector(api)
    patched = await api.client.patch(
        f"/v2/connectors/{second['id']}", json={"defaultRuleId": rule["id"]}, headers=api.headers
    )
    assert patched.status_code == 200
    blocked = await api.client.delete(f"/v2/routing-rules/{rule['id']}", headers=api.headers)
    assert blocked.status_code == 409
    assert first["id"] in blocked.json()["message"] and second["id"] in blocked.json()["message"]
    for connector in (first, second):
        await api.client.patch(
            f"/v2/connectors/{connector['id']}", json={"defaultRuleId": None}, headers=api.headers
        )
    deleted = await api.client.delete(f"/v2/routing-rules/{rule['id']}", headers=api.headers)
    assert deleted.status_code == 200
    gone = await api.client.get(f"/v2/routing-rules/{rule['id']}", headers=api.headers)
    assert gone.status_code == 404


# ----------------------------------------------------------------------------- YAML


async def test_yaml_rules_and_connectors_are_listed_and_read_only(
    api: ApiUnderTest, gitops: dict[str, str]
) -> None:
    listed = await api.client.get("/v2/routing-rules", headers=gitops)
    assert listed.status_code == 200
    rules = {item["id"]: item for item in listed.json()["data"]}
    assert rules["cfg-support"]["source"] == "config"
    assert rules["cfg-support"]["match"]["to"] == ["+14155550100"]
    for method, body in (("PATCH", {"name": "x"}), ("DELETE", None)):
        response = await api.client.request(
            method, "/v2/routing-rules/cfg-support", json=body, headers=gitops
        )
        assert response.status_code == 409
        assert "defined in the configuration" in response.json()["message"]
    # other API keys do not see another key's YAML rules
    mine = await api.client.get("/v2/routing-rules", headers=api.headers)
    assert "cfg-support" not in mine.text

    connector = await api.client.get("/v2/connectors/cn_yaml_support", headers=gitops)
    assert connector.status_code == 200
    assert connector.json()["data"]["source"] == "config"
    assert connector.json()["data"]["defaultRuleId"] == "cfg-fallback"
    for method, path in (
        ("PATCH", "/v2/connectors/cn_yaml_support"),
        ("POST", "/v2/connectors/cn_yaml_support/rotate-key"),
        ("DELETE", "/v2/connectors/cn_yaml_support"),
    ):
        response = await api.client.request(
            method, path, json={"name": "x"} if method == "PATCH" else None, headers=gitops
        )
        assert response.status_code == 409, (method, response.text)
    # and its webhook key works: a Twilio webhook to the support number is answered
    hook = await api.client.post(
        f"/v2/hooks/twilio/{YAML_WEBHOOK_KEY}",
        data={
            "CallSid": "CA" + "1" * 32,
            "AccountSid": "AC" + "2" * 32,
            "From": "+14155550123",
            "To": "+14155550100",
        },
    )
    assert hook.status_code == 200, hook.text
    assert "<Stream" in hook.text and "wss://us.example.test/ingest" in hook.text


# ----------------------------------------------------------------------------- explain


async def test_explain_a_match_and_the_rules_before_it(
    api: ApiUnderTest, gitops: dict[str, str]
) -> None:
    data = await _explain(
        api, gitops, connectorId="cn_yaml_support", **{"from": "+919876543210", "to": "4155550100"}
    )
    assert data["decision"]["roomId"] == "support"
    assert (data["decision"]["strategy"], data["decision"]["ruleId"]) == (
        "phone_rules",
        "cfg-support",
    )
    assert data["call"]["to"] == {"given": "4155550100", "e164": "+14155550100"}
    # the caller's country places the call in in002
    assert data["region"] == {
        "region": "in002",
        "ingestUrl": "wss://in.example.test/ingest",
        "reason": "the caller +919876543210 is in IN, served by in002",
    }
    strategies = [step["strategy"] for step in data["steps"]]
    assert strategies == ["room_query", "phone_rules"]
    assert data["steps"][0]["reasons"] == ["the webhook URL has no roomId parameter"]


async def test_explain_says_why_nothing_matched(api: ApiUnderTest, gitops: dict[str, str]) -> None:
    data = await _explain(
        api, gitops, connectorId="cn_yaml_support", **{"from": "client:bob", "to": "+14155550199"}
    )
    # the connector's default rule catches it
    assert data["decision"]["roomId"] == "voicemail"
    assert data["decision"]["strategy"] == "default_rule"
    phone = next(step for step in data["steps"] if step["strategy"] == "phone_rules")
    assert phone["decided"] is False
    support = next(rule for rule in phone["rules"] if rule["ruleId"] == "cfg-support")
    assert support["matched"] is False
    assert support["reasons"] == ["to +14155550199 not in [+14155550100]"]
    assert data["call"]["from"] == {"given": "client:bob", "e164": None}
    assert (
        data["region"]["region"] == "us002" and data["region"]["reason"] == "routing.default_region"
    )


async def test_explain_no_route_lists_every_strategy(api: ApiUnderTest) -> None:
    connector = await _connector(api)
    await _rule(
        api,
        name="office",
        match={
            "to": ["+14155550100"],
            "timeWindow": {
                "days": ["mon-fri"],
                "start": "09:00",
                "end": "17:00",
                "timeZone": "America/New_York",
            },
        },
        dispatch=ROOM,
    )
    saturday = "2026-12-05T15:00:00Z"
    data = await _explain(
        api, connectorId=connector["id"], to="+14155550100", at=saturday, **{"from": "+14155550123"}
    )
    assert data["decision"] is None and data["region"] is None
    reasons = {step["strategy"]: step for step in data["steps"]}
    assert set(reasons) == {"room_query", "phone_rules", "default_rule", "default_room"}
    assert reasons["phone_rules"]["rules"][0]["reasons"] == [
        "outside hours Mon-Fri 09:00-17:00 America/New_York"
    ]
    assert reasons["default_room"]["reasons"] == ["the connector has no defaultRoomId"]
    assert "outside hours" in data["explanation"]
    # on a weekday in office hours the same call matches
    monday = "2026-12-07T15:00:00Z"
    data = await _explain(
        api, connectorId=connector["id"], to="+14155550100", at=monday, **{"from": "+14155550123"}
    )
    assert data["decision"]["roomId"] == "support"


async def test_explain_room_query_shadows_rules_and_unknown_connector(api: ApiUnderTest) -> None:
    connector = await _connector(api)
    await _rule(api, match={"to": ["+14155550100"]}, dispatch=ROOM)
    data = await _explain(api, connectorId=connector["id"], to="+14155550100", roomId="direct-room")
    assert (data["decision"]["roomId"], data["decision"]["strategy"]) == (
        "direct-room",
        "room_query",
    )
    assert [step["strategy"] for step in data["steps"]] == ["room_query"]
    missing = await api.client.post(
        "/v2/routing/explain", json={"connectorId": "cn_nope"}, headers=api.headers
    )
    assert missing.status_code == 404


async def test_a_call_nothing_routes_is_refused_politely_with_the_explanation(
    api: ApiUnderTest,
) -> None:
    created = await api.client.post(
        "/v2/connectors", json={"provider": "twilio"}, headers=api.headers
    )
    webhook = created.json()["data"]["webhookUrl"]
    await _rule(api, match={"to": ["+14155550100"]}, dispatch=ROOM)
    path = webhook.split("example.test", 1)[1]
    hook = await api.client.post(
        path,
        data={
            "CallSid": "CA" + "3" * 32,
            "AccountSid": "AC" + "2" * 32,
            "From": "+14155550123",
            "To": "+14155550199",
        },
    )
    assert hook.status_code == 200
    assert "<Hangup" in hook.text and "<Stream" not in hook.text
    calls = await api.client.get("/v2/calls", headers=api.headers)
    call = calls.json()["data"][0]
    assert (call["status"], call["endReason"]) == ("failed", "no-route")
    assert "no routing strategy chose a room" in call["endDetail"]
    assert "to +14155550199 not in [+14155550100]" in call["endDetail"]
    assert "the connector has no defaultRoomId" in call["endDetail"]


async def _markup_for(api: ApiUnderTest, caller: str, callee: str) -> str:
    hook = await api.client.post(
        f"/v2/hooks/twilio/{YAML_WEBHOOK_KEY}",
        data={
            "CallSid": "CA" + secrets.token_hex(16),
            "AccountSid": "AC" + "2" * 32,
            "From": caller,
            "To": callee,
        },
    )
    assert hook.status_code == 200, hook.text
    return hook.text


async def test_the_region_changes_the_markups_socket_url(
    api: ApiUnderTest, gitops: dict[str, str]
) -> None:
    # derived from the caller's country
    india = await _markup_for(api, "+919876543210", "+14155550100")
    assert 'url="wss://in.example.test/ingest/twilio/' in india
    us = await _markup_for(api, "+14155550123", "+14155550100")
    assert 'url="wss://us.example.test/ingest/twilio/' in us
    # a rule's region pins it, whoever calls
    pinned = await _markup_for(api, "+919876543210", "+14155550177")
    assert 'url="wss://us.example.test/ingest/twilio/' in pinned
    calls = await api.client.get("/v2/calls", params={"perPage": 3}, headers=gitops)
    regions = {(call["from"], call["to"], call["region"]) for call in calls.json()["data"]}
    assert regions == {
        ("+919876543210", "+14155550177", "us002"),
        ("+14155550123", "+14155550100", "us002"),
        ("+919876543210", "+14155550100", "in002"),
    }


async def test_each_built_in_strategy_shadows_the_next(api: ApiUnderTest) -> None:
    fallback = await _rule(api, dispatch={"type": "callee", "roomPrefix": "line-"})
    await _rule(api, match={"from": ["+14155550123"]}, dispatch=ROOM)
    connector = await _connector(api, defaultRuleId=fallback["id"], defaultRoomId="lobby")
    call = {"connectorId": connector["id"], "from": "+14155550123", "to": "+14155550199"}

    async def decided(**extra: Any) -> tuple[str, str]:
        data = await _explain(api, **call, **extra)
        return data["decision"]["strategy"], data["decision"]["roomId"]

    assert await decided(roomId="direct") == ("room_query", "direct")
    assert await decided() == ("phone_rules", "support")
    call["from"] = "+14155550999"
    assert await decided() == ("default_rule", "line-14155550199")
    await api.client.patch(
        f"/v2/connectors/{connector['id']}", json={"defaultRuleId": None}, headers=api.headers
    )
    assert await decided() == ("default_room", "lobby")


async def test_a_changed_rule_routes_by_its_new_content_at_once(api: ApiUnderTest) -> None:
    """Decoded rules are cached by their stored content: a PATCH takes effect on the next call
    even when the clock has not moved."""
    connector = await _connector(api)
    rule = await _rule(api, match={"to": ["+14155550100"]}, dispatch=ROOM)
    call = {"connectorId": connector["id"], "to": "+14155550100"}
    assert (await _explain(api, **call))["decision"]["roomId"] == "support"
    patched = await api.client.patch(
        f"/v2/routing-rules/{rule['id']}",
        json={"dispatch": {"type": "room", "roomId": "moved"}},
        headers=api.headers,
    )
    assert patched.status_code == 200
    assert (await _explain(api, **call))["decision"]["roomId"] == "moved"
    await api.client.delete(f"/v2/routing-rules/{rule['id']}", headers=api.headers)
    assert (await _explain(api, **call))["decision"] is None
