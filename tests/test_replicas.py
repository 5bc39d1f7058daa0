"""Replicas as separate processes sharing the local PostgreSQL and Redis: a webhook answered by
A, its media socket on B and the room's member on C hear each other (the room homed on C, B
relaying); an API hang-up sent to A ends the call B holds (at the provider too); B's events
reach an event-socket client on A; each webhook delivered once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests import twilio_wire as tw
from tests.fake_provider_api import FakeProviderApi
from tests.live_calls import assert_both_ways_after, tone_participant, twilio_caller
from tests.servers import (
    TEST_KEYS,
    ServerProcess,
    create_connector,
    free_port,
    issue_token,
    provider_api_overrides,
    start_process,
)
from tests.services import redis_url
from tests.sip_client import UdpUac, header_of, status_of
from tests.stores import postgres_database_url
from tests.test_event_socket import EventClient
from tests.webhook_receiver import receiving

KEY = "ak_test_one"
ACCOUNT_SID = "AC" + "9" * 32
CREDENTIALS = {"accountSid": ACCOUNT_SID, "authToken": "replicas_auth_token"}


def shared_config(database: str, redis: str, provider_api: str) -> dict[str, Any]:
    """What every replica shares: the database, Redis (refs and the cluster bus), keys."""
    return {
        **provider_api_overrides(["twilio"], "twilio", provider_api),
        "auth": {"api_keys": [{"apikey": KEY, "secret": TEST_KEYS[KEY]}]},
        "storage": {"url": database},
        "refs": {
            "store": "redis",
            "config": {"redis": {"url": redis, "key_prefix": f"cb-{secrets.token_hex(6)}:"}},
        },
        "cluster": {"redis_url": redis, "drain_seconds": 2},
        "security": {"credentials_key": base64.b64encode(secrets.token_bytes(32)).decode()},
        "webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1},
        "events": {"poll_interval_seconds": 0.05},
    }


@contextlib.asynccontextmanager
async def running_replicas(
    tmp_path: Path,
    config: dict[str, Any],
    count: int,
    own: Callable[[int], dict[str, Any]] | None = None,
) -> AsyncIterator[list[ServerProcess]]:
    """``count`` replica processes on ``config`` (folders a, b, c… under ``tmp_path``), all
    stopped on exit (also those started before one failed to start); ``own(i)`` adds replica
    ``i``'s own settings."""
    replicas: list[ServerProcess] = []
    try:
        for index, name in enumerate("abcdefgh"[:count]):
            folder = tmp_path / name
            folder.mkdir()
            extra = {**config, **own(index)} if own is not None else config
            replicas.append(start_process(folder, extra))
        yield replicas
    finally:
        await asyncio.gather(*(asyncio.to_thread(replica.stop) for replica in replicas))


async def call_of(server: ServerProcess, token: str, status: str) -> dict[str, Any]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(200):
            (call,) = (await client.get(f"{server.url}/v2/calls")).json()["data"]
            if call["status"] == status:
                return call  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
    raise AssertionError(f"the call never became {status}: {call}")


async def test_a_call_across_replicas_is_hung_up_from_the_other_one(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    redis = await redis_url()
    async with postgres_database_url() as database, receiving() as receiver:
        config = shared_config(database, redis, fake_provider_api.base_url)
        async with running_replicas(tmp_path, config, 2) as (first, second):
            token = issue_token(KEY, TEST_KEYS[KEY])
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(headers=headers) as client:
                for server in (first, second):
                    ready = await client.get(f"{server.url}/readyz")
                    assert ready.json()["checks"]["cluster"] is True
                created = await client.post(
                    f"{first.url}/v2/webhooks",
                    json={
                        "url": f"{receiver.url}/hook",
                        "events": ["call-started", "call-answered", "call-hangup"],
                    },
                )
                assert created.status_code == 201
            socket_on_first = f"ws://127.0.0.1:{first.port}/v2/ws?token={token}"
            async with connect(socket_on_first) as socket:
                watcher = EventClient(socket)
                await watcher.subscribe([f"apikey:{KEY}:call:*"])
                connector = create_connector(
                    first.url,
                    token,
                    provider="twilio",
                    defaultRoomId="replicas",
                    credentials=CREDENTIALS,
                )
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                on_second = answer.stream_url.replace(f":{first.port}/", f":{second.port}/")
                async with twilio_caller(on_second, form["CallSid"]) as caller:
                    answered = await call_of(first, token, "answered")
                    async with httpx.AsyncClient(headers=headers) as client:
                        hangup = await client.post(f"{first.url}/v2/calls/{answered['id']}/hangup")
                    assert hangup.status_code == 202, hangup.text
                    await asyncio.wait_for(caller.closed.wait(), 10)
                ended = await call_of(first, token, "ended")
                events = [await watcher.next() for _ in range(3)]
            deliveries = await receiver.wait_for(3)
            await asyncio.sleep(0.5)  # a second delivery of anything would arrive by now
    assert ended["endReason"] == "api-hangup"
    hangups = [r for r in fake_provider_api.requests if r.path.startswith("/2010-04-01/")]
    assert len(hangups) == 1, "the replica holding the call hung it up at Twilio"
    assert "Status=completed" in hangups[0].body.decode()
    # the event socket on A saw what B did
    assert [(e["event_type"], e["data"].get("status")) for e in events] == [
        ("call.created", "started"),
        ("call.status", "answered"),
        ("call.status", "hangup"),
    ]
    delivered = [json.loads(request.body)["webhookType"] for request in receiver.received]
    assert sorted(delivered) == ["call-answered", "call-hangup", "call-started"], (
        "each event delivered once, with workers on both replicas"
    )
    assert len(deliveries) == 3
    assert "call hung up for another replica" in second.logs()


async def test_webhook_on_a_socket_on_b_member_on_c_hear_each_other(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    redis = await redis_url()
    async with postgres_database_url() as database:
        config = shared_config(database, redis, fake_provider_api.base_url)
        async with running_replicas(tmp_path, config, 3) as (first, second, third):
            token = issue_token(KEY, TEST_KEYS[KEY])
            connector = create_connector(
                first.url, token, provider="twilio", defaultRoomId="across", credentials=CREDENTIALS
            )
            room = f"ws://127.0.0.1:{third.port}/v2/rooms/across/participants?token={token}"
            async with tone_participant(room) as participant:
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                on_second = answer.stream_url.replace(f":{first.port}/", f":{second.port}/")
                async with twilio_caller(on_second, form["CallSid"]) as caller:
                    joined = await participant.wait_for("participant-joined")
                    assert joined["kind"] == "caller"
                    moment = time.monotonic()
                    await assert_both_ways_after(caller, participant, moment)
            ended = await call_of(first, token, "ended")
    assert ended["endReason"] == "caller-hangup"
    assert "room member relayed to its home" in second.logs()
    assert "relayed member joined" in third.logs()
    assert ended["media"]["frames_in"] > 0 and "playout_frames_in" in ended["media"]


async def test_direct_mode_sends_the_call_to_its_rooms_home(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    redis = await redis_url()
    async with postgres_database_url() as database:
        config = shared_config(database, redis, fake_provider_api.base_url)
        config["cluster"]["room_mode"] = "direct"
        sip_ports = [free_port() for _ in range(3)]

        def own_sip_port(index: int) -> dict[str, Any]:
            return {"sip": {"enabled": True, "port": sip_ports[index]}}

        async with running_replicas(tmp_path, config, 3, own_sip_port) as (first, second, third):
            token = issue_token(KEY, TEST_KEYS[KEY])
            connector = create_connector(
                first.url, token, provider="twilio", defaultRoomId="direct", credentials=CREDENTIALS
            )
            room = "/v2/rooms/direct/participants"
            async with tone_participant(f"ws://127.0.0.1:{third.port}{room}?token={token}") as home:
                # a member reaching another replica is relayed, and told where the home is
                async with connect(f"ws://127.0.0.1:{second.port}{room}?token={token}") as other:
                    joined = json.loads(await other.recv())
                assert joined["homeUrl"] == f"ws://127.0.0.1:{third.port}{room}"
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                assert answer.stream_url.startswith(f"ws://127.0.0.1:{third.port}/ingest/")
                async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
                    await home.wait_for("participant-joined")
                    await assert_both_ways_after(caller, home, time.monotonic())
                # a SIP call reaching another replica is redirected to the home's SIP address
                async with httpx.AsyncClient() as client:
                    created = await client.post(
                        f"{first.url}/v2/sip/credentials",
                        json={"name": "trunk"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                credential = created.json()["data"]
                phone = UdpUac()
                try:
                    moved = await phone.authenticated_invite(
                        "direct", sip_ports[1], credential["username"], credential["password"]
                    )
                finally:
                    phone.close()
                assert status_of(moved) == 302, moved
                assert header_of(moved, "Contact") == (
                    f"<sip:direct@127.0.0.1:{sip_ports[2]};transport=udp>"
                )
    assert "room member relayed to its home" not in third.logs(), "the call reached its home"


async def test_a_killed_home_closes_its_calls_and_the_room_rehomes(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    redis = await redis_url()
    async with postgres_database_url() as database:
        config = shared_config(database, redis, fake_provider_api.base_url)
        config["cluster"]["room_lease_seconds"] = 1.5
        config["calls"] = {
            "sweep_interval_seconds": 0.2,
            "heartbeat_seconds": 0.3,
            "owner_timeout_seconds": 1.5,
        }
        async with running_replicas(tmp_path, config, 3) as (first, second, third):
            token = issue_token(KEY, TEST_KEYS[KEY])
            connector = create_connector(
                first.url,
                token,
                provider="twilio",
                defaultRoomId="phoenix",
                credentials=CREDENTIALS,
            )
            room = "/v2/rooms/phoenix/participants"
            async with tone_participant(f"ws://127.0.0.1:{third.port}{room}?token={token}") as gone:
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                on_home = answer.stream_url.replace(f":{first.port}/", f":{third.port}/")
                async with twilio_caller(on_home, form["CallSid"]) as lost:
                    await gone.wait_for("participant-joined")
                    doomed = await call_of(first, token, "answered")
                    third.process.kill()  # SIGKILL: no drain, no goodbye
                    await asyncio.wait_for(lost.closed.wait(), 10)
            interrupted = await call_of(first, token, "failed")
            assert (interrupted["id"], interrupted["endReason"]) == (doomed["id"], "interrupted")

            # the lease lapses; the next member re-homes the room, and a new call works
            await asyncio.sleep(1.6)
            async with tone_participant(
                f"ws://127.0.0.1:{second.port}{room}?token={token}"
            ) as member:
                form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
                    await member.wait_for("participant-joined")
                    await assert_both_ways_after(caller, member, time.monotonic())
    assert "room member relayed to its home" in first.logs(), (
        "A relayed the call to B, the new home"
    )


async def test_one_ref_raced_by_fifty_sockets_across_replicas_is_claimed_once(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    redis = await redis_url()
    async with postgres_database_url() as database:
        config = shared_config(database, redis, fake_provider_api.base_url)
        async with running_replicas(tmp_path, config, 3) as replicas:
            first = replicas[0]
            token = issue_token(KEY, TEST_KEYS[KEY])
            connector = create_connector(first.url, token, defaultRoomId="race")
            answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            assert answer.stream_url is not None
            urls = [
                answer.stream_url.replace(f":{first.port}/", f":{replicas[n % 3].port}/")
                for n in range(50)
            ]

            async def attempt(url: str) -> bool:
                try:
                    async with connect(url, open_timeout=10):
                        return True
                except InvalidStatus as refused:
                    assert refused.response.status_code == 403
                    return False

            accepted = await asyncio.gather(*(attempt(url) for url in urls))
    assert sum(accepted) == 1
