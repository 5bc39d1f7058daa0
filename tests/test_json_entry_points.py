"""Every JSON entry point against hostile documents: deep arrays, deep objects, both mixed,
oversize documents and invalid UTF-8. Over HTTP each must be a 4xx with a ``{"message"}`` body;
on a live call's socket each is dropped while the call keeps carrying its tones both ways; and
nothing anywhere logs a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests import twilio_wire as tw
from tests.live_calls import (
    LiveCaller,
    assert_both_ways_after,
    custom_caller,
    plivo_caller,
    telnyx_caller,
    tone_participant,
    twilio_caller,
)
from tests.servers import InProcessServer, create_connector, running_in_process

HOSTILE: dict[str, bytes] = {
    "deep arrays": b"[" * 20000 + b"]" * 20000,
    "deep objects": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "mixed": b'[{"a":' * 6000 + b"1" + b"}]" * 6000,
    "deep under an event": b'{"event":"media","media":' + b"[" * 20000 + b"]" * 20000 + b"}",
    "oversize": json.dumps({"event": "media", "pad": "x" * 70_000}).encode(),
    "invalid UTF-8": b'{"event":"media","media":{"payload":"\xff\xfe"}}',
}


def as_text(document: bytes) -> str:
    """What a client can send as a WebSocket text message (which must be valid UTF-8)."""
    return document.decode("utf-8", errors="replace")


def hostile_token(claims: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    return f"{header}.{b64(claims)}.{b64(b'not-a-signature')}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with running_in_process(tmp_path, {"server": {"start_timeout_seconds": 2.0}}) as running:
        yield running


async def _no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    output = capfd.readouterr()
    assert "Traceback" not in output.out + output.err
    assert "RecursionError" not in output.out + output.err


def _client_error(response: httpx.Response, where: str) -> None:
    assert 400 <= response.status_code < 500, (where, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"message"} and isinstance(body["message"], str), where


async def test_every_http_entry_point_refuses_hostile_json(
    server: InProcessServer, capfd: pytest.CaptureFixture[str]
) -> None:
    token = server.token()
    auth = {"Authorization": f"Bearer {token}"}
    custom = create_connector(server.url, token, provider="custom", defaultRoomId="r")
    twilio = create_connector(server.url, token, provider="twilio", defaultRoomId="r")
    async with httpx.AsyncClient(base_url=server.url) as client:
        for name, document in HOSTILE.items():
            json_type = {"Content-Type": "application/json"}
            entry_points = {
                "create connector": ("POST", "/v2/connectors", auth),
                "update connector": ("PATCH", f"/v2/connectors/{custom.id}", auth),
                "custom webhook": ("POST", custom.webhook_url, {}),
                "twilio webhook": ("POST", twilio.webhook_url, {}),
            }
            for where, (method, url, headers) in entry_points.items():
                response = await client.request(
                    method, url, content=document, headers={**headers, **json_type}
                )
                _client_error(response, f"{where}, {name}")
            bad_token = {"Authorization": f"Bearer {hostile_token(document[:6000])}"}
            response = await client.get("/v2/connectors", headers=bad_token)
            assert response.status_code == 401, name
            _client_error(response, f"token, {name}")
        listed = await client.get("/v2/connectors", headers=auth)
        calls = (await client.get("/v2/calls", headers=auth)).json()["data"]
    assert listed.status_code == 200
    assert {c["id"] for c in listed.json()["data"]} == {custom.id, twilio.id}, "nothing changed"
    assert calls == [], "no call was created"
    await _no_traceback(capfd)


async def test_a_hostile_token_on_the_participant_socket_is_refused(
    server: InProcessServer, capfd: pytest.CaptureFixture[str]
) -> None:
    for document in HOSTILE.values():
        url = (
            f"ws://127.0.0.1:{server.port}/v2/rooms/r/participants"
            f"?token={hostile_token(document[:6000])}"
        )
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, open_timeout=5):
                pass
        assert caught.value.response.status_code == 403
    await _no_traceback(capfd)


async def _webhook(server: InProcessServer, provider: str, room: str) -> tuple[str, str]:
    """Route one call of ``provider`` into ``room``: its socket URL and provider call id."""
    token = server.token()
    connector = create_connector(server.url, token, provider=provider, defaultRoomId=room)
    async with httpx.AsyncClient() as client:
        if provider == "custom":
            response = await client.post(connector.webhook_url, json={"callId": "entry-1"})
            return response.json()["socketUrl"], "entry-1"
        if provider == "twilio":
            form = tw.voice_webhook_form()
            answer = await tw.post_webhook(connector.webhook_url, form)
            assert answer.stream_url is not None
            return answer.stream_url, form["CallSid"]
        if provider == "plivo":
            call_id = str(uuid.uuid4())
            form = {"CallUUID": call_id, "From": "14155550100", "To": "14155550199"}
            response = await client.post(connector.webhook_url, data=form)
            stream = ET.fromstring(response.text).find("Stream")
            assert stream is not None and stream.text
            return stream.text, call_id
        call_id = "v3:" + uuid.uuid4().hex
        response = await client.post(
            connector.webhook_url, data={"CallSid": call_id, "From": "+1312", "To": "+1313"}
        )
        start = response.text.index('url="') + len('url="')
        return response.text[start : response.text.index('"', start)], call_id


CALLERS: dict[str, Callable[[str, str], AbstractAsyncContextManager[LiveCaller]]] = {
    "twilio": twilio_caller,
    "plivo": plivo_caller,
    "telnyx": telnyx_caller,
    "custom": custom_caller,
}


@pytest.mark.parametrize("provider", list(CALLERS))
async def test_hostile_json_on_every_media_socket_leaves_the_call_up(
    server: InProcessServer, provider: str, capfd: pytest.CaptureFixture[str]
) -> None:
    room = f"entry-{provider}"
    stream_url, call_id = await _webhook(server, provider, room)
    token = server.token()
    room_url = f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={token}"
    async with (
        tone_participant(room_url) as participant,
        CALLERS[provider](stream_url, call_id) as caller,
    ):
        await participant.wait_for("participant-joined")
        moment = time.monotonic()

        async def hostile() -> None:
            for document in HOSTILE.values():
                await caller.inject(as_text(document))
                await caller.inject(document)  # and as a binary message
                await participant.send(as_text(document))
                await participant.send(document)

        await assert_both_ways_after(caller, participant, moment, hostile=hostile)
        assert not participant.closed.is_set()
        calls = await _calls(server, token)
        assert [call["status"] for call in calls] == ["answered"]
    ended = await _ended(server, token)
    assert ended["status"] == "ended", ended
    await _no_traceback(capfd)


async def test_hostile_extra_headers_in_a_plivo_start(
    server: InProcessServer, capfd: pytest.CaptureFixture[str]
) -> None:
    stream_url, call_uuid = await _webhook(server, "plivo", "entry-plivo-headers")
    token = server.token()
    room_url = (
        f"ws://127.0.0.1:{server.port}/v2/rooms/entry-plivo-headers/participants?token={token}"
    )
    extra = '{"a":' * 3000 + "1" + "}" * 3000  # a JSON string inside the JSON message
    async with (
        tone_participant(room_url) as participant,
        plivo_caller(stream_url, call_uuid, extra_headers=extra) as caller,
    ):
        await participant.wait_for("participant-joined")
        await assert_both_ways_after(caller, participant, time.monotonic())
    await _no_traceback(capfd)


async def _calls(server: InProcessServer, token: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {token}"}
        )
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _ended(server: InProcessServer, token: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            (call,) = await _calls(server, token)
            if call["status"] in ("ended", "failed"):
                return call
            await asyncio.sleep(0.05)
