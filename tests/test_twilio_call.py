"""Twilio calls through the real app (in-process server, loopback) with provider signatures on,
and REST hang-ups seen by a fake Twilio API.

The caller is the Twilio simulator (it signs the webhook and the socket handshake with the
connector's Auth Token); the room side is ``join_room`` or a hand-driven participant socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from callbridge.clients.call import CallOptions
from callbridge_plugins.simulators.twilio import simulate_twilio_call, twilio_signature
from tests import twilio_wire as tw
from tests.calls import (
    assert_heard,
    calls_of,
    ended_call,
    hang_up_from_room,
    mark_then_clear,
    record_hangups,
    with_tone_participant,
)
from tests.fake_provider_api import FakeProviderApi
from tests.rooms import participant_in
from tests.servers import (
    Connector,
    InProcessServer,
    create_connector,
    provider_api_overrides,
    running_in_process,
)

ACCOUNT_SID = "AC" + "7" * 32
AUTH_TOKEN = "callbridge_test_auth_token"
CREDENTIALS = {"accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN}


@pytest.fixture
def server(tmp_path: Path, fake_provider_api: FakeProviderApi) -> Iterator[InProcessServer]:
    """callbridge with Twilio hang-ups pointed at the fake Twilio API."""
    overrides = provider_api_overrides(["twilio"], "twilio", fake_provider_api.base_url)
    with running_in_process(tmp_path, overrides) as running:
        yield running


def verifying_connector(server: InProcessServer, room: str) -> Connector:
    return create_connector(
        server.url,
        server.token(),
        provider="twilio",
        defaultRoomId=room,
        verifySignatures=True,
        credentials=CREDENTIALS,
    )


def simulator_options(connector: Connector, **fields: Any) -> CallOptions:
    return CallOptions(webhook_url=connector.webhook_url, credentials=dict(CREDENTIALS), **fields)


async def post_form(url: str, form: dict[str, str], signature: str | None = None) -> httpx.Response:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with httpx.AsyncClient() as client:
        return await client.post(url, data=form, headers=headers)


async def signed_form_post(
    url: str, form: dict[str, str], token: str = AUTH_TOKEN
) -> httpx.Response:
    return await post_form(url, form, RequestValidator(token).compute_signature(url, form))


def stream_url_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    start = response.text.index('url="') + len('url="')
    return response.text[start : response.text.index('"', start)]


def hangups(api: FakeProviderApi) -> list[Any]:
    return [r for r in api.requests if r.path.startswith("/2010-04-01/")]


# --------------------------------------------------------------------------- tests


async def test_signed_call_carries_two_tones_and_the_caller_stop_needs_no_hangup(
    server: InProcessServer, fake_provider_api: FakeProviderApi, tmp_path: Path
) -> None:
    connector = verifying_connector(server, "tones")
    participant_wav, caller_wav = tmp_path / "participant.wav", tmp_path / "caller.wav"

    options = simulator_options(
        connector, tone_hz=440, seconds=2.5, dtmf="12", record_path=str(caller_wav)
    )
    participant, caller = await with_tone_participant(
        server, "tones", participant_wav, simulate_twilio_call(options)
    )

    assert caller.outcome == "completed", caller.events
    assert participant.outcome == "completed"
    problems = [e for e in caller.events if e["event"] in {"protocol-error", "bad-frame-size"}]
    assert problems == []

    assert_heard(participant_wav, 440)
    assert_heard(caller_wav, 1000)

    digits = [e["digit"] for e in participant.events if e.get("event") == "dtmf"]
    assert digits == ["1", "2"]

    call = await ended_call(server, connector)
    assert call["status"] == "ended"
    # "stream-closed" when the server's send fails on the closing socket before its reader
    # reached the stop (AsgiSocketChannel stops reading after a failed send).
    assert call["endReason"] in {"caller-hangup", "stream-closed"}
    # The caller hung up (Twilio's stop, then close): no REST hang-up is owed.
    await asyncio.sleep(0.2)
    assert hangups(fake_provider_api) == []


async def test_unsigned_or_wrongly_signed_webhook_is_403_without_a_call(
    server: InProcessServer,
) -> None:
    connector = verifying_connector(server, "r")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    unsigned = await post_form(connector.webhook_url, form)
    assert unsigned.status_code == 403
    assert unsigned.json() == {"message": "X-Twilio-Signature is missing"}

    wrong = await signed_form_post(connector.webhook_url, form, token="not_the_auth_token")
    assert wrong.status_code == 403
    assert wrong.json() == {"message": "X-Twilio-Signature does not match"}

    tampered_url = connector.webhook_url + "?roomId=elsewhere"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(connector.webhook_url, form)
    tampered = await post_form(tampered_url, form, signature)
    assert tampered.status_code == 403
    assert await asyncio.to_thread(calls_of, server, connector) == []


async def test_unsigned_handshake_is_refused_and_the_call_fails(server: InProcessServer) -> None:
    connector = verifying_connector(server, "r")
    stream_url = stream_url_of(
        await signed_form_post(connector.webhook_url, tw.voice_webhook_form())
    )
    with pytest.raises(InvalidStatus) as caught:
        async with connect(stream_url, open_timeout=5):
            pass
    assert caught.value.response.status_code == 403
    call = await ended_call(server, connector)
    assert call["status"] == "failed"
    assert (call["endReason"], call["endDetail"]) == ("signature", "X-Twilio-Signature is missing")


async def test_handshake_signed_over_another_url_is_refused(server: InProcessServer) -> None:
    connector = verifying_connector(server, "r")
    stream_url = stream_url_of(
        await signed_form_post(connector.webhook_url, tw.voice_webhook_form())
    )
    https_form = "http" + stream_url.removeprefix("ws")  # Twilio signs the ws(s):// form
    headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, https_form)}
    with pytest.raises(InvalidStatus) as caught:
        async with connect(stream_url, additional_headers=headers, open_timeout=5):
            pass
    assert caught.value.response.status_code == 403
    call = await ended_call(server, connector)
    assert call["status"] == "failed"
    assert (call["endReason"], call["endDetail"]) == (
        "signature",
        "X-Twilio-Signature does not match",
    )


async def room_hangup_call(
    server: InProcessServer, connector: Connector, room: str, call_sid: str
) -> Any:
    """A signed call that the room participant hangs up as soon as it has joined."""
    options = simulator_options(connector, seconds=5, extra_params={"CallSid": call_sid})
    return await hang_up_from_room(server, room, simulate_twilio_call(options))


async def test_room_hangup_ends_the_call_at_twilio(
    server: InProcessServer, fake_provider_api: FakeProviderApi
) -> None:
    connector = verifying_connector(server, "hangup-room")
    call_sid = "CA" + secrets.token_hex(16)
    await room_hangup_call(server, connector, "hangup-room", call_sid)

    (request,) = await asyncio.to_thread(fake_provider_api.wait_for, 1)
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call_sid}.json"
    assert request.form() == {"Status": "completed"}
    basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "room-hangup")


async def test_api_hangup_ends_the_call_at_twilio(
    server: InProcessServer, fake_provider_api: FakeProviderApi
) -> None:
    connector = verifying_connector(server, "api-hangup-room")
    call_sid = "CA" + secrets.token_hex(16)
    async with participant_in(server, "api-hangup-room") as participant:
        options = simulator_options(connector, seconds=6, extra_params={"CallSid": call_sid})
        caller = asyncio.create_task(simulate_twilio_call(options))
        joined = await participant.next_event("participant-joined")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{server.url}/v2/calls/{joined['participantId']}/hangup",
                headers={"Authorization": server.token()},
            )
        assert response.status_code == 202, response.text
        left = await participant.next_event("participant-left")
        assert left["participantId"] == joined["participantId"]
        summary = await asyncio.wait_for(caller, 10)
    assert summary.outcome == "completed (server closed)"
    (request,) = await asyncio.to_thread(fake_provider_api.wait_for, 1)
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call_sid}.json"
    assert request.form() == {"Status": "completed"}
    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "api-hangup")
    async with httpx.AsyncClient() as client:
        again = await client.post(
            f"{server.url}/v2/calls/{call['id']}/hangup", headers={"Authorization": server.token()}
        )
    assert again.status_code == 409


async def test_api_hangup_before_the_socket_ends_the_call_at_twilio(
    server: InProcessServer, fake_provider_api: FakeProviderApi
) -> None:
    connector = verifying_connector(server, "early-hangup-room")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    stream_url = stream_url_of(await signed_form_post(connector.webhook_url, form))
    (call,) = await asyncio.to_thread(calls_of, server, connector)
    assert call["status"] == "routed"
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.url}/v2/calls/{call['id']}/hangup", headers={"Authorization": server.token()}
        )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "ended"
    (request,) = await asyncio.to_thread(fake_provider_api.wait_for, 1)
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{form['CallSid']}.json"
    assert request.form() == {"Status": "completed"}
    # The ref was still live, but a call that already ended refuses its media socket.
    headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, stream_url)}
    with pytest.raises(InvalidStatus) as caught:
        async with connect(stream_url, additional_headers=headers, open_timeout=5):
            pass
    assert caught.value.response.status_code == 403
    (call,) = await asyncio.to_thread(calls_of, server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "api-hangup")
    assert len(hangups(fake_provider_api)) == 1, "the bridge does not hang up a second time"


async def test_twilio_20404_on_hangup_counts_as_already_ended(
    server: InProcessServer, fake_provider_api: FakeProviderApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_provider_api.answer(
        "POST",
        r"/2010-04-01/Accounts/[^/]+/Calls/[^/]+\.json",
        404,
        {"code": 20404, "message": "The requested resource was not found", "status": 404},
    )
    results = record_hangups(server.runtime.providers["twilio"], monkeypatch)
    connector = verifying_connector(server, "gone-room")
    await room_hangup_call(server, connector, "gone-room", "CA" + secrets.token_hex(16))

    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "room-hangup")
    assert len(hangups(fake_provider_api)) == 1
    (result,) = results
    assert (result.ok, result.already_ended, result.status) == (True, True, 404)
    assert "20404" in result.detail


async def test_marks_and_clear_round_trip_through_the_bridge(server: InProcessServer) -> None:
    connector = verifying_connector(server, "marks")
    caller = simulate_twilio_call(simulator_options(connector, seconds=3))
    call_id, played, cleared, summary = await mark_then_clear(server, "marks", caller)

    assert played == {"event": "mark", "name": "m-played", "status": "played", "callId": call_id}
    assert cleared == {
        "event": "mark",
        "name": "m-cleared",
        "status": "cleared",
        "callId": call_id,
    }
    assert summary.outcome == "completed"
    # The simulator plays out in real time, so whether the second mark was still queued when
    # the clear arrived is a race; the bridge reports it cleared either way.
    caller_marks = [(e["name"], e["cleared"]) for e in summary.events if e["event"] == "mark"]
    assert [name for name, _ in caller_marks] == ["m-played", "m-cleared"]
    assert caller_marks[0] == ("m-played", False)
    assert len([e for e in summary.events if e["event"] == "clear"]) == 1
    assert [e for e in summary.events if e["event"] == "protocol-error"] == []
    assert abs(summary.dominant_hz - 600) <= 10


async def next_command(socket: ClientConnection, event: str) -> dict[str, Any]:
    """The next message called ``event`` the server sends on the Twilio socket (media skipped)."""
    message: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while message.get("event") != event:
            message = json.loads(await socket.recv())
    return message


async def test_pending_mark_echoed_on_clear_is_reported_cleared(server: InProcessServer) -> None:
    """A hand-driven Twilio side holds the second mark until the clear, as Twilio does with a
    mark still queued behind audio, so the order of events is fixed."""
    connector = verifying_connector(server, "marks-exact")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    stream_url = stream_url_of(await signed_form_post(connector.webhook_url, form))
    stream_sid = "MZ" + secrets.token_hex(16)
    headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, stream_url)}
    async with (
        participant_in(server, "marks-exact") as participant,
        connect(stream_url, additional_headers=headers, open_timeout=5) as twilio,
    ):
        await twilio.send(tw.connected())
        await twilio.send(tw.start(stream_sid, form["CallSid"]))
        call_id = (await participant.next_event("participant-joined"))["participantId"]

        await participant.send({"event": "mark", "name": "m1"})
        mark = await next_command(twilio, "mark")
        assert mark == {"event": "mark", "streamSid": stream_sid, "mark": {"name": "m1"}}
        await twilio.send(json.dumps({**mark, "sequenceNumber": "2"}))
        played = await participant.next_event("mark")

        await participant.send({"event": "mark", "name": "m2"})
        mark = await next_command(twilio, "mark")
        await participant.send({"event": "clear"})
        assert await next_command(twilio, "clear") == {"event": "clear", "streamSid": stream_sid}
        await twilio.send(json.dumps({**mark, "sequenceNumber": "3"}))
        cleared = await participant.next_event("mark")
        await twilio.send(tw.stop(stream_sid, form["CallSid"], 4))

    assert played == {"event": "mark", "name": "m1", "status": "played", "callId": call_id}
    assert cleared == {"event": "mark", "name": "m2", "status": "cleared", "callId": call_id}


async def test_webhook_retry_gets_the_same_answer_and_one_call(server: InProcessServer) -> None:
    connector = verifying_connector(server, "retry")
    form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
    first = await signed_form_post(connector.webhook_url, form)
    second = await signed_form_post(connector.webhook_url, form)
    assert stream_url_of(first) == stream_url_of(second)
    assert first.text == second.text
    (call,) = await asyncio.to_thread(calls_of, server, connector)
    assert call["providerCallId"] == form["CallSid"]
    assert call["status"] == "routed"
