"""The Connectors API over real HTTP (uvicorn on loopback, httpx client)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio

from callbridge.api.errors import NOT_FOUND_BODY
from callbridge.store.repository import Repository, transaction
from tests.api_app import (
    PROVIDERS,
    PUBLIC_API_URL,
    ApiServer,
    ApiUnderTest,
    new_tenant,
    serve_api,
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
    "createdAt",
    "updatedAt",
}
CHOICES = ", ".join(PROVIDERS)


# One server for the module (starting uvicorn per test would dominate the run time); each test
# gets its own API keys, so tests cannot see each other's connectors.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiServer]:
    async with serve_api(tmp_path_factory.mktemp("api")) as server:
        yield server


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

    for text in (listed.text, got.text):
        assert "webhookUrl" not in text and "whk_" not in text
        for key in keys:
            assert key not in text


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
    created = await _create(api, name="old", defaultRoomId="room-1", region="us002")
    api.clock.offset += 5
    response = await api.client.patch(
        f"/v2/connectors/{created['id']}",
        json={"name": "new", "region": None, "defaultRuleId": "rule-7"},
        headers=api.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Connector updated successfully"
    data = response.json()["data"]
    assert set(data) == PUBLIC_FIELDS
    assert (data["name"], data["defaultRoomId"], data["defaultRuleId"], data["region"]) == (
        "new",
        "room-1",
        "rule-7",
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
        "NaN exp": (
            jwt.encode({**claims, "exp": float("nan")}, api.secret, algorithm="HS256"),
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
    data = await _create(
        api, name="n" * 200, defaultRoomId="r" * 128, defaultRuleId="u" * 128, region="g" * 32
    )
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
    assert create["properties"]["provider"]["enum"] == PROVIDERS
    assert create["required"] == ["provider"]
    assert create["additionalProperties"] is False
    assert schemas["UpdateConnectorRequest"]["additionalProperties"] is False
    assert "provider" not in schemas["UpdateConnectorRequest"]["properties"]
    assert "webhookUrl" not in schemas["ConnectorData"]["properties"]
    assert "webhookUrl" in schemas["ConnectorWithWebhookUrl"]["required"]
    assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"

    paths = doc["paths"]
    expected = {
        ("/v2/connectors", "post"): {"201", "400", "401"},
        ("/v2/connectors", "get"): {"200", "400", "401"},
        ("/v2/connectors/{connector_id}", "get"): {"200", "400", "401", "404"},
        ("/v2/connectors/{connector_id}", "patch"): {"200", "400", "401", "404"},
        ("/v2/connectors/{connector_id}", "delete"): {"200", "400", "401", "404"},
        ("/v2/connectors/{connector_id}/rotate-key", "post"): {"200", "400", "401", "404"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert set(operation["responses"]) == statuses, (path, method)
        assert operation["security"] == [{"apiToken": []}]
        for status in statuses - {"200", "201"}:
            error_schema = operation["responses"][status]["content"]["application/json"]
            assert error_schema["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
