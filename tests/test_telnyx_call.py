"""The Telnyx call path over real HTTP and WebSockets: an in-process server with Telnyx enabled,
hang-ups pointed at the fake provider API, the Telnyx simulator (frames reordered) as the
caller, and room participants on the participant socket.

One server serves the whole module; every test uses its own room and call ids.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import ClientConnection, connect

from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency
from callbridge.media.g711 import ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge_plugins.simulators.telnyx import (
    public_key_of,
    simulate_telnyx_call,
    telnyx_signature_headers,
)
from tests.calls import assert_heard, with_tone_participant
from tests.fake_provider_api import FakeProviderApi, RecordedRequest, running_fake_provider_api
from tests.rooms import participant_in
from tests.servers import (
    FakeClock,
    InProcessServer,
    create_connector,
    provider_api_overrides,
    running_in_process,
)

SEED = base64.b64encode(bytes(range(32))).decode()
CREDENTIALS = {"apiKey": "KEY_telnyx_test_0123", "publicKey": public_key_of(SEED)}


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeProviderApi]:
    with running_fake_provider_api() as api:
        yield api


@pytest.fixture(scope="module")
def traced() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    fake_api: FakeProviderApi,
    traced: InMemorySpanExporter,
) -> Iterator[InProcessServer]:
    with running_in_process(
        tmp_path_factory.mktemp("telnyx"),
        provider_api_overrides(["twilio", "telnyx"], "telnyx", fake_api.base_url),
        clock=FakeClock(),
        span_processors=[SimpleSpanProcessor(traced)],
    ) as running:
        yield running


# --------------------------------------------------------------------------- helpers


def call_sid() -> str:
    return "v3:" + secrets.token_urlsafe(24)


def telnyx_connector(server: InProcessServer, room: str, **fields: Any) -> str:
    connector = create_connector(
        server.url, server.token(), provider="telnyx", defaultRoomId=room, **fields
    )
    return connector.webhook_url


def call_options(webhook_url: str, **fields: Any) -> CallOptions:
    return CallOptions(webhook_url=webhook_url, provider="telnyx", **fields)


def call_rows(server: InProcessServer, provider_call_id: str) -> list[tuple[str, str, str]]:
    database = Path(server.runtime.settings.data_dir) / "callbridge.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT id, status, end_reason FROM calls WHERE provider_call_id = ?",
            (provider_call_id,),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


async def wait_until_ended(server: InProcessServer, provider_call_id: str) -> tuple[str, str]:
    for _ in range(250):
        rows = call_rows(server, provider_call_id)
        if rows and rows[0][1] in ("ended", "failed"):
            return rows[0][0], rows[0][2]
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {provider_call_id} did not end: {rows}")


def hangups_of(api: FakeProviderApi, provider_call_id: str) -> list[RecordedRequest]:
    path = f"/v2/calls/{provider_call_id}/actions/hangup"
    return [r for r in list(api.requests) if r.path == path]


async def wait_for_hangup(api: FakeProviderApi, provider_call_id: str) -> RecordedRequest:
    for _ in range(250):
        if found := hangups_of(api, provider_call_id):
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no hang-up request for {provider_call_id}")


async def media_span(traced: InMemorySpanExporter, call_id: str) -> ReadableSpan:
    for _ in range(250):
        for span in traced.get_finished_spans():
            attributes = span.attributes or {}
            if span.name == "call.media" and attributes.get("callbridge.call.id") == call_id:
                return span
        await asyncio.sleep(0.02)
    raise AssertionError(f"no call.media span for {call_id}")


async def fetch_texml(url: str, params: dict[str, str], method: str = "POST") -> str | None:
    async with httpx.AsyncClient() as client:
        if method == "GET":
            response = await client.get(url, params=params)
        else:
            response = await client.post(url, data=params)
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    return stream.get("url") if stream is not None else None


async def consume(socket: ClientConnection) -> int:
    count = 0
    async for _ in socket:
        count += 1
    return count


def texml_params(sid: str) -> dict[str, str]:
    return {
        "AccountSid": "3e6f995f-85f7-4705-9741-53b116d28237",
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "ringing",
        "ConnectionId": "1684641123236054244",
        "Direction": "inbound",
        "From": "+13122010094",
        "To": "+13122123456",
    }


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_two_tones_cross_the_bridge_with_reordered_frames(
    server: InProcessServer, tmp_path: Path, codec: str
) -> None:
    room = f"tones-{codec.lower()}"
    webhook_url = telnyx_connector(server, room, codec=codec)
    participant_wav, caller_wav = tmp_path / "participant.wav", tmp_path / "caller.wav"
    caller_call = simulate_telnyx_call(
        call_options(webhook_url, tone_hz=440, seconds=2.5, record_path=str(caller_wav))
    )
    _, caller = await with_tone_participant(
        server, room, participant_wav, caller_call, lead=0.4, seconds=3.4
    )

    assert caller.outcome == "completed"
    stream = next(e for e in caller.events if e["event"] == "stream")
    assert (stream["codec"], stream["bidirectionalCodec"]) == (codec, codec)
    assert next(e for e in caller.events if e["event"] == "reordered")["pairs"] >= 5
    problems = [
        e for e in caller.events if e["event"] in {"protocol-error", "bad-frame-size", "warning"}
    ]
    assert problems == []

    # The participant hears the caller's 440 Hz within 10 Hz and 6 dB, reordering undone.
    assert_heard(participant_wav, 440, min_seconds=2)
    # The caller hears the participant's 1000 Hz within 10 Hz and 6 dB.
    assert_heard(caller_wav, 1000, min_seconds=2)


async def test_dtmf_reaches_the_room(server: InProcessServer) -> None:
    webhook_url = telnyx_connector(server, "dtmf-room")
    async with participant_in(server, "dtmf-room") as participant:
        summary = await simulate_telnyx_call(
            call_options(webhook_url, seconds=1.0, dtmf="12#", dtmf_delay=0.1)
        )
        assert summary.outcome == "completed"
        left = await participant.wait_for(event="participant-left")
    dtmf = [e for e in participant.seen if e["event"] == "dtmf"]
    assert [e["digit"] for e in dtmf] == ["1", "2", "#"]
    assert {e["callId"] for e in dtmf} == {left["participantId"]}


async def test_marks_are_played_and_a_clear_reports_pending_marks_cleared(
    server: InProcessServer,
) -> None:
    webhook_url = telnyx_connector(server, "marks-room")
    async with participant_in(server, "marks-room") as participant:
        caller = asyncio.create_task(simulate_telnyx_call(call_options(webhook_url, seconds=2.5)))
        try:
            joined = await participant.wait_for(event="participant-joined")
            call_id = joined["participantId"]
            speaker = asyncio.create_task(participant.stream_tone(1000, 2.0))
            await asyncio.sleep(0.5)
            await participant.send({"event": "mark", "name": "m-played"})
            played = await participant.wait_for(event="mark", name="m-played")
            assert played == {
                "event": "mark",
                "name": "m-played",
                "status": "played",
                "callId": call_id,
            }
            await participant.send({"event": "mark", "name": "m-flushed"})
            await participant.send({"event": "clear"})
            flushed = await participant.wait_for(event="mark", name="m-flushed")
            assert flushed["status"] == "cleared"
            await speaker
            summary = await caller
        finally:
            caller.cancel()
    assert summary.outcome == "completed"
    assert len([e for e in summary.events if e["event"] == "clear"]) == 1
    marks = [e["name"] for e in summary.events if e["event"] == "mark"]
    assert marks == ["m-played", "m-flushed"]


async def test_malformed_oversized_and_error_messages_do_not_end_the_call(
    server: InProcessServer, traced: InMemorySpanExporter
) -> None:
    webhook_url = telnyx_connector(server, "garbage-room")
    sid = call_sid()
    stream_url = await fetch_texml(webhook_url, texml_params(sid))
    assert stream_url is not None
    stream_id = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
    tone = ToneGenerator(440, 8000, 0.5)

    def media(chunk: int, payload: str | None = None, track: str = "inbound") -> str:
        encoded = payload or base64.b64encode(ulaw_encode(tone.next_frame(160))).decode()
        body = {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(chunk * 20),
            "payload": encoded,
        }
        return json.dumps(
            {
                "event": "media",
                "sequence_number": str(chunk + 1),
                "stream_id": stream_id,
                "media": body,
            }
        )

    error = {"code": 100004, "title": "invalid_media", "detail": "not base64"}
    outbound_silence = base64.b64encode(b"\xff" * 160).decode()
    garbage: list[str | bytes] = [
        "not json",
        "[]",
        '{"event": 5}',
        media(1000, payload="%%%notbase64"),
        "x" * 70_000,
        b"\x00\x01binary",
        json.dumps({"event": "media", "stream_id": "another", "media": {"chunk": "1"}}),
    ]
    harmless = [
        json.dumps({"event": "error", "stream_id": stream_id, "payload": error}),
        json.dumps({"event": "something-new", "stream_id": stream_id}),
    ]
    async with (
        participant_in(server, "garbage-room") as participant,
        connect(stream_url, open_timeout=5) as socket,
    ):
        # Read what the server plays, as Telnyx does; an unread socket stalls its closing.
        drain = asyncio.create_task(consume(socket))
        await socket.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        start = {
            "call_control_id": sid,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        }
        await socket.send(
            json.dumps(
                {
                    "event": "start",
                    "sequence_number": "1",
                    "stream_id": stream_id,
                    "start": start,
                }
            )
        )
        for chunk in range(1, 76):
            await socket.send(media(chunk))
            if chunk <= len(garbage):
                await socket.send(garbage[chunk - 1])
            if chunk <= len(harmless):
                await socket.send(harmless[chunk - 1])
            # The outbound echo must not take samples from the tone (it would skip every other
            # frame of it); its payload is ignored anyway.
            await socket.send(media(chunk, payload=outbound_silence, track="outbound"))
            await asyncio.sleep(0.02)
        dtmf = {"event": "dtmf", "stream_id": stream_id, "sequence_number": "99"}
        await socket.send(json.dumps({**dtmf, "dtmf": {"digit": "5"}}))
        stop = {"user_id": "u", "call_control_id": sid}
        await socket.send(
            json.dumps(
                {
                    "event": "stop",
                    "sequence_number": "100",
                    "stream_id": stream_id,
                    "stop": stop,
                }
            )
        )
        await participant.wait_for(event="participant-left")
        await asyncio.wait_for(drain, 5)  # the server closes the socket after stop
    audio = np.concatenate(participant.audio)
    loud = audio[np.abs(audio) > 1000]
    assert len(loud) > 16000 * 0.8, "the tone kept flowing after the garbage"
    assert abs(dominant_frequency(audio, 16000) - 440) < 10
    assert [e["digit"] for e in participant.seen if e["event"] == "dtmf"] == ["5"]
    call_id, reason = await wait_until_ended(server, sid)
    assert reason == "caller-hangup"
    span = await media_span(traced, call_id)
    assert (span.attributes or {})["callbridge.media.malformed"] == len(garbage)


# --------------------------------------------------------------------------- hang-ups


async def test_start_style_hangs_up_by_rest_when_the_stream_ends(
    server: InProcessServer, fake_api: FakeProviderApi
) -> None:
    webhook_url = telnyx_connector(
        server, "start-room", markupStyle="start", credentials=CREDENTIALS
    )
    sid = call_sid()
    summary = await simulate_telnyx_call(
        call_options(webhook_url, seconds=0.6, tone_hz=440, extra_params={"CallSid": sid})
    )
    assert summary.outcome == "completed"
    assert next(e for e in summary.events if e["event"] == "stream")["style"] == "start"
    assert {"event": "call-continues"} in summary.events
    request = await wait_for_hangup(fake_api, sid)
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {CREDENTIALS['apiKey']}"
    assert request.json() == {}
    await wait_until_ended(server, sid)
    assert len(hangups_of(fake_api, sid)) == 1


async def test_connect_style_leaves_the_hang_up_to_telnyx(
    server: InProcessServer, fake_api: FakeProviderApi
) -> None:
    webhook_url = telnyx_connector(server, "connect-room", credentials=CREDENTIALS)
    sid = call_sid()
    summary = await simulate_telnyx_call(
        call_options(webhook_url, seconds=0.6, extra_params={"CallSid": sid})
    )
    assert summary.outcome == "completed"
    assert next(e for e in summary.events if e["event"] == "stream")["style"] == "connect"
    _, reason = await wait_until_ended(server, sid)
    assert reason == "caller-hangup"
    assert hangups_of(fake_api, sid) == []


async def test_room_hang_up_ends_the_call_by_rest(
    server: InProcessServer, fake_api: FakeProviderApi
) -> None:
    webhook_url = telnyx_connector(server, "hangup-room", credentials=CREDENTIALS)
    sid = call_sid()
    async with participant_in(server, "hangup-room") as participant:
        caller = asyncio.create_task(
            simulate_telnyx_call(
                call_options(webhook_url, seconds=5, extra_params={"CallSid": sid})
            )
        )
        try:
            await participant.wait_for(event="participant-joined")
            await participant.send({"event": "hangup"})  # the room's only call: no callId
            summary = await caller
        finally:
            caller.cancel()
    assert summary.outcome == "completed (server closed)"
    request = await wait_for_hangup(fake_api, sid)
    assert request.headers["authorization"] == f"Bearer {CREDENTIALS['apiKey']}"
    _, reason = await wait_until_ended(server, sid)
    assert reason == "room-hangup"


async def test_already_ended_answer_counts_as_a_successful_hang_up(
    server: InProcessServer, fake_api: FakeProviderApi, traced: InMemorySpanExporter
) -> None:
    sid = call_sid()
    already_ended = {"errors": [{"code": "90018", "title": "Call has already ended"}]}
    fake_api.answer("POST", rf"/v2/calls/{re.escape(sid)}/actions/hangup", 422, already_ended)
    webhook_url = telnyx_connector(
        server, "ended-room", markupStyle="start", credentials=CREDENTIALS
    )
    summary = await simulate_telnyx_call(
        call_options(webhook_url, seconds=0.4, extra_params={"CallSid": sid})
    )
    assert summary.outcome == "completed"
    await wait_for_hangup(fake_api, sid)
    call_id, _ = await wait_until_ended(server, sid)
    span = await media_span(traced, call_id)
    (event,) = [e for e in span.events if e.name == "provider hang-up"]
    assert dict(event.attributes or {}) == {"ok": True, "status": 422, "already_ended": True}


# --------------------------------------------------------------------------- webhooks


async def test_webhook_retry_gets_the_same_answer_and_one_call(server: InProcessServer) -> None:
    webhook_url = telnyx_connector(server, "retry-room")
    sid = call_sid()
    first = await fetch_texml(webhook_url, texml_params(sid))
    second = await fetch_texml(webhook_url, texml_params(sid))
    by_get = await fetch_texml(webhook_url, texml_params(sid), method="GET")
    assert first is not None and first.startswith(f"ws://127.0.0.1:{server.port}/ingest/telnyx/")
    assert first == second == by_get
    assert len(call_rows(server, sid)) == 1


async def test_verified_connector_accepts_signed_fetches_only(server: InProcessServer) -> None:
    webhook_url = telnyx_connector(
        server, "signed-room", credentials=CREDENTIALS, verifySignatures=True
    )
    signed_sid = call_sid()
    summary = await simulate_telnyx_call(
        call_options(
            webhook_url,
            seconds=0.3,
            credentials={"privateKey": SEED},
            extra_params={"CallSid": signed_sid},
        )
    )
    assert summary.outcome == "completed"
    assert len(call_rows(server, signed_sid)) == 1

    unsigned = await simulate_telnyx_call(call_options(webhook_url, seconds=0.3))
    assert unsigned.outcome == "webhook failed: HTTP 403"

    now = int(server.clock())
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attempts: dict[str, tuple[bytes, dict[str, str]]] = {}
    sid = call_sid()
    body = urlencode(texml_params(sid)).encode()
    tampered = body.replace(b"13122010094", b"13125550000")
    attempts[sid] = (tampered, telnyx_signature_headers(SEED, body, now))
    for skew in (-301, 301):
        sid = call_sid()
        body = urlencode(texml_params(sid)).encode()
        attempts[sid] = (body, telnyx_signature_headers(SEED, body, now + skew))
    sid = call_sid()
    body = urlencode(texml_params(sid)).encode()
    headers = telnyx_signature_headers(SEED, body, now)
    attempts[sid] = (body, {**headers, "telnyx-timestamp": str(now + 1)})
    async with httpx.AsyncClient() as client:
        for sid, (content, headers) in attempts.items():
            response = await client.post(webhook_url, content=content, headers={**form, **headers})
            assert response.status_code == 403, response.text
            assert call_rows(server, sid) == []
