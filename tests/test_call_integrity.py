"""Regression tests for the call-lifecycle defects a hostile test found, each driven the way it
was found: the real app over loopback (or a real server process), real sockets, and a live call
that must keep carrying the right tone both ways through whatever is thrown at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge import hookimpl
from callbridge.calls.sweeper import CallSweeper
from callbridge.plugin_types import RoutingStrategyPlugin
from callbridge.plugins import build_plugin_manager
from callbridge.protocols import Route
from callbridge_plugins.rooms import local as local_rooms
from tests import twilio_wire as tw
from tests.fake_provider_api import FakeProviderApi
from tests.live_calls import (
    LiveCaller,
    ToneParticipant,
    assert_both_ways_after,
    custom_caller,
    tone_participant,
    twilio_caller,
)
from tests.servers import (
    Connector,
    FakeClock,
    InProcessServer,
    ServerProcess,
    create_connector,
    provider_api_overrides,
    running_in_process,
    start_process,
)

ACCOUNT_SID = "AC" + "5" * 32
CREDENTIALS = {"accountSid": ACCOUNT_SID, "authToken": "integrity_auth_token"}
DEEP_JSON = '{"event":"x","a":' + "[" * 20000 + "]" * 20000 + "}"
"""40 KB of nesting: under the 64 KiB message cap, far over any recursion limit."""
QUICK_SWEEPS = {"calls": {"sweep_interval_seconds": 0.1}}


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
    return merged


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(
    tmp_path: Path, fake_provider_api: FakeProviderApi, clock: FakeClock
) -> Iterator[InProcessServer]:
    """Every provider enabled, Twilio hang-ups sent to the fake Twilio API, quick sweeps."""
    overrides = _merge(
        provider_api_overrides(
            ["twilio", "plivo", "telnyx", "custom"], "twilio", fake_provider_api.base_url
        ),
        QUICK_SWEEPS,
        {"server": {"start_timeout_seconds": 1.0}},
    )
    with running_in_process(tmp_path, overrides, clock=clock) as running:
        yield running


def twilio_connector(server: InProcessServer, room: str) -> Connector:
    return create_connector(
        server.url, server.token(), provider="twilio", defaultRoomId=room, credentials=CREDENTIALS
    )


@dataclass
class LiveCall:
    """A bridged Twilio call: its hand-driven caller, a tone participant in its room, and what
    made it."""

    caller: LiveCaller
    participant: ToneParticipant
    connector: Connector
    form: dict[str, str]
    token: str


@contextlib.asynccontextmanager
async def live_twilio_call(server: InProcessServer, room: str) -> AsyncIterator[LiveCall]:
    """A Twilio call bridged into ``room``, both sides streaming their tones."""
    connector = twilio_connector(server, room)
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    token = server.token()
    async with (
        tone_participant(room_url(server, room, token)) as participant,
        twilio_caller(answer.stream_url, form["CallSid"]) as caller,
    ):
        await participant.wait_for("participant-joined")
        yield LiveCall(caller, participant, connector, form, token)


def room_url(server: InProcessServer | ServerProcess, room: str, token: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={token}"


async def call_row(server: InProcessServer | ServerProcess, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    (call,) = response.json()["data"]
    return dict(call)


async def row_when(
    server: InProcessServer | ServerProcess, token: str, *statuses: str, within: float = 10
) -> dict[str, Any]:
    """The only call's row, once its status is one of ``statuses`` (or after ``within``)."""
    deadline = time.monotonic() + within
    while True:
        row = await call_row(server, token)
        if row["status"] in statuses or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.05)


async def refused(url: str) -> int:
    """The HTTP status of a refused WebSocket handshake."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=5):
            pass
    return caught.value.response.status_code


def twilio_hangups(api: FakeProviderApi) -> list[Any]:
    return [r for r in api.requests if r.path.startswith("/2010-04-01/")]


# --------------------------------------------------------------------------- 1. retried webhook


async def test_a_retried_webhook_cannot_disturb_a_live_call(
    server: InProcessServer, fake_provider_api: FakeProviderApi
) -> None:
    connector = twilio_connector(server, "retry-live")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    first = await tw.post_webhook(connector.webhook_url, form)
    again = await tw.post_webhook(connector.webhook_url, form)
    assert first.stream_url is not None
    assert (again.status, again.body) == (200, first.body), "unclaimed: the same answer"

    token = server.token()
    async with (
        tone_participant(room_url(server, "retry-live", token)) as participant,
        twilio_caller(first.stream_url, form["CallSid"]) as caller,
    ):
        await participant.wait_for("participant-joined")
        assert (await row_when(server, token, "answered"))["status"] == "answered"
        moment = time.monotonic()
        retried = await tw.post_webhook(connector.webhook_url, form)
        assert retried.status == 409
        row = await call_row(server, token)
        assert json.loads(retried.body) == {"message": f"call {row['id']} is already connected"}
        assert retried.stream_url is None
        await assert_both_ways_after(caller, participant, moment)
        assert (await call_row(server, token))["status"] == "answered"
    ended = await row_when(server, token, "ended", "failed")
    assert (ended["status"], ended["endReason"]) == ("ended", "caller-hangup")
    assert twilio_hangups(fake_provider_api) == [], "nothing hung the call up at Twilio"
    late = await tw.post_webhook(connector.webhook_url, form)
    assert late.status == 409
    assert json.loads(late.body) == {"message": f"call {ended['id']} is already over"}


async def test_racing_duplicate_webhooks_get_one_call_and_one_answer(
    server: InProcessServer,
) -> None:
    connector = twilio_connector(server, "race")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    answers = await asyncio.gather(
        *(tw.post_webhook(connector.webhook_url, form) for _ in range(10))
    )
    assert {answer.status for answer in answers} == {200}
    assert len({answer.body for answer in answers}) == 1
    row = await call_row(server, server.token())
    assert row["status"] == "routed"


# --------------------------------------------------------------------------- 2. foreign path


async def test_a_ref_on_another_providers_path_is_refused_and_stays_usable(
    server: InProcessServer,
) -> None:
    connector = twilio_connector(server, "foreign-path")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    ref = answer.stream_url.rsplit("/", 1)[1]
    base = f"ws://127.0.0.1:{server.port}/ingest"
    assert await refused(f"{base}/plivo/{ref}") == 403
    assert await refused(f"{base}/custom?ref={ref}") == 403
    assert await refused(f"{base}/telnyx/{ref}") == 403

    token = server.token()
    async with (
        tone_participant(room_url(server, "foreign-path", token)) as participant,
        twilio_caller(answer.stream_url, form["CallSid"]) as caller,
    ):
        await participant.wait_for("participant-joined")
        await assert_both_ways_after(caller, participant, time.monotonic())
    assert await refused(answer.stream_url) == 403, "used once, by its own provider"


# --------------------------------------------------------------------------- 3. deep JSON


async def test_deeply_nested_json_on_a_twilio_socket_is_dropped_and_the_call_goes_on(
    server: InProcessServer, capfd: pytest.CaptureFixture[str]
) -> None:
    async with live_twilio_call(server, "deep-twilio") as call:
        caller, participant, token = call.caller, call.participant, call.token
        moment = time.monotonic()
        await assert_both_ways_after(
            caller, participant, moment, hostile=lambda: caller.inject(DEEP_JSON)
        )
        assert (await call_row(server, token))["status"] == "answered"
    ended = await row_when(server, token, "ended", "failed")
    assert (ended["status"], ended["endReason"]) == ("ended", "caller-hangup")
    output = capfd.readouterr().out
    assert "call media ended" in output and "malformed=1" in output
    assert "Traceback" not in output and "RecursionError" not in output


async def test_deeply_nested_json_on_a_custom_socket_is_dropped_and_the_call_goes_on(
    server: InProcessServer, capfd: pytest.CaptureFixture[str]
) -> None:
    token = server.token()
    connector = create_connector(server.url, token, provider="custom", defaultRoomId="deep-custom")
    async with httpx.AsyncClient() as client:
        response = await client.post(connector.webhook_url, json={"callId": "deep-1"})
    assert response.status_code == 200, response.text
    async with (
        tone_participant(room_url(server, "deep-custom", token)) as participant,
        custom_caller(response.json()["socketUrl"], "deep-1") as caller,
    ):
        await participant.wait_for("participant-joined")
        moment = time.monotonic()
        await assert_both_ways_after(
            caller, participant, moment, hostile=lambda: caller.inject(DEEP_JSON)
        )
    ended = await row_when(server, token, "ended", "failed")
    assert (ended["status"], ended["endReason"]) == ("ended", "caller-hangup")
    output = capfd.readouterr().out
    assert "malformed=1" in output and "Traceback" not in output


async def test_deeply_nested_json_from_a_participant_keeps_it_in_the_room(
    server: InProcessServer,
) -> None:
    async with live_twilio_call(server, "deep-room") as call:
        caller, participant = call.caller, call.participant
        moment = time.monotonic()
        await assert_both_ways_after(
            caller,
            participant,
            moment,
            hostile=lambda: participant.send('{"event":"mark","name":' + "[" * 5000 + "]" * 5000),
        )
        assert not participant.closed.is_set()


# --------------------------------------------------------------------------- 5. calls end


async def test_an_unclaimed_ref_expires_the_call_and_hangs_it_up(
    server: InProcessServer, fake_provider_api: FakeProviderApi, clock: FakeClock
) -> None:
    connector = twilio_connector(server, "never-streamed")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    token = server.token()
    assert (await call_row(server, token))["status"] == "routed"
    clock.advance(89)
    await asyncio.sleep(0.5)
    assert (await call_row(server, token))["status"] == "routed", "not before the ref expires"
    clock.advance(5)
    row = await row_when(server, token, "failed")
    assert (row["status"], row["endReason"]) == ("failed", "ref-expired")
    (hangup,) = await asyncio.to_thread(fake_provider_api.wait_for, 1)
    assert hangup.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{form['CallSid']}.json"
    assert await refused(answer.stream_url) == 403


async def test_a_socket_that_never_starts_fails_the_call(server: InProcessServer) -> None:
    connector = twilio_connector(server, "no-start")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    assert answer.stream_url is not None
    async with connect(answer.stream_url, open_timeout=5) as socket:
        await socket.send(tw.connected())
        row = await row_when(server, server.token(), "failed")
    assert (row["status"], row["endReason"]) == ("failed", "no-start")
    assert row["endDetail"] == "the media socket sent no start"


def _plugin_routing_to(transport: str) -> types.ModuleType:
    module = types.ModuleType("route_to_nowhere")

    class Nowhere:
        name = "nowhere"

        def __init__(self, config: object, context: object) -> None:
            pass

        async def route(self, context: object) -> Route:
            return Route(room_id="lost", strategy=self.name, transport=transport)

    @hookimpl
    def callbridge_routing_strategies():  # type: ignore[no-untyped-def]
        yield RoutingStrategyPlugin(name="nowhere", factory=Nowhere)

    module.callbridge_routing_strategies = callbridge_routing_strategies  # type: ignore[attr-defined]
    return module


async def test_a_call_that_cannot_join_its_room_fails(tmp_path: Path) -> None:
    pm = build_plugin_manager()
    pm.register(_plugin_routing_to("missing-transport"))
    with running_in_process(tmp_path, {"routing": {"chain": ["nowhere"]}}, pm=pm) as server:
        connector = create_connector(server.url, server.token(), provider="twilio")
        form = tw.voice_webhook_form()
        answer = await tw.post_webhook(connector.webhook_url, form)
        assert answer.stream_url is not None
        async with twilio_caller(answer.stream_url, form["CallSid"]):
            row = await row_when(server, server.token(), "failed")
    assert (row["status"], row["endReason"]) == ("failed", "no-room")
    assert row["endDetail"] == "unknown room transport 'missing-transport'"


async def test_calls_of_a_killed_server_are_closed_as_interrupted(tmp_path: Path) -> None:
    quick = {
        "calls": {
            "heartbeat_seconds": 0.3,
            "owner_timeout_seconds": 1.5,
            "sweep_interval_seconds": 0.3,
        }
    }
    first = start_process(tmp_path, quick)
    try:
        token = first.token()
        connector = create_connector(first.url, token, defaultRoomId="doomed")
        form = tw.voice_webhook_form()
        answer = await tw.post_webhook(connector.webhook_url, form)
        assert answer.stream_url is not None
        async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
            assert (await row_when(first, token, "answered"))["status"] == "answered"
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)
            await asyncio.wait_for(caller.closed.wait(), 5)
    finally:
        first.stop()
    second = start_process(tmp_path, quick)  # the same data folder, a new process
    try:
        row = await row_when(second, token, "failed", within=15)
        assert (row["status"], row["endReason"]) == ("failed", "interrupted")
        assert row["endDetail"] == "the server process holding the call stopped"
    finally:
        second.stop()


# --------------------------------------------------------------------------- 6. room ids


async def test_room_ids_with_a_trailing_newline_are_refused(server: InProcessServer) -> None:
    token = server.token()
    assert await refused(room_url(server, "room%0A", token)) == 403
    connector = twilio_connector(server, "fallback")
    answer = await tw.post_webhook(
        connector.webhook_url + "?roomId=room%0A", tw.voice_webhook_form()
    )
    assert answer.parameters["roomId"] == "fallback", "not routed to 'room\\n'"


# --------------------------------------------------------------------------- 8. cleanup


async def test_a_failing_stream_adapter_still_records_the_end(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_open_stream(*args: object) -> None:
        raise RuntimeError("adapter exploded")

    monkeypatch.setattr(
        server.runtime.providers["twilio"].wrapped, "open_stream", broken_open_stream
    )
    connector = twilio_connector(server, "broken-adapter")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    assert answer.stream_url is not None
    async with connect(answer.stream_url, open_timeout=5) as socket:
        with pytest.raises(Exception):  # noqa: B017 - the server closes the socket
            async with asyncio.timeout(5):
                await socket.recv()
    row = await row_when(server, server.token(), "failed")
    assert (row["status"], row["endReason"], row["endDetail"]) == (
        "failed",
        "error",
        "unexpected RuntimeError",
    )


async def test_a_failing_provider_hangup_does_not_stop_the_teardown(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_hangup(*args: object) -> None:
        raise RuntimeError("REST client exploded")

    monkeypatch.setattr(server.runtime.providers["twilio"].wrapped, "hangup", broken_hangup)
    async with live_twilio_call(server, "hangup-fails") as call:
        caller, participant, token = call.caller, call.participant, call.token
        await participant.send({"event": "hangup"})
        await asyncio.wait_for(caller.closed.wait(), 5)
        row = await row_when(server, token, "ended")
        left = await participant.wait_for("participant-left")
    assert (row["status"], row["endReason"]) == ("ended", "room-hangup")
    assert left["participantId"] == row["id"], "the call also left the room"


async def test_a_mixer_tick_that_raises_is_counted_and_the_room_keeps_serving(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_tick = local_rooms._Room._direct_tick
    failures = {"left": 10}

    def flaky_tick(room: Any) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise FloatingPointError("mixer exploded")
        real_tick(room)

    async with live_twilio_call(server, "flaky-mixer") as call:
        caller, participant = call.caller, call.participant
        monkeypatch.setattr(local_rooms._Room, "_direct_tick", flaky_tick)
        moment = time.monotonic()
        await assert_both_ways_after(caller, participant, moment)
        assert failures["left"] == 0
        rooms = server.runtime.room_transports["local"].wrapped._rooms
        (room,) = rooms.values()
        assert room.failed_ticks == 10


async def test_a_mixer_that_keeps_failing_ends_its_calls_with_a_reason(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_tick(room: Any) -> None:
        raise FloatingPointError("mixer exploded")

    async with live_twilio_call(server, "dead-mixer") as call:
        caller, participant, token = call.caller, call.participant, call.token
        monkeypatch.setattr(local_rooms._Room, "_direct_tick", broken_tick)
        await asyncio.wait_for(caller.closed.wait(), 5)
        await asyncio.wait_for(participant.closed.wait(), 5)
    row = await row_when(server, token, "ended")
    assert (row["status"], row["endReason"], row["endDetail"]) == (
        "ended",
        "room-closed",
        "room mixer failed",
    )


async def test_a_full_ref_store_answers_503_and_records_nothing(tmp_path: Path) -> None:
    overrides = {"refs": {"config": {"memory": {"max_refs": 1}}}}
    with running_in_process(tmp_path, overrides) as server:
        connector = create_connector(server.url, server.token(), defaultRoomId="busy")
        first = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        assert first.status == 200 and first.stream_url is not None
        async with httpx.AsyncClient() as client:
            second = await client.post(connector.webhook_url, data=tw.voice_webhook_form())
        assert second.status_code == 503
        assert second.headers["retry-after"] == "5"
        assert second.json() == {
            "message": "too many calls are waiting to connect; try again later"
        }
        assert (await call_row(server, server.token()))["status"] == "routed", "one call only"


async def test_expired_calls_are_found_by_any_sweeper_once(
    server: InProcessServer, clock: FakeClock
) -> None:
    connector = twilio_connector(server, "swept-once")
    await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form(AccountSid=ACCOUNT_SID))
    clock.advance(95)
    reports = await asyncio.gather(
        *(CallSweeper(server.runtime).sweep() for _ in range(3)), return_exceptions=True
    )
    expired = [
        call
        for report in reports
        if not isinstance(report, BaseException)
        for call in report.expired
    ]
    row = await row_when(server, server.token(), "failed")
    assert len(expired) <= 1 and row["endReason"] == "ref-expired"


# --------------------------------------------------------------------------- 9. message limits


def test_oversized_messages_are_dropped_and_the_call_goes_on(tmp_path: Path) -> None:
    server = start_process(tmp_path)
    try:
        asyncio.run(_oversized_messages(server))
    finally:
        server.stop()
    logs = server.logs()
    assert "Traceback" not in logs


async def _oversized_messages(server: ServerProcess) -> None:
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId="big")
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    over_cap = json.dumps({"event": "media", "pad": "x" * (64 * 1024)})
    over_old_socket_limit = json.dumps({"event": "media", "pad": "x" * (3 * 1024 * 1024 // 2)})
    async with (
        tone_participant(room_url(server, "big", token)) as participant,
        twilio_caller(answer.stream_url, form["CallSid"]) as caller,
    ):
        await participant.wait_for("participant-joined")
        moment = time.monotonic()

        async def hostile() -> None:
            await caller.inject(over_cap)
            await caller.inject(over_old_socket_limit)
            await caller.inject(b"\xff" * (2 * 1024 * 1024))

        await assert_both_ways_after(caller, participant, moment, hostile=hostile)
        assert (await call_row(server, token))["status"] == "answered"
    row = await row_when(server, token, "ended", "failed")
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")
