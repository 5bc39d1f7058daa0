"""Hostile and loose input on the REST API, over real HTTP and WebSockets: every JSON body goes
through safe_json (limits, one error shape, no coercion), tokens are checked before PyJWT sees
them, and values the provider cannot use are refused."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from litestar import Litestar
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.store.repository import Repository
from tests.api_app import ApiServer, ApiUnderTest, new_tenant, serving_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

VALID_PUBLIC_KEY = base64.b64encode(bytes(range(32))).decode()
TELNYX_CREDENTIALS = {"apiKey": "KEY0123", "publicKey": VALID_PUBLIC_KEY}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    async with serving_app(tmp_path_factory.mktemp("strict")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def api(served: tuple[ApiServer, Litestar]) -> ApiUnderTest:
    return await new_tenant(served[0])


async def _create(api: ApiUnderTest, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/v2/connectors", json=body, headers=api.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _count(api: ApiUnderTest) -> int:
    listed = await api.client.get("/v2/connectors", headers=api.headers)
    total: int = listed.json()["pageInfo"]["total"]
    return total


def _nested(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


# --------------------------------------------------------------------------- bodies


async def test_deeply_nested_bodies_are_400(api: ApiUnderTest) -> None:
    body = _nested(20_000)  # 40 KB: under the size limit
    assert len(body) < 64 * 1024
    headers = {**api.headers, "Content-Type": "application/json"}
    created = await api.client.post("/v2/connectors", content=body, headers=headers)
    assert created.status_code == 400
    assert created.json() == {"message": "body: nested deeper than 32 levels"}
    connector = await _create(api, provider="twilio")
    patched = await api.client.patch(
        f"/v2/connectors/{connector['id']}", content=body, headers=headers
    )
    assert patched.status_code == 400
    assert patched.json() == {"message": "body: nested deeper than 32 levels"}


async def test_invalid_utf8_is_400(api: ApiUnderTest) -> None:
    response = await api.client.post(
        "/v2/connectors",
        content=b'{"provider": "tw\xffilio"}',
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("body: not valid JSON")


def _chunks(total: int) -> list[bytes]:
    return [b'{"provider": "twilio", "name": "', *[b"n" * 1024] * (total // 1024), b'"}']


async def _streamed(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversize_bodies_are_413(api: ApiUnderTest, chunked: bool) -> None:
    # Chunked: no Content-Length, so the limit is enforced while reading.
    chunks = _chunks(70_000)
    content: Any = _streamed(chunks) if chunked else b"".join(chunks)
    response = await api.client.post(
        "/v2/connectors",
        content=content,
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {"message": "body: larger than 65536 bytes"}
    assert await _count(api) == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"verifySignatures": "true"}, "verifySignatures: Expected `bool`, got `str`"),
        ({"verifySignatures": 0}, "verifySignatures: Expected `bool`, got `int`"),
        ({"sampleRate": "16000"}, "sampleRate: Expected `int | null`, got `str`"),
        ({"name": 5}, "name: Expected `str | null`, got `int`"),
    ],
)
async def test_no_coercion(api: ApiUnderTest, body: dict[str, Any], message: str) -> None:
    created = await api.client.post(
        "/v2/connectors", json={"provider": "custom", **body}, headers=api.headers
    )
    assert created.status_code == 400
    assert created.json() == {"message": message}
    connector = await _create(api, provider="custom")
    patched = await api.client.patch(
        f"/v2/connectors/{connector['id']}", json=body, headers=api.headers
    )
    assert patched.status_code == 400
    assert patched.json() == {"message": message}
    got = await api.client.get(f"/v2/connectors/{connector['id']}", headers=api.headers)
    assert got.json()["data"] == {k: v for k, v in connector.items() if k != "webhookUrl"}


# --------------------------------------------------------------------------- provider values


async def test_telnyx_public_key_is_checked(api: ApiUnderTest) -> None:
    bad = {"apiKey": "KEY0123", "publicKey": "not-a-key"}
    created = await api.client.post(
        "/v2/connectors",
        json={"provider": "telnyx", "credentials": bad},
        headers=api.headers,
    )
    assert created.status_code == 400
    assert created.json()["message"].startswith("credentials.publicKey: ")
    assert "not-a-key" not in created.text
    assert await _count(api) == 0

    connector = await _create(api, provider="telnyx", credentials=TELNYX_CREDENTIALS)
    assert connector["hasCredentials"] is True
    url = f"/v2/connectors/{connector['id']}"
    patched = await api.client.patch(url, json={"credentials": bad}, headers=api.headers)
    assert patched.status_code == 400
    assert patched.json()["message"].startswith("credentials.publicKey: ")


@pytest.mark.parametrize("room", ["room\n", "", " room", "-room", "r" * 129, "room/1"])
async def test_default_room_id_must_be_a_room_id(api: ApiUnderTest, room: str) -> None:
    created = await api.client.post(
        "/v2/connectors",
        json={"provider": "twilio", "defaultRoomId": room},
        headers=api.headers,
    )
    assert created.status_code == 400
    assert created.json()["message"].startswith("defaultRoomId: ")
    connector = await _create(api, provider="twilio", defaultRoomId="room-1")
    patched = await api.client.patch(
        f"/v2/connectors/{connector['id']}", json={"defaultRoomId": room}, headers=api.headers
    )
    assert patched.status_code == 400
    assert patched.json()["message"].startswith("defaultRoomId: ")


async def test_a_rate_alone_picks_the_providers_codec(api: ApiUnderTest) -> None:
    custom = await _create(api, provider="custom", sampleRate=16000)
    assert (custom["codec"], custom["sampleRate"]) == ("L16", 16000)
    twilio = await _create(api, provider="twilio", sampleRate=8000)
    assert (twilio["codec"], twilio["sampleRate"]) == ("PCMU", 8000)
    refused = await api.client.post(
        "/v2/connectors", json={"provider": "twilio", "sampleRate": 16000}, headers=api.headers
    )
    assert refused.status_code == 400
    assert refused.json() == {"message": "sampleRate: twilio supports PCMU/8000"}


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "twilio", "codec": "L16"},
        {"provider": "custom", "codec": "PCMA"},
        {"provider": "plivo", "codec": "PCMU", "sampleRate": 16000},
        {"provider": "plivo", "markupStyle": "start"},
        {"provider": "custom", "verifySignatures": True},
    ],
)
async def test_create_refuses_what_the_provider_cannot_take(
    api: ApiUnderTest, body: dict[str, Any]
) -> None:
    response = await api.client.post("/v2/connectors", json=body, headers=api.headers)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"codec": "L16"}, 409, "codec: twilio supports PCMU/8000"),
        ({"markupStyle": "start"}, 409, "markupStyle: twilio has no markup styles"),
        ({"verifySignatures": True}, 409, "verifySignatures: requires credentials"),
        (
            {"credentials": TELNYX_CREDENTIALS},
            409,
            "credentials.apiKey: unknown field (twilio takes accountSid, authToken)",
        ),
        ({"markupStyle": "stream"}, 400, "markupStyle: must be one of: connect, start"),
        ({"credentials": {"token": "x"}}, 400, "credentials: must be the fields of one provider"),
        (
            {"verifySignatures": True, "credentials": None},
            400,
            "verifySignatures: requires credentials",
        ),
    ],
)
async def test_update_conflicts_are_409_and_bad_bodies_400(
    api: ApiUnderTest, body: dict[str, Any], status: int, message: str
) -> None:
    connector = await _create(api, provider="twilio")
    url = f"/v2/connectors/{connector['id']}"
    response = await api.client.patch(url, json=body, headers=api.headers)
    assert response.status_code == status, response.text
    assert response.json()["message"].startswith(message)
    got = await api.client.get(url, headers=api.headers)
    assert got.json()["data"]["updatedAt"] == connector["updatedAt"]


# --------------------------------------------------------------------------- tokens


def _segment(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _deep_tokens(api: ApiUnderTest) -> list[str]:
    deep = "[" * 2500 + "]" * 2500
    header = _segment('{"alg":"HS256","typ":"JWT"}')
    claims = _segment(f'{{"apikey":"{api.apikey}","exp":4102444800,"a":{deep}}}')
    signature = _segment("signature")
    deep_header = _segment('{"alg":"HS256","x":' + deep + "}")
    tokens = [f"{header}.{claims}.{signature}", f"{deep_header}.{_segment('{}')}.{signature}"]
    assert all(len(token) <= 8192 for token in tokens)
    return tokens


@pytest.fixture
def pyjwt_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Older PyJWT releases let RecursionError out of json.loads, so a token that safe_json
    refuses must never reach PyJWT: its parsing functions record any call and fail."""
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def parse(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise RecursionError("PyJWT parsed a token that safe_json refuses")

        return parse

    for name in ("decode", "decode_complete", "get_unverified_header"):
        monkeypatch.setattr(jwt, name, refuse(name))
    yield calls
    assert calls == []


async def test_deeply_nested_tokens_are_401(api: ApiUnderTest, pyjwt_calls: list[str]) -> None:
    for token in _deep_tokens(api):
        response = await api.client.get(
            "/v2/connectors", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.json() == {"message": "Malformed token"}


async def test_deeply_nested_tokens_are_refused_on_the_room_socket(
    api: ApiUnderTest, pyjwt_calls: list[str]
) -> None:
    base = api.base_url.replace("http://", "ws://")
    for token in _deep_tokens(api):
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"{base}/v2/rooms/room-1/participants?token={token}"):
                pass
        assert caught.value.response.status_code == 403
    assert pyjwt_calls == []


# --------------------------------------------------------------------------- OPTIONS


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v2/connectors", "GET, OPTIONS, POST"),
        ("/v2/connectors/cn_0000000000000000", "DELETE, GET, OPTIONS, PATCH"),
        ("/v2/connectors/cn_0000000000000000/rotate-key", "OPTIONS, POST"),
        ("/v2/calls", "GET, OPTIONS"),
        ("/v2/sip/credentials", "GET, OPTIONS, POST"),
        ("/v2/hooks/twilio/whk_x", "GET, OPTIONS, POST"),
    ],
)
async def test_options_lists_every_method(api: ApiUnderTest, path: str, allow: str) -> None:
    response = await api.client.options(path, headers=api.headers)
    assert response.status_code == 204
    assert response.headers["allow"] == allow


# --------------------------------------------------------------------------- voice webhook


async def test_webhook_errors_are_json_messages(api: ApiUnderTest) -> None:
    connector = await _create(api, provider="twilio")
    url = connector["webhookUrl"].replace("https://cb.example.test", "")
    unknown = await api.client.post("/v2/hooks/twilio/whk_" + "x" * 32, data={"CallSid": "CA1"})
    assert unknown.status_code == 404 and unknown.json() == {"message": "Not found"}
    oversize = await api.client.post(
        url,
        content=b"CallSid=" + b"x" * 70_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert oversize.status_code == 413
    assert oversize.json() == {"message": "body: larger than 65536 bytes"}


# --------------------------------------------------------------------------- concurrent writes


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("PATCH", "", {"region": "us002"}), ("POST", "/rotate-key", None)],
)
async def test_a_write_between_read_and_update_is_no_500(
    api: ApiUnderTest,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    """Another connection (a second server, the call sweeper) commits after the request read
    the connector and before it writes: SQLite must make one wait, not fail the request."""
    connector = await _create(api, provider="twilio", name="before")
    database = api.db.url.database
    assert database is not None
    read = Repository.get_connector

    def write_elsewhere() -> None:
        with sqlite3.connect(database, timeout=15) as other:
            other.execute(
                "UPDATE connectors SET name = 'elsewhere' WHERE id = ?", (connector["id"],)
            )

    async def read_then_let_another_write(self: Repository, apikey: str, connector_id: str) -> Any:
        found = await read(self, apikey, connector_id)
        writer = threading.Thread(target=write_elsewhere)
        writer.start()
        # A request holding the write lock makes the writer wait; give it a moment either way.
        await asyncio.to_thread(writer.join, 0.5)
        return found

    monkeypatch.setattr(Repository, "get_connector", read_then_let_another_write)
    response = await api.client.request(
        method, f"/v2/connectors/{connector['id']}{suffix}", json=body, headers=api.headers
    )
    monkeypatch.undo()
    assert response.status_code == 200, response.text


async def test_a_store_lock_timeout_is_a_503_not_a_500() -> None:
    import sqlite3

    import sqlalchemy.exc

    from callbridge.api.errors import _store_error_handler, is_store_busy

    locked = sqlalchemy.exc.OperationalError(
        "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")
    )
    other = sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O"))
    assert is_store_busy(locked) and not is_store_busy(other)

    class FakeRequest:
        method = "POST"

        class url:
            path = "/v2/hooks/twilio/whk_x"

    busy = _store_error_handler(FakeRequest(), locked)  # type: ignore[arg-type]
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.content == {"message": "the server is busy; try again shortly"}
    assert _store_error_handler(FakeRequest(), other).status_code == 500  # type: ignore[arg-type]
