"""Graceful drain of `callbridge serve` on SIGTERM: readiness false at once, no new calls or
claims, running calls go on up to the cap, then end as ``shutdown`` (hung up at the provider,
``call-hangup`` delivered), and the process exits cleanly. Readiness checks its parts."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx

from tests import twilio_wire as tw
from tests.fake_provider_api import FakeProviderApi
from tests.live_calls import twilio_caller
from tests.servers import (
    create_connector,
    provider_api_overrides,
    running_in_process,
    start_process,
)
from tests.services import redis_url
from tests.webhook_receiver import receiving

ACCOUNT_SID = "AC" + "7" * 32
CREDENTIALS = {"accountSid": ACCOUNT_SID, "authToken": "drain_auth_token"}


async def test_sigterm_drains_then_ends_the_calls_still_up(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    extra = {
        **provider_api_overrides(["twilio"], "twilio", fake_provider_api.base_url),
        "cluster": {"drain_seconds": 1.5},
        "webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1},
    }
    async with receiving() as receiver:
        server = start_process(tmp_path, extra)
        try:
            token = server.token()
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(headers=headers) as client:
                created = await client.post(
                    f"{server.url}/v2/webhooks",
                    json={"url": f"{receiver.url}/hook", "events": ["call-hangup"]},
                )
                assert created.status_code == 201
                assert (await client.get(f"{server.url}/readyz")).status_code == 200
                connector = create_connector(
                    server.url,
                    token,
                    provider="twilio",
                    defaultRoomId="drain",
                    credentials=CREDENTIALS,
                )
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                waiting = await tw.post_webhook(
                    connector.webhook_url, tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                )
                assert answer.stream_url is not None and waiting.stream_url is not None
                async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
                    await asyncio.sleep(0.3)
                    server.process.send_signal(signal.SIGTERM)
                    sent = time.monotonic()
                    await asyncio.sleep(0.3)
                    ready = await client.get(f"{server.url}/readyz")
                    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
                    assert (await client.get(f"{server.url}/healthz")).status_code == 200
                    late = await tw.post_webhook(
                        connector.webhook_url, tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                    )
                    assert late.status == 503 and late.stream_url is None
                    assert json.loads(late.body) == {
                        "message": "this server is shutting down; try again"
                    }
                    # the call answered before the drain is refused its media socket now
                    try:
                        async with twilio_caller(waiting.stream_url, "CA" + "0" * 32):
                            raise AssertionError("a claim was accepted while draining")
                    except Exception as exc:  # the handshake is refused (HTTP 403)
                        assert "403" in str(exc)
                    assert not caller.closed.is_set(), "the running call goes on"
                    await asyncio.wait_for(caller.closed.wait(), 5)
                    ended_after = time.monotonic() - sent
                (delivery,) = await receiver.wait_for(1)
        finally:
            exit_code = await asyncio.to_thread(server.process.wait, 15)
            server.stop()
    assert 1.4 <= ended_after <= 4.0, f"the call ended {ended_after:.1f} s after SIGTERM"
    event = json.loads(delivery.body)
    assert event["webhookType"] == "call-hangup"
    assert event["data"]["endReason"] == "shutdown"
    hangups = [r for r in fake_provider_api.requests if r.path.startswith("/2010-04-01/")]
    assert len(hangups) == 1 and "Status=completed" in hangups[0].body.decode()
    assert exit_code == 0
    logs = server.logs()
    assert "draining" in logs and "drained: stopping" in logs


async def test_readiness_reports_a_shared_ref_store_that_does_not_answer(tmp_path: Path) -> None:
    await redis_url()  # a reachable Redis first, to see the difference
    overrides = {
        "refs": {
            "store": "redis",
            "config": {"redis": {"url": "redis://127.0.0.1:9/0", "timeout_seconds": 0.3}},
        }
    }
    with running_in_process(tmp_path, overrides) as server:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{server.url}/readyz")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unhealthy",
        "checks": {"store": True, "ref_store": False, "media_clock": True},
    }


async def test_readiness_is_ready_with_a_reachable_shared_ref_store(tmp_path: Path) -> None:
    overrides = {"refs": {"store": "redis", "config": {"redis": {"url": await redis_url()}}}}
    with running_in_process(tmp_path, overrides) as server:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{server.url}/readyz")
    assert (answer.status_code, answer.json()["status"]) == (200, "ready")
