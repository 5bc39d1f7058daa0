"""The Connectors API over real HTTP (uvicorn on loopback, httpx client)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import pytest_asyncio
from litestar import Litestar
from sqlalchemy import select, text

from callbridge.api.connector_rules import ProviderOptions, RuleError
from callbridge.api.errors import NOT_FOUND_BODY
from callbridge.api.openapi import update_option_schemas
from callbridge.crypto import CredentialBox
from callbridge.protocols import CodecSpec, CredentialsError
from callbridge.store.models import Base
from callbridge.store.repository import Repository, transaction
from tests.api_app import (
    PROVIDERS,
    PUBLIC_API_URL,
    ApiServer,
    ApiUnderTest,
    new_tenant,
    serving_app,
)

CONNECTOR_ID = re.compile(r"^cn_[a-z0-9]{16}$")
WEBHOOK_URL = re.compile(
    "^"
    + re.escape(PUBLIC_API_URL)
    + r"/v2/hooks/(?P<provider>[a-z]+)/(?P<key>whk_[A-Za-z0-9]{32})$"
)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PUBLIC_FIELDS = {
    "id",
    "provider",
    "name",
    "defaultRoomId",
    "defaultRuleId",
    "region",
    "codec",
    "sampleRate",
    "markupStyle",
    "verifySignatures",
    "hasCredentials",
    "source",
    "createdAt",
    "updatedAt",
}
MEDIA_DEFAULTS = {
    "codec": None,
    "sampleRate": None,
    "markupStyle": None,
    "verifySignatures": False,
    "hasCredentials": False,
}
TWILIO_CREDENTIALS = {
    "accountSid": "AC" + "7" * 32,
    "authToken": "plaintext-auth-token-0123456789abcdef",
}
CHOICES = ", ".join(PROVIDERS)


# One server for the module (starting uvicorn per test would dominate the run time); each test
# gets its own API keys, so tests cannot see each other's connectors.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    async with serving_app(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api_server(served: tuple[ApiServer, Litestar]) -> ApiServer:
    return served[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(served: tuple[ApiServer, Litestar]) -> CredentialBox:
    """The running app's credential box."""
    credential_box = served[1].state.runtime.credential_box
    assert isinstance(credential_box, CredentialBox)
    return credential_box


@pytest_asyncio.fixture(loop_scope="module")
async def api(api_server: ApiServer) -> ApiUnderTest:
    return await new_tenant(api_server)


async def _create(api: ApiUnderTest, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/v2/connectors", json={"provider": "twilio", **body}, headers=api.headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _key(data: dict[str, Any]) -> str:
    match = WEBHOOK_URL.fullmatch(data["webhookUrl"])
    assert match, data["webhookUrl"]
    return match.group("key")


# --------------------------------------------------------------------------- happy paths


async def test_create_returns_the_videosdk_shape(api: ApiUnderTest) -> None:
    response = await api.client.post(
        "/v2/connectors",
        json={
            "provider": "twilio",
            "name": "Main Twilio Connector",
            "defaultRoomId": "abcd-efgh-ijkl",
            "region": "us002",
        },
        headers=api.headers,
    )
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Connector created successfully"
    data = body["data"]
    assert set(data) == PUBLIC_FIELDS | {"webhookUrl"}
    assert CONNECTOR_ID.fullmatch(data["id"])
    match = WEBHOOK_URL.fullmatch(data["webhookUrl"])
    assert match and match.group("provider") == "twilio"
    assert data["provider"] == "twilio"
    assert data["name"] == "Main Twilio Connector"
    assert data["defaultRoomId"] == "abcd-efgh-ijkl"
    assert data["defaultRuleId"] is None
    assert data["region"] == "us002"
    assert {k: data[k] for k in MEDIA_DEFAULTS} == MEDIA_DEFAULTS
    assert TIMESTAMP.fullmatch(data["createdAt"])
    assert abs(_epoch(data["createdAt"]) - time.time()) < 60


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_create_with_provider_only(api: ApiUnderTest) -> None:
    data = await _create(api)
    assert (data["name"], data["defaultRoomId"], data["defaultRuleId"], data["region"]) == (
        None,
        None,
        None,
        None,
    )


async def test_list_and_get_never_show_the_webhook_key(api: ApiUnderTest) -> None:
    first = await _create(api, name="first")
    api.clock.offset += 1
    second = await _create(api, name="second")
    keys = [_key(first), _key(second)]

    listed = await api.client.get("/v2/connectors", headers=api.headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["message"] == "Connectors fetched successfully"
    assert body["pageInfo"] == {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 2}
    assert [item["id"] for item in body["data"]] == [second["id"], first["id"]]
    for item in body["data"]:
        assert set(item) == PUBLIC_FIELDS

    got = await api.client.get(f"/v2/connectors/{first['id']}", headers=api.headers)
    assert got.status_code == 200
    assert set(got.json()["data"]) == PUBLIC_FIELDS
    assert got.json()["data"] == {k: v for k, v in first.items() if k != "webhookUrl"}

    for body_text in (listed.text, got.text):
        assert "webhookUrl" not in body_text and "whk_" not in body_text
        for key in keys:
            assert key not in body_text


async def test_list_pages(api: ApiUnderTest) -> None:
    for n in range(3):
        api.clock.offset += 1
        await _create(api, name=f"c{n}")
    response = await api.client.get(
        "/v2/connectors", params={"page": 2, "perPage": 2}, headers=api.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["pageInfo"] == {"currentPage": 2, "perPage": 2, "lastPage": 2, "total": 3}
    assert [item["name"] for item in body["data"]] == ["c0"]
    beyond = await api.client.get("/v2/connectors", params={"page": 9}, headers=api.headers)
    assert beyond.status_code == 200 and beyond.json()["data"] == []


async def test_patch_updates_and_clears(api: ApiUnderTest) -> None:
    rule = await api.client.post(
        "/v2/routing-rules",
        json={"dispatch": {"type": "room", "roomId": "fallback"}},
        headers=api.headers,
    )
    rule_id = rule.json()["data"]["id"]
    created = await _create(api, name="old", defaultRoomId="room-1", region="us002")
    api.clock.offset += 5
    response = await api.client.patch(
        f"/v2/connectors/{created['id']}",
        json={"name": "new", "region": None, "defaultRuleId": rule_id},
        headers=api.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Connector updated successfully"
    data = response.json()["data"]
    assert set(data) == PUBLIC_FIELDS
    assert (data["name"], data["defaultRoomId"], data["defaultRuleId"], data["region"]) == (
        "new",
        "room-1",
        rule_id,
        None,
    )
    assert data["provider"] == "twilio"
    assert data["createdAt"] == created["createdAt"]
    assert _epoch(data["updatedAt"]) >= _epoch(created["updatedAt"]) + 4

    unchanged = await api.client.patch(
        f"/v2/connectors/{created['id']}", json={}, headers=api.headers
    )
    assert unchanged.status_code == 200 and unchanged.json()["data"] == data


async def test_rotate_key_replaces_the_url(api: ApiUnderTest) -> None:
    created = await _create(api, name="r")
    old_key = _key(created)
    response = await api.client.post(
        f"/v2/connectors/{created['id']}/rotate-key", headers=api.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Webhook key rotated successfully"
    assert set(body["data"]) == PUBLIC_FIELDS | {"webhookUrl"}
    new_key = _key(body["data"])
    assert new_key != old_key and body["data"]["id"] == created["id"]
    async with transaction(api.db) as repo:
        assert await repo.find_connector_by_webhook_key("twilio", old_key) is None
        found = await repo.find_connector_by_webhook_key("twilio", new_key)
        assert found is not None and found.id == created["id"]


async def test_delete_then_404(api: ApiUnderTest) -> None:
    created = await _create(api)
    url = f"/v2/connectors/{created['id']}"
    first = await api.client.delete(url, headers=api.headers)
    assert first.status_code == 200
    assert first.json() == {"message": "Connector deleted successfully"}
    for method in ("DELETE", "GET", "PATCH"):
        again = await api.client.request(method, url, json={}, headers=api.headers)
        assert again.status_code == 404 and again.json() == NOT_FOUND_BODY
    rotate = await api.client.post(f"{url}/rotate-key", headers=api.headers)
    assert rotate.status_code == 404 and rotate.json() == NOT_FOUND_BODY
    async with api.db.session() as session:
        repo = Repository(session)
        assert await repo.find_connector_by_webhook_key("twilio", _key(created)) is None


# --------------------------------------------------------------------------- tenant isolation


async def test_another_api_key_sees_404(api: ApiUnderTest) -> None:
    created = await _create(api, name="mine")
    url = f"/v2/connectors/{created['id']}"
    unknown = await api.client.get("/no/such/path", headers=api.other_headers)
    attempts = [
        await api.client.get(url, headers=api.other_headers),
        await api.client.patch(url, json={"name": "stolen"}, headers=api.other_headers),
        await api.client.post(f"{url}/rotate-key", headers=api.other_headers),
        await api.client.delete(url, headers=api.other_headers),
        await api.client.get("/v2/connectors/cn_0000000000000000", headers=api.headers),
    ]
    for response in attempts:
        assert response.status_code == 404
        assert response.content == unknown.content
        assert response.json() == NOT_FOUND_BODY
        assert response.headers["content-type"] == unknown.headers["content-type"]

    listed = await api.client.get("/v2/connectors", headers=api.other_headers)
    assert listed.json()["data"] == [] and listed.json()["pageInfo"]["total"] == 0
    mine = await api.client.get(url, headers=api.headers)
    assert mine.status_code == 200 and mine.json()["data"]["name"] == "mine"
    async with transaction(api.db) as repo:  # the key was not rotated by the other tenant
        assert await repo.find_connector_by_webhook_key("twilio", _key(created)) is not None


# --------------------------------------------------------------------------- authentication


async def test_both_authorization_forms_are_accepted(api: ApiUnderTest) -> None:
    token = api.token()
    for value in (token, f"Bearer {token}", f"bearer {token}"):
        response = await api.client.get("/v2/connectors", headers={"Authorization": value})
        assert response.status_code == 200, value[:10]


def _bad_tokens(api: ApiUnderTest) -> dict[str, tuple[str | None, str]]:
    now = time.time()
    claims = {"apikey": api.apikey, "permissions": ["allow_join"], "version": 2}
    wrong_secret = "w" * 43
    return {
        "missing": (None, "Missing Authorization header"),
        "empty": ("", "Missing Authorization header"),
        "bearer only": ("Bearer", "Malformed Authorization header"),
        "three words": (f"Bearer {api.token()} extra", "Malformed Authorization header"),
        "garbage": ("Bearer not-a-jwt", "Malformed token"),
        "wrong secret": (
            jwt.encode({**claims, "exp": int(now) + 600}, wrong_secret, algorithm="HS256"),
            "Invalid token signature",
        ),
        "expired": (api.token(now=now - 2 * 86400), "Token has expired"),
        "unknown apikey": (
            jwt.encode(
                {**claims, "apikey": "ak_unknown", "exp": int(now) + 600},
                wrong_secret,
                algorithm="HS256",
            ),
            "Unknown API key",
        ),
        "no apikey": (
            jwt.encode({"exp": int(now) + 600}, api.secret, algorithm="HS256"),
            "no valid apikey",
        ),
        "no exp": (jwt.encode(claims, api.secret, algorithm="HS256"), "no exp claim"),
        "NaN exp": (  # NaN is not JSON: refused before PyJWT parses the claims
            jwt.encode({**claims, "exp": float("nan")}, api.secret, algorithm="HS256"),
            "Malformed token",
        ),
        "string exp": (
            jwt.encode({**claims, "exp": str(int(now) + 600)}, api.secret, algorithm="HS256"),
            "exp claim is not a number",
        ),
        "alg none": (
            jwt.encode({**claims, "exp": int(now) + 600}, "", algorithm="none"),
            "Unsupported token algorithm",
        ),
        "HS512": (
            jwt.encode({**claims, "exp": int(now) + 600}, api.secret * 2, algorithm="HS512"),
            "Unsupported token algorithm",
        ),
        "not yet valid": (
            jwt.encode(
                {**claims, "exp": int(now) + 9000, "nbf": int(now) + 3600},
                api.secret,
                algorithm="HS256",
            ),
            "not valid yet",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "bearer only",
        "three words",
        "garbage",
        "wrong secret",
        "expired",
        "unknown apikey",
        "no apikey",
        "no exp",
        "NaN exp",
        "string exp",
        "alg none",
        "HS512",
        "not yet valid",
    ],
)
async def test_bad_tokens_get_401(
    api: ApiUnderTest, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    value, reason = _bad_tokens(api)[case]
    headers = {} if value is None else {"Authorization": value}
    caplog.set_level(logging.DEBUG)
    for method, url in (("GET", "/v2/connectors"), ("POST", "/v2/connectors")):
        response = await api.client.request(
            method, url, json={"provider": "twilio"}, headers=headers
        )
        assert response.status_code == 401, response.text
        message = response.json()["message"]
        assert reason in message
        assert response.headers["www-authenticate"] == "Bearer"
        token = value.split()[-1] if value and value != "Bearer" else None
        if token:
            assert token not in message
            assert token not in caplog.text
    async with transaction(api.db) as repo:
        assert await repo.count_connectors(api.apikey) == 0


async def test_authentication_comes_before_body_parsing(api: ApiUnderTest) -> None:
    for content in (b"not json", b'{"provider": 5}', b"{}"):
        response = await api.client.post(
            "/v2/connectors", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401
    response = await api.client.patch("/v2/connectors/cn_x", content=b"[")
    assert response.status_code == 401


async def test_expiry_follows_the_injected_clock(api: ApiUnderTest) -> None:
    token = api.token(expires_in=600)
    headers = {"Authorization": token}
    assert (await api.client.get("/v2/connectors", headers=headers)).status_code == 200
    api.clock.offset = 3600
    expired = await api.client.get("/v2/connectors", headers=headers)
    assert expired.status_code == 401 and expired.json()["message"] == "Token has expired"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "starts_with"),
    [
        ({"provider": "skype"}, f"provider: must be one of: {CHOICES}"),
        ({}, f"provider: is required (one of: {CHOICES})"),
        ({"name": "x"}, "provider: is required"),
        ({"provider": 5}, "provider:"),
        ({"provider": None}, "provider:"),
        ({"provider": ""}, "provider:"),
        ({"provider": "twilio", "name": 7}, "name:"),
        ({"provider": "twilio", "defaultRoomId": 5}, "defaultRoomId:"),
        ({"provider": "twilio", "defaultRuleId": ["a"]}, "defaultRuleId:"),
        ({"provider": "twilio", "region": {"a": 1}}, "region:"),
        ({"provider": "twilio", "name": "n" * 201}, "name:"),
        ({"provider": "twilio", "defaultRoomId": "r" * 129}, "defaultRoomId:"),
        ({"provider": "twilio", "defaultRuleId": "r" * 129}, "defaultRuleId:"),
        ({"provider": "twilio", "region": "r" * 33}, "region:"),
        ({"provider": "twilio", "name": "nul\x00here"}, "name:"),
        ({"provider": "twilio", "colour": "red"}, "colour: unknown field"),
        ([{"provider": "twilio"}], "body:"),
        ("twilio", "body:"),
    ],
)
async def test_create_validation(api: ApiUnderTest, body: Any, starts_with: str) -> None:
    response = await api.client.post("/v2/connectors", json=body, headers=api.headers)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(starts_with)
    async with transaction(api.db) as repo:
        assert await repo.count_connectors(api.apikey) == 0


async def test_limits_are_inclusive(api: ApiUnderTest) -> None:
    data = await _create(api, name="n" * 200, defaultRoomId="r" * 128, region="g" * 32)
    assert len(data["name"]) == 200 and len(data["region"]) == 32


@pytest.mark.parametrize(
    ("body", "starts_with"),
    [
        ({"provider": "plivo"}, "provider: cannot be changed"),
        ({"provider": "twilio"}, "provider: cannot be changed"),
        ({"webhookUrl": "x"}, "webhookUrl: unknown field"),
        ({"id": "cn_x"}, "id: unknown field"),
        ({"name": 1}, "name:"),
        ({"region": "r" * 33}, "region:"),
        ({"defaultRoomId": ""}, "defaultRoomId:"),
        (["name"], "body:"),
    ],
)
async def test_patch_validation(api: ApiUnderTest, body: Any, starts_with: str) -> None:
    created = await _create(api, name="keep")
    response = await api.client.patch(
        f"/v2/connectors/{created['id']}", json=body, headers=api.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(starts_with)
    got = await api.client.get(f"/v2/connectors/{created['id']}", headers=api.headers)
    assert got.json()["data"]["name"] == "keep" and got.json()["data"]["provider"] == "twilio"


@pytest.mark.parametrize(
    ("params", "starts_with"),
    [
        ({"perPage": 0}, "perPage:"),
        ({"perPage": 101}, "perPage:"),
        ({"page": 0}, "page:"),
        ({"page": "abc"}, "page:"),
    ],
)
async def test_list_validation(api: ApiUnderTest, params: dict[str, Any], starts_with: str) -> None:
    response = await api.client.get("/v2/connectors", params=params, headers=api.headers)
    assert response.status_code == 400
    assert response.json()["message"].startswith(starts_with)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"not json", "application/json"),
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"provider=twilio", "application/x-www-form-urlencoded"),
        (b'{"provider": "tw\xffilio"}', "application/json"),
        (b"\x00\x01\x02", "application/octet-stream"),
        (b'{"provider": "twilio", "name": "\\ud800"}', "application/json"),
        (b'{"provider": "twilio"', "text/plain"),
    ],
)
async def test_non_json_bodies_get_400(
    api: ApiUnderTest, content: bytes, content_type: str
) -> None:
    headers = {**api.headers, "Content-Type": content_type}
    created = await api.client.post("/v2/connectors", content=content, headers=headers)
    assert created.status_code == 400, created.text
    assert created.json()["message"]
    patched = await api.client.patch(
        "/v2/connectors/cn_0000000000000000", content=content, headers=headers
    )
    assert 400 <= patched.status_code < 500, patched.text


# --------------------------------------------------------------------------- errors, schema


async def test_error_bodies_are_json_messages(api: ApiUnderTest) -> None:
    not_found = await api.client.get("/nowhere/whk_" + "a" * 32)
    assert not_found.status_code == 404 and not_found.json() == NOT_FOUND_BODY
    not_allowed = await api.client.put("/v2/connectors", headers=api.headers)
    assert not_allowed.status_code == 405
    assert set(not_allowed.json()) == {"message"}


async def test_unexpected_errors_are_500_without_details(
    api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(self: Repository, apikey: str) -> int:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(Repository, "count_connectors", explode)
    with caplog.at_level(logging.ERROR, logger="callbridge.api.errors"):
        response = await api.client.get("/v2/connectors", headers=api.headers)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal server error"}
    assert "exploded" not in response.text and "Traceback" not in response.text
    assert "RuntimeError" in caplog.text


async def test_openapi_document(api: ApiUnderTest) -> None:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    schemas = doc["components"]["schemas"]
    create = schemas["CreateConnectorRequest"]
    assert create["discriminator"]["propertyName"] == "provider"
    assert list(create["discriminator"]["mapping"]) == PROVIDERS
    branches = [ref["$ref"].rsplit("/", 1)[-1] for ref in create["oneOf"]]
    assert branches == [f"Create{p.title()}Connector" for p in PROVIDERS]
    for provider, branch in zip(PROVIDERS, branches, strict=True):
        assert schemas[branch]["properties"]["provider"]["const"] == provider
        assert schemas[branch]["required"] == ["provider"]
        assert schemas[branch]["additionalProperties"] is False
    assert schemas["UpdateConnectorRequest"]["additionalProperties"] is False
    assert "provider" not in schemas["UpdateConnectorRequest"]["properties"]
    assert "webhookUrl" not in schemas["ConnectorData"]["properties"]
    assert "webhookUrl" in schemas["ConnectorWithWebhookUrl"]["required"]
    assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"

    paths = doc["paths"]
    expected = {
        ("/v2/connectors", "post"): {"201", "400", "401", "429", "413"},
        ("/v2/connectors", "get"): {"200", "400", "401", "429"},
        ("/v2/connectors/{connector_id}", "get"): {"200", "400", "401", "429", "404"},
        ("/v2/connectors/{connector_id}", "patch"): {
            "200",
            "400",
            "401",
            "429",
            "404",
            "409",
            "413",
        },
        ("/v2/connectors/{connector_id}", "delete"): {"200", "400", "401", "429", "404"},
        ("/v2/connectors/{connector_id}/rotate-key", "post"): {"200", "400", "401", "429", "404"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert set(operation["responses"]) == statuses, (path, method)
        assert operation["security"] == [{"apiToken": []}]
        for status in statuses - {"200", "201"}:
            error_schema = operation["responses"][status]["content"]["application/json"]
            assert error_schema["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


# --------------------------------------------------------------------------- media options


async def test_codec_defaults_and_resolution(api: ApiUnderTest) -> None:
    plain = await _create(api)
    assert (plain["codec"], plain["sampleRate"]) == (None, None)
    named = await _create(api, codec="PCMU")
    assert (named["codec"], named["sampleRate"]) == ("PCMU", 8000)  # first supported rate
    explicit = await _create(api, codec="PCMU", sampleRate=8000)
    assert (explicit["codec"], explicit["sampleRate"]) == ("PCMU", 8000)
    cleared = await _create(api, codec=None, sampleRate=None, markupStyle=None)
    assert {k: cleared[k] for k in MEDIA_DEFAULTS} == MEDIA_DEFAULTS

    got = await api.client.get(f"/v2/connectors/{named['id']}", headers=api.headers)
    assert (got.json()["data"]["codec"], got.json()["data"]["sampleRate"]) == ("PCMU", 8000)


async def test_patch_codec(api: ApiUnderTest) -> None:
    created = await _create(api)
    url = f"/v2/connectors/{created['id']}"
    set_codec = await api.client.patch(url, json={"codec": "PCMU"}, headers=api.headers)
    assert set_codec.status_code == 200, set_codec.text
    assert (set_codec.json()["data"]["codec"], set_codec.json()["data"]["sampleRate"]) == (
        "PCMU",
        8000,
    )
    rate_only = await api.client.patch(url, json={"sampleRate": 8000}, headers=api.headers)
    assert rate_only.status_code == 200, rate_only.text
    # other providers stream at 16 kHz: valid in itself, but not for this connector
    bad_rate = await api.client.patch(url, json={"sampleRate": 16000}, headers=api.headers)
    assert bad_rate.status_code == 409
    assert bad_rate.json()["message"] == "sampleRate: twilio supports PCMU/8000"
    cleared = await api.client.patch(url, json={"codec": None}, headers=api.headers)
    assert cleared.status_code == 200
    assert (cleared.json()["data"]["codec"], cleared.json()["data"]["sampleRate"]) == (None, None)
    rate_alone = await api.client.patch(url, json={"sampleRate": 8000}, headers=api.headers)
    assert rate_alone.status_code == 200  # the provider's first codec at that rate
    assert (rate_alone.json()["data"]["codec"], rate_alone.json()["data"]["sampleRate"]) == (
        "PCMU",
        8000,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"codec": "PCMA"}, "codec: twilio supports PCMU/8000"),
        ({"codec": "L16"}, "codec: twilio supports PCMU/8000"),
        ({"codec": "L16", "sampleRate": 16000}, "codec: twilio supports PCMU/8000"),
        ({"codec": "PCMU", "sampleRate": 16000}, "sampleRate: twilio supports PCMU/8000"),
        ({"sampleRate": 16000}, "sampleRate: twilio supports PCMU/8000"),
        ({"markupStyle": "connect"}, "markupStyle: twilio has no markup styles"),
        ({"verifySignatures": True}, "verifySignatures: requires credentials"),
    ],
)
async def test_provider_option_validation(
    api: ApiUnderTest, body: dict[str, Any], message: str
) -> None:
    response = await api.client.post(
        "/v2/connectors", json={"provider": "twilio", **body}, headers=api.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"] == message
    created = await _create(api)
    # valid for some provider, so on update a conflict with this connector's provider
    patched = await api.client.patch(
        f"/v2/connectors/{created['id']}", json=body, headers=api.headers
    )
    assert patched.status_code == 409, patched.text
    assert patched.json()["message"].startswith(message)
    async with transaction(api.db) as repo:
        assert await repo.count_connectors(api.apikey) == 1


@pytest.mark.parametrize(
    ("body", "starts_with"),
    [
        ({"codec": "G729"}, "codec:"),
        ({"codec": "pcmu"}, "codec:"),
        ({"codec": 1}, "codec:"),
        ({"sampleRate": 44100}, "sampleRate:"),
        ({"sampleRate": "8000"}, "sampleRate:"),
        ({"sampleRate": 8000.5}, "sampleRate:"),
        ({"markupStyle": ""}, "markupStyle:"),
        ({"markupStyle": "s" * 33}, "markupStyle:"),
        ({"markupStyle": 3}, "markupStyle:"),
        ({"verifySignatures": "yes"}, "verifySignatures:"),
        ({"verifySignatures": None}, "verifySignatures:"),
        ({"credentials": "token"}, "credentials:"),
        ({"credentials": ["a"]}, "credentials:"),
        ({"credentials": {"accountSid": 5, "authToken": "x"}}, "credentials"),
        (
            {"credentials": {"accountSid": "", "authToken": "x"}},
            "credentials.accountSid: must be 1-512 characters without NUL",
        ),
        (
            {"credentials": {"accountSid": "a" * 513, "authToken": "x"}},
            "credentials.accountSid: must be 1-512",
        ),
        (
            {"credentials": {"accountSid": "AC1", "authToken": "a\x00b"}},
            "credentials.authToken: must be 1-512",
        ),
        ({"credentials": {"k" * 65: "x"}}, "credentials"),
        ({"credentials": {f"k{n}": "x" for n in range(17)}}, "credentials"),
        ({"credentials": {"accountSid": "AC1"}}, "credentials.authToken: is required"),
        ({"credentials": {}}, "credentials.accountSid: is required"),
        (
            {"credentials": {**TWILIO_CREDENTIALS, "apiKey": "k"}},
            "credentials.apiKey: unknown field (twilio takes accountSid, authToken)",
        ),
        (
            {"credentials": {"authId": "MA1", "authToken": "t"}},
            "credentials.authId: unknown field",
        ),
        (
            {"verifySignatures": True, "credentials": None},
            "verifySignatures: requires credentials",
        ),
    ],
)
async def test_option_type_validation(
    api: ApiUnderTest, body: dict[str, Any], starts_with: str
) -> None:
    response = await api.client.post(
        "/v2/connectors", json={"provider": "twilio", **body}, headers=api.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(starts_with)
    for value in TWILIO_CREDENTIALS.values():
        assert value not in response.text
    async with transaction(api.db) as repo:
        assert await repo.count_connectors(api.apikey) == 0


async def test_option_limits_are_inclusive(api: ApiUnderTest) -> None:
    credentials = {"accountSid": "a" * 512, "authToken": "b"}
    data = await _create(api, credentials=credentials)
    assert data["hasCredentials"] is True


# --------------------------------------------------------------------------- credentials


async def _all_responses_text(api: ApiUnderTest, connector_id: str) -> list[str]:
    url = f"/v2/connectors/{connector_id}"
    texts = [
        (await api.client.get(url, headers=api.headers)).text,
        (await api.client.get("/v2/connectors", headers=api.headers)).text,
        (await api.client.patch(url, json={"name": "p"}, headers=api.headers)).text,
        (await api.client.post(f"{url}/rotate-key", headers=api.headers)).text,
        (await api.client.get("/schema/openapi.json")).text,
    ]
    return texts


async def test_credentials_are_write_only_and_encrypted(
    api: ApiUnderTest,
    box: CredentialBox,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await api.client.post(
        "/v2/connectors",
        json={"provider": "twilio", "credentials": TWILIO_CREDENTIALS, "verifySignatures": True},
        headers=api.headers,
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert set(data) == PUBLIC_FIELDS | {"webhookUrl"}
    assert data["hasCredentials"] is True and data["verifySignatures"] is True
    texts = [response.text, *await _all_responses_text(api, data["id"])]
    for body in texts[:-1]:  # the API responses (the last one is the OpenAPI document)
        assert '"credentials"' not in body and "accountSid" not in body
    for body in texts:
        for value in TWILIO_CREDENTIALS.values():
            assert value not in body

    async with api.db.session() as session:
        token = (
            await session.execute(
                text("SELECT credentials FROM connectors WHERE id = :id"), {"id": data["id"]}
            )
        ).scalar_one()
    assert token.startswith("v1.")
    assert box.decrypt(token, data["id"]) == TWILIO_CREDENTIALS
    with pytest.raises(ValueError, match="cannot be decrypted"):
        box.decrypt(token, "cn_0000000000000000")  # bound to its connector

    dump: list[str] = []
    async with api.db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in await connection.execute(select(table)):
                dump.extend(str(value) for value in row)
    for value in TWILIO_CREDENTIALS.values():
        assert value not in "\n".join(dump)

    logged = caplog.text + "".join(capfd.readouterr())
    for value in TWILIO_CREDENTIALS.values():
        assert value not in logged


async def test_credentials_replace_and_remove(api: ApiUnderTest, box: CredentialBox) -> None:
    created = await _create(api, credentials=TWILIO_CREDENTIALS)
    assert created["hasCredentials"] is True and created["verifySignatures"] is False
    url = f"/v2/connectors/{created['id']}"

    async def stored() -> str | None:
        async with api.db.session() as session:
            connector = await Repository(session).get_connector(api.apikey, created["id"])
            assert connector is not None
            return connector.credentials

    first_token = await stored()
    replacement = {"accountSid": "AC" + "9" * 32, "authToken": "second-token"}
    replaced = await api.client.patch(url, json={"credentials": replacement}, headers=api.headers)
    assert replaced.status_code == 200 and replaced.json()["data"]["hasCredentials"] is True
    second_token = await stored()
    assert second_token is not None and second_token != first_token
    assert box.decrypt(second_token, created["id"]) == replacement

    on = await api.client.patch(url, json={"verifySignatures": True}, headers=api.headers)
    assert on.status_code == 200 and on.json()["data"]["verifySignatures"] is True
    # removing the credentials while signature checks stay on is refused
    refused = await api.client.patch(url, json={"credentials": None}, headers=api.headers)
    assert refused.status_code == 409
    assert refused.json()["message"].startswith("verifySignatures: requires credentials")
    assert await stored() == second_token
    # both in one request works
    both = await api.client.patch(
        url, json={"credentials": None, "verifySignatures": False}, headers=api.headers
    )
    assert both.status_code == 200, both.text
    assert both.json()["data"]["hasCredentials"] is False
    assert both.json()["data"]["verifySignatures"] is False
    assert await stored() is None

    # credentials and verifySignatures together on a connector that had none
    again = await api.client.patch(
        url,
        json={"credentials": TWILIO_CREDENTIALS, "verifySignatures": True},
        headers=api.headers,
    )
    assert again.status_code == 200, again.text
    assert again.json()["data"]["verifySignatures"] is True


async def test_patch_keeps_credentials_when_absent(api: ApiUnderTest, box: CredentialBox) -> None:
    created = await _create(api, credentials=TWILIO_CREDENTIALS, verifySignatures=True)
    url = f"/v2/connectors/{created['id']}"
    response = await api.client.patch(url, json={"name": "renamed"}, headers=api.headers)
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["name"], data["hasCredentials"], data["verifySignatures"]) == (
        "renamed",
        True,
        True,
    )
    rotated = await api.client.post(f"{url}/rotate-key", headers=api.headers)
    assert rotated.json()["data"]["hasCredentials"] is True
    async with api.db.session() as session:
        connector = await Repository(session).get_connector(api.apikey, created["id"])
    assert connector is not None and connector.credentials is not None
    assert box.decrypt(connector.credentials, created["id"]) == TWILIO_CREDENTIALS


async def test_other_tenant_cannot_set_credentials(api: ApiUnderTest) -> None:
    created = await _create(api)
    response = await api.client.patch(
        f"/v2/connectors/{created['id']}",
        json={"credentials": TWILIO_CREDENTIALS},
        headers=api.other_headers,
    )
    assert response.status_code == 404
    got = await api.client.get(f"/v2/connectors/{created['id']}", headers=api.headers)
    assert got.json()["data"]["hasCredentials"] is False


async def test_openapi_documents_provider_options(api: ApiUnderTest) -> None:
    doc = (await api.client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    null = {"type": "null"}

    def nullable(schema: dict[str, Any]) -> Any:
        assert schema["oneOf"][-1] == null
        return schema["oneOf"][0]

    expected = {  # provider: codecs, rates, markup styles, credential fields
        "Twilio": (["PCMU"], [8000], None, ["accountSid", "authToken"]),
        "Plivo": (["PCMU", "L16"], [8000, 16000], None, ["authId", "authToken"]),
        "Telnyx": (["PCMU", "PCMA"], [8000], ["connect", "start"], ["apiKey", "publicKey"]),
        "Custom": (["L16"], [8000, 16000], None, ["signingSecret"]),
    }
    for provider, (codecs, rates, styles, fields) in expected.items():
        create = schemas[f"Create{provider}Connector"]
        properties = create["properties"]
        assert nullable(properties["codec"])["enum"] == codecs
        assert nullable(properties["sampleRate"])["enum"] == rates
        if styles is None:
            assert properties["markupStyle"]["type"] == "null"
        else:
            assert nullable(properties["markupStyle"])["enum"] == styles
        closed = nullable(properties["credentials"])
        assert closed["required"] == fields and closed["additionalProperties"] is False
        assert all(closed["properties"][f]["maxLength"] == 512 for f in fields)
        assert all(closed["properties"][f]["minLength"] == 1 for f in fields)
        verify_rule = create["allOf"][-1]["anyOf"]
        assert verify_rule == [
            {"properties": {"verifySignatures": {"type": "boolean", "const": False}}},
            {"properties": {"credentials": {"type": "object"}}, "required": ["credentials"]},
        ]
    # only Plivo has a codec without every rate: PCMU is 8 kHz only
    plivo_codecs = schemas["CreatePlivoConnector"]["allOf"][0]["anyOf"]
    assert plivo_codecs[0]["properties"]["codec"]["const"] == "PCMU"
    assert nullable(plivo_codecs[0]["properties"]["sampleRate"])["enum"] == [8000]
    assert len(schemas["CreateTwilioConnector"]["allOf"]) == 1

    update = schemas["UpdateConnectorRequest"]["properties"]
    assert sorted(nullable(update["codec"])["enum"]) == ["L16", "PCMA", "PCMU"]
    assert sorted(nullable(update["sampleRate"])["enum"]) == [8000, 16000]
    assert nullable(update["markupStyle"])["enum"] == ["connect", "start"]
    credentials = update["credentials"]["anyOf"]
    assert credentials[-1] == null
    assert [c["required"] for c in credentials[:-1]] == [
        ["accountSid", "authToken"],
        ["authId", "authToken"],
        ["apiKey", "publicKey"],
        ["signingSecret"],
    ]
    data = schemas["ConnectorData"]["properties"]
    assert "credentials" not in data and data["hasCredentials"]["type"] == "boolean"
    assert set(schemas["ConnectorData"]["required"]) == PUBLIC_FIELDS
    assert set(schemas["ConnectorWithWebhookUrl"]["required"]) == PUBLIC_FIELDS | {"webhookUrl"}


# --------------------------------------------------------------------------- other providers


@dataclass
class FakeProvider:
    """The option attributes of a provider richer than Twilio (Plivo/Telnyx-like)."""

    supported_codecs: tuple[CodecSpec, ...] = (
        CodecSpec("PCMU", 8000),
        CodecSpec("PCMA", 8000),
        CodecSpec("L16", 8000),
        CodecSpec("L16", 16000),
    )
    markup_styles: tuple[str, ...] = ("connect", "start")
    credential_fields: tuple[str, ...] = ("apiKey", "publicKey")
    credential_patterns: Mapping[str, str] = field(default_factory=dict)

    def validate_credentials(self, values: dict[str, str]) -> None:
        if values.get("publicKey") == "bad":
            raise CredentialsError("publicKey", "is not a key")


def _options(name: str, provider: FakeProvider) -> ProviderOptions:
    return ProviderOptions.of(name, provider)  # type: ignore[arg-type]


async def test_option_checks_for_a_richer_provider() -> None:
    acme = _options("acme", FakeProvider())
    assert acme.resolve_codec(None, None) == (None, None)
    assert acme.resolve_codec("L16", None) == ("L16", 8000)
    assert acme.resolve_codec("L16", 16000) == ("L16", 16000)
    assert acme.resolve_codec("PCMA", None) == ("PCMA", 8000)
    assert acme.resolve_codec(None, 16000) == ("L16", 16000)  # the first codec at that rate
    assert acme.resolve_codec(None, 8000) == ("PCMU", 8000)
    choices = "acme supports PCMU/8000, PCMA/8000, L16/8000, L16/16000"
    with pytest.raises(RuleError, match=f"^sampleRate: {choices}$"):
        acme.resolve_codec("PCMA", 16000)
    narrow = _options("narrow", FakeProvider(supported_codecs=(CodecSpec(),)))
    with pytest.raises(RuleError, match=r"^codec: "):
        narrow.resolve_codec("L16", None)
    with pytest.raises(RuleError, match=r"^sampleRate: narrow supports PCMU/8000$"):
        narrow.resolve_codec(None, 16000)

    acme.check_markup_style("start")
    acme.check_markup_style(None)
    with pytest.raises(RuleError, match=r"^markupStyle: must be one of: connect, start$"):
        acme.check_markup_style("stream")

    assert acme.check_credentials({"apiKey": "k", "publicKey": "p"}) == {
        "apiKey": "k",
        "publicKey": "p",
    }
    with pytest.raises(RuleError, match=r"^credentials\.publicKey: is required$"):
        acme.check_credentials({"apiKey": "k"})
    with pytest.raises(RuleError, match=r"^credentials\.publicKey: is not a key$"):
        acme.check_credentials({"apiKey": "k", "publicKey": "bad"})
    with pytest.raises(RuleError, match=r"^credentials: old takes no credentials$"):
        _options("old", FakeProvider(credential_fields=())).check_credentials({"apiKey": "k"})


async def test_update_schema_joins_the_enabled_providers() -> None:
    twilio_like = FakeProvider(
        supported_codecs=(CodecSpec(),),
        markup_styles=(),
        credential_fields=("accountSid", "authToken"),
    )
    options = update_option_schemas(
        [
            _options("twilio", twilio_like),
            _options("acme", FakeProvider()),
            _options("same", FakeProvider()),
        ]
    )
    codec = options["codec"].to_schema()["oneOf"]
    assert codec == [{"type": "string", "enum": ["PCMU", "PCMA", "L16"]}, {"type": "null"}]
    rate = options["sampleRate"].to_schema()["oneOf"]
    assert rate == [{"type": "integer", "enum": [8000, 16000]}, {"type": "null"}]
    styles = options["markupStyle"].to_schema()["oneOf"]
    assert styles == [{"type": "string", "enum": ["connect", "start"]}, {"type": "null"}]
    credentials = options["credentials"].to_schema()["anyOf"]
    assert credentials[-1] == {"type": "null"}
    assert [c["required"] for c in credentials[:-1]] == [
        ["accountSid", "authToken"],
        ["apiKey", "publicKey"],
    ]
    assert all(c["additionalProperties"] is False for c in credentials[:-1])
