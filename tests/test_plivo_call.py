"""Plivo calls through the real app (in-process server, loopback): two tones in μ-law and in
L16 16 kHz, DTMF, checkpoints and clears, malformed messages, V3 signatures, webhook retries,
and REST hang-ups seen by the fake provider API.

The caller is the Plivo simulator (it signs the Answer-URL request and the socket upgrade when
given the connector's credentials) or, for malformed traffic, a hand-driven Plivo socket; the
room side is ``join_room`` or a hand-driven participant socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.clients.audio import Summary
from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency
from callbridge.media.g711 import ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge_plugins.simulators.plivo import simulate_plivo_call
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

AUTH_ID = "MAZDQ1ZTC4NTY3ODkWMT"
AUTH_TOKEN = "callbridge_plivo_test_auth_token"
CREDENTIALS = {"authId": AUTH_ID, "authToken": AUTH_TOKEN}


@pytest.fixture
def server(tmp_path: Path, fake_provider_api: FakeProviderApi) -> Iterator[InProcessServer]:
    """callbridge with Plivo hang-ups pointed at the fake provider API."""
    overrides = provider_api_overrides(["twilio", "plivo"], "plivo", fake_provider_api.base_url)
    with running_in_process(tmp_path, overrides) as running:
        yield running


def plivo_connector(
    server: InProcessServer, room: str, *, verify: bool = False, **fields: Any
) -> Connector:
    return create_connector(
        server.url,
        server.token(),
        provider="plivo",
        defaultRoomId=room,
        verifySignatures=verify,
        credentials=CREDENTIALS,
        **fields,
    )


def hangups(api: FakeProviderApi) -> list[Any]:
    return [r for r in api.requests if r.path.startswith("/v1/Account/")]


def answer_form(call_uuid: str | None = None) -> dict[str, str]:
    """The Answer-URL parameters Plivo posts for an inbound call (numbers without ``+``)."""
    return {
        "CallUUID": call_uuid or str(uuid.uuid4()),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "14155550100",
        "To": "14155550199",
    }


def sdk_signed_headers(method: str, url: str, params: dict[str, str], nonce: str) -> dict[str, str]:
    """V3 headers made with the official plivo SDK's functions."""
    signed = (
        construct_get_url(url, {}) if method == "GET" else construct_post_url(url, dict(params))
    )
    signature = get_signature_v3(AUTH_TOKEN.encode(), signed.decode(), nonce.encode()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


async def post_form(
    url: str, form: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, data=form, headers=headers or {})


def stream_element(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(response.text).find("Stream")
    assert stream is not None, response.text
    return stream


async def two_tone_call(
    server: InProcessServer, connector: Connector, room: str, tmp_path: Path, **caller: Any
) -> tuple[Summary, Summary]:
    """A 1000 Hz participant and a 440 Hz simulated Plivo caller, recorded on both sides."""
    options = CallOptions(
        webhook_url=connector.webhook_url,
        tone_hz=440,
        seconds=2.5,
        record_path=str(tmp_path / "caller.wav"),
        **caller,
    )
    return await with_tone_participant(
        server, room, tmp_path / "participant.wav", simulate_plivo_call(options)
    )


# --------------------------------------------------------------------------- audio and DTMF


async def test_signed_pcmu_call_carries_two_tones_and_dtmf(
    server: InProcessServer, fake_provider_api: FakeProviderApi, tmp_path: Path
) -> None:
    connector = plivo_connector(server, "tones", verify=True)
    participant, caller = await two_tone_call(
        server, connector, "tones", tmp_path, dtmf="12#", credentials=dict(CREDENTIALS)
    )

    assert caller.outcome == "completed", caller.events
    assert participant.outcome == "completed"
    assert [e for e in caller.events if e["event"] == "protocol-error"] == []
    (stream,) = [e for e in caller.events if e["event"] == "stream"]
    assert stream["attributes"]["contentType"] == "audio/x-mulaw;rate=8000"
    assert stream["url"].startswith(f"ws://127.0.0.1:{server.port}/ingest/plivo/")

    assert_heard(tmp_path / "participant.wav", 440, rate=16000)
    assert_heard(tmp_path / "caller.wav", 1000, rate=8000)

    dtmf = [e for e in participant.events if e.get("event") == "dtmf"]
    assert [e["digit"] for e in dtmf] == ["1", "2", "#"]
    (call,) = await asyncio.to_thread(calls_of, server, connector)
    assert {e["callId"] for e in dtmf} == {call["id"]}
    assert (call["from"], call["to"]) == ("+14155550100", "+14155550199"), "E.164 numbers"

    call = await ended_call(server, connector)
    # Plivo ends by closing the socket; the call ends with the stream, no REST hang-up owed.
    assert (call["status"], call["endReason"]) == ("ended", "stream-closed")
    await asyncio.sleep(0.2)
    assert hangups(fake_provider_api) == []


async def test_l16_16k_connector_carries_two_tones(server: InProcessServer, tmp_path: Path) -> None:
    connector = plivo_connector(server, "wideband", codec="L16", sampleRate=16000)
    participant, caller = await two_tone_call(server, connector, "wideband", tmp_path)

    assert caller.outcome == "completed", caller.events
    assert participant.outcome == "completed"
    assert [e for e in caller.events if e["event"] == "protocol-error"] == []
    (stream,) = [e for e in caller.events if e["event"] == "stream"]
    assert stream["attributes"] == {
        "bidirectional": "true",
        "audioTrack": "inbound",
        "keepCallAlive": "true",
        "contentType": "audio/x-l16;rate=16000",
    }
    assert_heard(tmp_path / "participant.wav", 440, rate=16000)
    assert_heard(tmp_path / "caller.wav", 1000, rate=16000)


# --------------------------------------------------------------------------- marks and clear


async def test_checkpoint_and_clear_round_trip_through_the_bridge(
    server: InProcessServer,
) -> None:
    connector = plivo_connector(server, "marks")
    options = CallOptions(webhook_url=connector.webhook_url, seconds=3)
    # A 200 ms jitter buffer: a checkpoint right behind audio stays pending that long.
    caller = simulate_plivo_call(options, playout_delay=0.2)
    call_id, played, cleared, summary = await mark_then_clear(server, "marks", caller)

    assert played == {"event": "mark", "name": "m-played", "status": "played", "callId": call_id}
    assert cleared == {
        "event": "mark",
        "name": "m-cleared",
        "status": "cleared",
        "callId": call_id,
    }
    assert summary.outcome == "completed"
    assert [e for e in summary.events if e["event"] == "playedStream"] == [
        {"event": "playedStream", "name": "m-played"}
    ]
    (clear,) = [e for e in summary.events if e["event"] == "clear"]
    assert clear["droppedCheckpoints"] == ["m-cleared"]
    assert [e for e in summary.events if e["event"] == "protocol-error"] == []
    assert abs(summary.dominant_hz - 600) <= 10


# --------------------------------------------------------------------------- malformed traffic


def plivo_message(event: str, sequence: int, stream_id: str, **fields: Any) -> str:
    return json.dumps({"event": event, "sequenceNumber": sequence, "streamId": stream_id, **fields})


async def test_malformed_and_oversized_messages_do_not_end_the_call(
    server: InProcessServer,
) -> None:
    connector = plivo_connector(server, "garbage")
    form = answer_form()
    stream_url = stream_element(await post_form(connector.webhook_url, form)).text or ""
    stream_id = str(uuid.uuid4())
    start = {
        "callId": form["CallUUID"],
        "streamId": stream_id,
        "accountId": AUTH_ID,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    }
    tone = ToneGenerator(440, 8000, 0.5)

    def media(chunk: int, payload: str | None = None) -> str:
        body = {
            "track": "inbound",
            "timestamp": str(1_735_689_600_000 + 20 * chunk),
            "chunk": chunk,
            "payload": payload or base64.b64encode(ulaw_encode(tone.next_frame(160))).decode(),
        }
        return plivo_message("media", chunk + 1, stream_id, media=body)

    garbage: list[str | bytes] = [
        "not json",
        "[]",
        '{"event": 5}',
        b"\x00\x01binary",
        media(0, payload="%%%notbase64"),
        "x" * 70_000,
        media(0) + " " * 70_000,  # valid JSON, but over Plivo's 64 KB limit
        plivo_message("media", 1, "another-stream", media={"payload": "//8="}),
        plivo_message("playFailed", 1, stream_id, reason="bad audio"),
        plivo_message("dtmf", 1, stream_id, dtmf={"digit": "not-a-key"}),
    ]
    async with participant_in(server, "garbage") as participant:
        async with connect(stream_url, open_timeout=5) as socket:
            played: list[dict[str, Any]] = []

            async def read() -> None:
                async for message in socket:
                    played.append(json.loads(message))

            reader = asyncio.create_task(read())
            await socket.send(json.dumps({"event": "start", "sequenceNumber": 1, "start": start}))
            for chunk in range(1, 76):
                await socket.send(media(chunk))
                if chunk <= len(garbage):
                    await socket.send(garbage[chunk - 1])
                await asyncio.sleep(0.02)
            await socket.send(
                plivo_message("dtmf", 99, stream_id, dtmf={"track": "inbound", "digit": "5"})
            )
            dtmf = await participant.next_event("dtmf")
            await socket.close()
            await reader
        left = await participant.next_event("participant-left")
    assert {m["event"] for m in played} == {"playAudio"}
    assert len(played) > 50, "the room's audio kept flowing to the caller"
    assert dtmf["digit"] == "5", "the call was still up after all the garbage"
    assert left["participantId"] == dtmf["callId"]
    audio = np.concatenate(participant.audio)
    loud = audio[np.abs(audio) > 1000]
    assert len(loud) > 16000 * 0.8, "about 1.5 s of the tone arrived around the garbage"
    assert abs(dominant_frequency(audio, 16000) - 440) < 10
    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "stream-closed")


# --------------------------------------------------------------------------- hang-up


async def room_hangup_call(
    server: InProcessServer, connector: Connector, room: str, call_uuid: str
) -> None:
    """A signed call that the room participant hangs up as soon as it has joined."""
    options = CallOptions(
        webhook_url=connector.webhook_url,
        seconds=5,
        credentials=dict(CREDENTIALS),
        extra_params={"CallUUID": call_uuid},
    )
    await hang_up_from_room(server, room, simulate_plivo_call(options))


async def test_room_hangup_deletes_the_call_at_plivo(
    server: InProcessServer, fake_provider_api: FakeProviderApi
) -> None:
    connector = plivo_connector(server, "hangup-room", verify=True)
    call_uuid = str(uuid.uuid4())
    await room_hangup_call(server, connector, "hangup-room", call_uuid)

    (request,) = await asyncio.to_thread(fake_provider_api.wait_for, 1)
    assert request.method == "DELETE"
    assert request.path == f"/v1/Account/{AUTH_ID}/Call/{call_uuid}/"
    basic = base64.b64encode(f"{AUTH_ID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "room-hangup")


async def test_plivo_404_on_hangup_counts_as_already_ended(
    server: InProcessServer, fake_provider_api: FakeProviderApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_provider_api.answer(
        "DELETE", r"/v1/Account/[^/]+/Call/[^/]+/", 404, {"error": "call not found"}
    )
    results = record_hangups(server.runtime.providers["plivo"], monkeypatch)
    connector = plivo_connector(server, "gone-room")
    await room_hangup_call(server, connector, "gone-room", str(uuid.uuid4()))

    call = await ended_call(server, connector)
    assert (call["status"], call["endReason"]) == ("ended", "room-hangup")
    assert len(hangups(fake_provider_api)) == 1
    (result,) = results
    assert (result.ok, result.already_ended, result.status) == (True, True, 404)


# --------------------------------------------------------------------------- webhook


async def test_get_answer_url_works(server: InProcessServer) -> None:
    connector = plivo_connector(server, "get-room", verify=True)
    options = CallOptions(
        webhook_url=connector.webhook_url,
        method="GET",
        seconds=0.6,
        credentials=dict(CREDENTIALS),
    )
    summary = await simulate_plivo_call(options)
    assert summary.outcome == "completed", summary.events
    assert summary.frames_received > 0, "the room's audio reached the caller"
    call = await ended_call(server, connector)
    assert (call["from"], call["status"]) == ("+14155550100", "ended")

    plain = plivo_connector(server, "get-room")
    async with httpx.AsyncClient() as client:
        response = await client.get(plain.webhook_url + "?" + urlencode(answer_form()))
    stream = stream_element(response)
    assert stream.get("bidirectional") == "true"


async def test_webhook_retry_gets_the_same_answer_and_one_call(server: InProcessServer) -> None:
    connector = plivo_connector(server, "retry")
    form = answer_form()
    first = await post_form(connector.webhook_url, form)
    second = await post_form(connector.webhook_url, form)
    assert stream_element(first).text == stream_element(second).text
    assert first.text == second.text
    (call,) = await asyncio.to_thread(calls_of, server, connector)
    assert call["providerCallId"] == form["CallUUID"]
    assert call["status"] == "routed"


async def test_sdk_signed_webhook_is_accepted_and_bad_ones_are_403_without_a_call(
    server: InProcessServer,
) -> None:
    connector = plivo_connector(server, "signed", verify=True)
    url = connector.webhook_url
    form = answer_form()

    unsigned = await post_form(url, form)
    assert unsigned.status_code == 403
    assert unsigned.json() == {"message": "X-Plivo-Signature-V3 header is missing"}

    headers = sdk_signed_headers("POST", url, form, "10000000000000000001")
    tampered_body = await post_form(url, {**form, "From": "14155550666"}, headers)
    tampered_url = await post_form(url + "?roomId=elsewhere", form, headers)
    tampered_nonce = await post_form(
        url, form, {**headers, "X-Plivo-Signature-V3-Nonce": "10000000000000000002"}
    )
    for response in (tampered_body, tampered_url, tampered_nonce):
        assert response.status_code == 403
        assert response.json() == {"message": "X-Plivo-Signature-V3 does not match"}
    assert await asyncio.to_thread(calls_of, server, connector) == []

    accepted = await post_form(url, form, headers)
    assert stream_element(accepted).get("contentType") == "audio/x-mulaw;rate=8000"
    replayed = await post_form(url, form, headers)
    assert replayed.status_code == 403
    assert replayed.json() == {"message": "nonce replayed"}

    get_url = url + "?" + urlencode(answer_form())
    get_headers = sdk_signed_headers("GET", get_url, {}, "10000000000000000003")
    async with httpx.AsyncClient() as client:
        response = await client.get(get_url, headers=get_headers)
    stream_element(response)
    assert len(await asyncio.to_thread(calls_of, server, connector)) == 2


async def test_unsigned_handshake_is_refused_and_the_call_fails(server: InProcessServer) -> None:
    connector = plivo_connector(server, "r", verify=True)
    url, form = connector.webhook_url, answer_form()
    headers = sdk_signed_headers("POST", url, form, "20000000000000000001")
    stream_url = stream_element(await post_form(url, form, headers)).text or ""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(stream_url, open_timeout=5):
            pass
    assert caught.value.response.status_code == 403
    call = await ended_call(server, connector)
    assert call["status"] == "failed"
    assert call["endReason"] == "signature"
    assert call["endDetail"] == "X-Plivo-Signature-V3 header is missing"
