"""Lifecycle webhooks end to end: a customer registers a URL, places a simulated call and
receives call-started, call-answered and call-hangup in order, each verifiable with the
published key; a server killed after committing an event delivers it after a restart."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests import twilio_wire as tw
from tests.live_calls import twilio_caller
from tests.servers import InProcessServer, create_connector, running_in_process, start_process
from tests.webhook_receiver import Answer, receiving

EVENTS = ["call-started", "call-answered", "call-hangup", "call-failed", "call-dtmf"]
WEBHOOKS = {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}


def _public_key(base_url: str) -> rsa.RSAPublicKey:
    response = httpx.get(f"{base_url}/v2/public/rsa-public-key")
    assert response.status_code == 200
    key = serialization.load_pem_public_key(response.json()["data"]["publicKey"].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _verify(key: rsa.RSAPublicKey, body: bytes, signature: str) -> None:
    key.verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())


def _subscribe(base_url: str, token: str, url: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{base_url}/v2/webhooks",
        json={"url": url, "events": EVENTS, **extra},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _call(base_url: str, token: str, seconds: float = 0.6, dtmf: str = "") -> str:
    connector = create_connector(base_url, token, defaultRoomId="lobby")
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None, answer.body
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        await asyncio.sleep(seconds)
        for sequence, digit in enumerate(dtmf, start=100):
            message = {
                "event": "dtmf",
                "streamSid": caller.stream_sid,
                "sequenceNumber": str(sequence),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
            await caller.inject(json.dumps(message))
            await asyncio.sleep(0.05)
        await caller.stop(final=tw.stop(caller.stream_sid, form["CallSid"], 9999))
    return form["CallSid"]


@pytest.fixture
def server(tmp_path: Path) -> Any:
    with running_in_process(tmp_path, {"webhooks": WEBHOOKS}) as running:
        yield running


async def test_a_call_is_reported_in_order_and_each_event_verifies(
    server: InProcessServer,
) -> None:
    async with receiving() as receiver:
        token = server.token()
        _subscribe(server.url, token, f"{receiver.url}/hook")
        call_sid = await _call(server.url, token, dtmf="5")
        await receiver.wait_for(4)
        await asyncio.sleep(0.3)
    key = _public_key(server.url)
    for request in receiver.received:
        _verify(key, request.body, request.headers["videosdk-signature"])
        assert request.headers["content-type"] == "application/json"
        assert request.headers["traceparent"].startswith("00-")
    events = receiver.events()
    assert [e["webhookType"] for e in events] == [
        "call-started",
        "call-answered",
        "call-dtmf",
        "call-hangup",
    ]
    data = [e["data"] for e in events]
    assert [d["sequence"] for d in data] == [1, 2, 3, 4]
    assert len({d["eventId"] for d in data}) == 4
    assert {d["providerCallId"] for d in data} == {call_sid}
    assert len({d["callId"] for d in data}) == 1
    assert data[2]["digit"] == "5"
    hangup = data[3]
    assert (hangup["status"], hangup["endReason"], hangup["endedBy"]) == (
        "hangup",
        "caller-hangup",
        "caller",
    )
    assert isinstance(hangup["durationMs"], int) and hangup["durationMs"] >= 400
    assert hangup["media"]["frames_in"] > 10 and "playout_underruns" in hangup["media"]
    for request in receiver.received:  # compact JSON that survives a JavaScript round trip
        assert b": " not in request.body and b", " not in request.body


async def test_a_ping_and_the_delivery_log(server: InProcessServer) -> None:
    async with receiving() as receiver:
        token = server.token()
        headers = {"Authorization": f"Bearer {token}"}
        hook = _subscribe(server.url, token, f"{receiver.url}/hook?token=s3cret")
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            ping = await client.post(f"/v2/webhooks/{hook['id']}/test")
            assert ping.status_code == 200 and ping.json()["data"]["delivered"] is True
            assert receiver.events()[0]["webhookType"] == "ping"
            assert receiver.received[0].path == "/hook"
            listed = await client.get("/v2/webhooks")
            assert listed.json()["data"][0]["url"] == f"{receiver.url}/hook"  # no query string
            assert "s3cret" not in listed.text
            await _call(server.url, token)
            await receiver.wait_for(4)
            log = await client.get(f"/v2/webhooks/{hook['id']}/deliveries")
            deliveries = log.json()["data"]
            assert {d["eventType"] for d in deliveries} >= {"call-started", "call-hangup"}
            first = deliveries[-1]
            assert first["status"] == "delivered" and first["attempts"][0]["statusCode"] == 200
            again = await client.post(
                f"/v2/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver"
            )
            assert again.json()["data"]["eventId"] == first["eventId"]
            assert receiver.received[-1].json()["data"]["eventId"] == first["eventId"]


def test_urls_the_ssrf_rules_refuse_are_refused_at_registration(tmp_path: Path) -> None:
    with running_in_process(tmp_path) as server:  # no allow-list
        response = httpx.post(
            f"{server.url}/v2/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["call-started"]},
            headers={"Authorization": f"Bearer {server.token()}"},
        )
    assert response.status_code == 400
    assert response.json()["message"].startswith("url:")


async def test_an_event_committed_before_a_kill_is_delivered_after_the_restart(
    tmp_path: Path,
) -> None:
    async with receiving() as receiver:
        first = start_process(tmp_path, {"webhooks": {**WEBHOOKS, "workers": False}})
        try:
            token = first.token()
            hook = _subscribe(first.url, token, f"{receiver.url}/hook")
            connector = create_connector(first.url, token, defaultRoomId="lobby")
            answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            assert answer.stream_url is not None
            await asyncio.sleep(0.5)
            assert receiver.received == [], "no worker ran: the event waits in the store"
        finally:
            first.process.kill()  # SIGKILL: no shutdown of any kind
            first.process.wait(timeout=10)
        second = start_process(tmp_path, {"webhooks": WEBHOOKS})
        try:
            await receiver.wait_for(1)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as client:
                answer = await client.get(
                    f"{second.url}/v2/webhooks/{hook['id']}/deliveries",
                    headers={"Authorization": f"Bearer {second.token()}"},
                )
            log = answer.json()["data"]
        finally:
            second.stop()
    assert len(receiver.received) == 1, "once"
    event = receiver.events()[0]
    assert event["webhookType"] == "call-started"
    assert event["data"]["eventId"] == log[0]["eventId"], "the same id as stored before the kill"


async def test_a_retried_voice_webhook_emits_no_second_call_started(
    server: InProcessServer,
) -> None:
    async with receiving() as receiver:
        token = server.token()
        _subscribe(server.url, token, f"{receiver.url}/hook")
        connector = create_connector(server.url, token, defaultRoomId="lobby")
        form = tw.voice_webhook_form()
        first = await tw.post_webhook(connector.webhook_url, form)
        again = await tw.post_webhook(connector.webhook_url, form)  # the provider retries
        assert first.stream_url == again.stream_url is not None
        await receiver.wait_for(1)
        await asyncio.sleep(0.5)
    assert [event["webhookType"] for event in receiver.events()] == ["call-started"]


async def test_a_sigterm_lets_an_attempt_in_flight_finish(tmp_path: Path) -> None:
    """Graceful shutdown: the worker stops leasing and the attempt a slow receiver holds
    completes and is recorded, so nothing is left leased to a dead worker."""
    async with receiving() as receiver:
        receiver.default = Answer(200, delay=1.5)
        server = start_process(tmp_path, {"webhooks": WEBHOOKS})
        token = server.token()
        hook = _subscribe(server.url, token, f"{receiver.url}/hook")
        connector = create_connector(server.url, token, defaultRoomId="lobby")
        await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        await receiver.wait_for(1)  # the receiver now holds the request
        # SIGTERM; off the loop, which serves the receiver
        await asyncio.to_thread(server.stop)
        assert "Application shutdown complete" in server.logs(), "a clean shutdown"
        again = start_process(tmp_path, {"webhooks": {**WEBHOOKS, "workers": False}})
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.get(
                    f"{again.url}/v2/webhooks/{hook['id']}/deliveries",
                    headers={"Authorization": f"Bearer {again.token()}"},
                )
        finally:
            again.stop()
    (delivery,) = answer.json()["data"]
    assert delivery["status"] == "delivered"
    assert [a["statusCode"] for a in delivery["attempts"]] == [200]
    assert len(receiver.received) == 1


async def test_a_kill_while_the_receiver_holds_the_request_redelivers_after_the_lease(
    tmp_path: Path,
) -> None:
    """At-least-once: the attempt in flight dies with the server; after the restart the lease
    lapses (webhooks.lease_seconds) and the event arrives again, with the same id."""
    webhooks = {**WEBHOOKS, "lease_seconds": 5}
    async with receiving() as receiver:
        receiver.script.append(Answer(200, delay=3.0))  # the first attempt hangs
        first = start_process(tmp_path, {"webhooks": webhooks})
        try:
            token = first.token()
            _subscribe(first.url, token, f"{receiver.url}/hook")
            connector = create_connector(first.url, token, defaultRoomId="lobby")
            await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            await receiver.wait_for(1)
        finally:
            first.process.kill()  # SIGKILL while the receiver holds the request
            await asyncio.to_thread(first.process.wait, 10)
        second = start_process(tmp_path, {"webhooks": webhooks})
        try:
            await receiver.wait_for(2, within=20)
        finally:
            await asyncio.to_thread(second.stop)
    first_id, second_id = (request.json()["data"]["eventId"] for request in receiver.received[:2])
    assert first_id == second_id
    assert receiver.received[1].at - receiver.received[0].at >= 4.0, "after the lease lapsed"


async def test_standard_webhooks_secrets_sign_and_rotate_with_a_grace(
    server: InProcessServer,
) -> None:
    from callbridge.webhooks.verify import verify_standard

    async with receiving() as receiver:
        token = server.token()
        headers = {"Authorization": f"Bearer {token}"}
        hook = _subscribe(server.url, token, f"{receiver.url}/hook", signer="standard_webhooks")
        old_secret = hook["secret"]
        assert old_secret.startswith("whsec_") and hook["hasSecret"] is True
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            got = await client.get(f"/v2/webhooks/{hook['id']}")
            assert "secret" not in got.json()["data"] and old_secret not in got.text
            await client.post(f"/v2/webhooks/{hook['id']}/test")
            rotated = await client.patch(f"/v2/webhooks/{hook['id']}", json={"rotateSecret": True})
            new_secret = rotated.json()["data"]["secret"]
            assert new_secret.startswith("whsec_") and new_secret != old_secret
            await client.post(f"/v2/webhooks/{hook['id']}/test")
    before, after = receiver.received
    assert verify_standard(before.body, before.headers, secret=old_secret)
    assert len(after.headers["webhook-signature"].split()) == 2, "new and old sign in the grace"
    for secret in (old_secret, new_secret):
        assert verify_standard(after.body, after.headers, secret=secret)
    assert after.headers["webhook-id"] == after.json()["data"]["eventId"]
