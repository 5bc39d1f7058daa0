"""Per-client-IP rate limits (``security.rate_limits``): voice webhooks, media socket handshakes
and REST requests with a bad token are answered 429 with ``RateLimit`` headers past their
limit; valid tokens are never limited; ``X-Forwarded-For`` names the client only behind a
trusted proxy; with Redis the replicas share the counts; a failing store lets requests through.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.api.rate_limits import RateLimits
from callbridge.serving import proxy_options
from callbridge.settings import RateLimitSettings, ServerSettings
from tests.servers import InProcessServer, running_in_process
from tests.services import redis_url

UNKNOWN_HOOK = "/v2/hooks/twilio/whk_" + "A" * 32
FORM = {"CallSid": "CA" + "0" * 32, "From": "+15550001111", "To": "+15550002222"}


def limited(tmp_path: Path, trusted: list[str] | None = None, **limits: int) -> Any:
    overrides: dict[str, Any] = {"security": {"rate_limits": limits}}
    if trusted is not None:
        overrides["server"] = {"trusted_proxies": trusted}
    return running_in_process(tmp_path, overrides)


def assert_refused(answer: httpx.Response, limit: int) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json() == {"message": "Too many requests; see Retry-After."}
    headers = answer.headers
    assert headers["ratelimit-limit"] == str(limit)
    assert headers["ratelimit-remaining"] == "0"
    assert headers["ratelimit-policy"] == f"{limit};w=60"
    assert 1 <= int(headers["ratelimit-reset"]) <= 60
    assert headers["retry-after"] == headers["ratelimit-reset"]


async def test_webhooks_past_the_limit_get_429_and_each_client_ip_has_its_own_count(
    tmp_path: Path,
) -> None:
    with limited(tmp_path, trusted=["127.0.0.0/8"], webhooks_per_minute=3) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            answers = [await client.post(UNKNOWN_HOOK, data=FORM) for _ in range(3)]
            assert [answer.status_code for answer in answers] == [404] * 3
            assert_refused(await client.post(UNKNOWN_HOOK, data=FORM), 3)
            # Behind the trusted proxy (this loopback), another client is counted apart.
            other = {"X-Forwarded-For": "203.0.113.7, 127.0.0.2"}
            assert (await client.post(UNKNOWN_HOOK, data=FORM, headers=other)).status_code == 404
            # The REST API is not under the webhook limit.
            token = {"Authorization": f"Bearer {server.token()}"}
            assert (await client.get("/v2/connectors", headers=token)).status_code == 200


async def test_without_a_trusted_proxy_x_forwarded_for_changes_nothing(tmp_path: Path) -> None:
    with limited(tmp_path, webhooks_per_minute=2) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for number in range(2):
                forged = {"X-Forwarded-For": f"198.51.100.{number}"}
                answer = await client.post(UNKNOWN_HOOK, data=FORM, headers=forged)
                assert answer.status_code == 404
            forged = {"X-Forwarded-For": "198.51.100.99"}
            assert_refused(await client.post(UNKNOWN_HOOK, data=FORM, headers=forged), 2)


async def test_bad_tokens_past_the_limit_get_429_and_a_valid_token_never_does(
    tmp_path: Path,
) -> None:
    with limited(tmp_path, unauthorized_per_minute=2) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            bad = {"Authorization": "Bearer not-a-token"}
            first = await client.get("/v2/connectors", headers=bad)
            second = await client.get("/v2/calls")  # no token at all
            assert (first.status_code, second.status_code) == (401, 401)
            assert first.headers["www-authenticate"].startswith("Bearer")
            assert_refused(await client.get("/v2/connectors", headers=bad), 2)
            good = {"Authorization": f"Bearer {server.token()}"}
            for _ in range(5):
                assert (await client.get("/v2/connectors", headers=good)).status_code == 200
            answer = await client.post("/v2/connectors", json={"name": "x"}, headers=bad)
            assert_refused(answer, 2)
            created = await client.post(
                "/v2/connectors", json={"provider": "twilio", "name": "ok"}, headers=good
            )
            assert created.status_code == 201, created.text


async def test_sockets_refused_for_their_token_count_as_unauthorized(tmp_path: Path) -> None:
    with limited(tmp_path, unauthorized_per_minute=2) as server:
        room = f"ws://127.0.0.1:{server.port}/v2/rooms/limited/participants"
        statuses = []
        for url in (f"{room}?token=bad", f"ws://127.0.0.1:{server.port}/v2/ws?token=bad", room):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, open_timeout=5):
                    pass
            statuses.append(refused.value.response.status_code)
        assert statuses == [403, 403, 429], "two refusals, then the limit"
        assert refused.value.response.headers["RateLimit-Limit"] == "2"
        async with connect(f"{room}?token={server.token()}", open_timeout=5) as member:
            assert json.loads(await member.recv())["event"] == "joined", "a valid token joins"


async def test_media_sockets_past_the_limit_are_refused_429_in_the_handshake(
    tmp_path: Path,
) -> None:
    with limited(tmp_path, media_sockets_per_minute=2) as server:
        url = f"ws://127.0.0.1:{server.port}/ingest/twilio?ref=bogus"
        statuses = []
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, open_timeout=5):
                    pass
            statuses.append(refused.value.response.status_code)
        assert statuses == [403, 403, 429], "an unknown ref, twice; then the limit"
        headers = refused.value.response.headers
        assert headers["RateLimit-Limit"] == "2" and int(headers["Retry-After"]) >= 1


async def test_zero_turns_a_limit_off(tmp_path: Path) -> None:
    with limited(tmp_path, webhooks_per_minute=0, unauthorized_per_minute=0) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(30):
                assert (await client.post(UNKNOWN_HOOK, data=FORM)).status_code == 404
                assert (await client.get("/v2/connectors")).status_code == 401


# --------------------------------------------------------------------------- the middleware alone


class Recorder:
    """An ASGI app answering 404 (a webhook for no connector), and what was sent back."""

    def __init__(self) -> None:
        self.called = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def post_hook(app: Any, client_ip: str) -> int:
    scope = {"type": "http", "path": UNKNOWN_HOOK, "client": (client_ip, 5000), "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.services
async def test_replicas_sharing_redis_share_the_counts() -> None:
    url = await redis_url()
    settings = RateLimitSettings(webhooks_per_minute=3)
    one, two = Recorder(), Recorder()
    first = RateLimits(settings, url).middleware(one)
    second = RateLimits(settings, url).middleware(two)
    client = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    answers = [await post_hook(app, client) for app in (first, second, first, second)]
    assert answers == [404, 404, 404, 429]
    assert (one.called, two.called) == (2, 1)


async def test_a_store_that_fails_lets_requests_through() -> None:
    settings = RateLimitSettings(webhooks_per_minute=1)
    app = Recorder()
    unreachable = RateLimits(settings, "redis://127.0.0.1:1/0").middleware(app)
    assert [await post_hook(unreachable, "10.0.0.1") for _ in range(3)] == [404] * 3


def test_only_trusted_proxies_may_name_the_client() -> None:
    none = proxy_options(ServerSettings())
    assert none == {"proxy_headers": False, "forwarded_allow_ips": None}
    trusted = proxy_options(ServerSettings(trusted_proxies=["10.1.2.3/8", "192.0.2.7/32"]))
    assert trusted == {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.0/8", "192.0.2.7/32"]}


async def test_the_api_documents_the_429s(server: InProcessServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        document = (await client.get("/schema/openapi.json")).json()
    hook = document["paths"]["/v2/hooks/{provider}/{webhook_key}"]["post"]["responses"]
    assert "429" in hook and "Retry-After" in hook["429"]["headers"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                assert "429" in operation["responses"], (method, path)
