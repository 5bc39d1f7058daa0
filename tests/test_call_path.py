"""The Twilio call path over real HTTP and WebSockets (in-process server, injected clock)."""

from __future__ import annotations

import asyncio
import json
import secrets

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.media.analysis import dominant_frequency
from callbridge.media.g711 import ulaw_encode
from callbridge.media.tones import ToneGenerator
from tests import twilio_wire as tw
from tests.servers import InProcessServer, create_connector


async def expect_refused(url: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=5):
            pass
    return caught.value.response.status_code


async def open_call(url: str) -> tuple[websockets.asyncio.client.ClientConnection, str, str]:
    socket = await connect(url, open_timeout=5)
    stream_sid, call_sid = "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
    await socket.send(tw.connected())
    await socket.send(tw.start(stream_sid, call_sid))
    return socket, stream_sid, call_sid


def room_url(server: InProcessServer, room: str, apikey: str = "ak_test_one") -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token(apikey)}"


async def test_twiml_answer_points_at_ingest_without_query(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    assert answer.status == 200
    assert answer.stream_url is not None
    assert answer.stream_url.startswith(f"ws://127.0.0.1:{server.port}/ingest/twilio/")
    assert "?" not in answer.stream_url
    assert answer.parameters["roomId"] == "room-a"
    ref = answer.stream_url.rsplit("/", 1)[1]
    assert len(ref) >= 22


async def test_room_query_parameter_wins_over_default(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    answer = await tw.post_webhook(
        connector.webhook_url + "?roomId=room-b", tw.voice_webhook_form()
    )
    assert answer.parameters["roomId"] == "room-b"


async def test_unroutable_call_is_told_and_hung_up(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token())
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    assert answer.status == 200
    assert answer.stream_url is None
    assert answer.say and "cannot be connected" in answer.say
    assert "<Hangup" in answer.body


async def test_unknown_or_rotated_key_is_an_ordinary_404(server: InProcessServer) -> None:
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId="room-a")
    async with httpx.AsyncClient() as client:
        unknown_path = await client.post(f"{server.url}/v2/nothing/here", data={"a": "b"})
        unknown_key = await client.post(
            f"{server.url}/v2/hooks/twilio/whk_{'x' * 32}", data=tw.voice_webhook_form()
        )
        rotated = await client.post(
            f"{server.url}/v2/connectors/{connector.id}/rotate-key",
            headers={"Authorization": token},
        )
        assert rotated.status_code == 200
        old_key = await client.post(connector.webhook_url, data=tw.voice_webhook_form())
        new_key = await client.post(
            rotated.json()["data"]["webhookUrl"], data=tw.voice_webhook_form()
        )
    for response in (unknown_key, old_key):
        assert response.status_code == 404
        assert response.content == unknown_path.content
        assert response.headers.get("content-type") == unknown_path.headers.get("content-type")
    assert new_key.status_code == 200 and "<Stream" in new_key.text


async def test_malformed_webhook_is_400_naming_the_field(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    form = tw.voice_webhook_form()
    del form["CallSid"]
    async with httpx.AsyncClient() as client:
        response = await client.post(connector.webhook_url, data=form)
    assert response.status_code == 400
    assert "CallSid" in response.json()["message"]


async def test_refs_are_single_use_and_unknown_refs_refused(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    assert answer.stream_url
    socket, _, _ = await open_call(answer.stream_url)
    try:
        assert await expect_refused(answer.stream_url) == 403, "reused ref"
        base = answer.stream_url.rsplit("/", 1)[0]
        assert await expect_refused(f"{base}/{secrets.token_urlsafe(24)}") == 403, "unknown ref"
        assert await expect_refused(f"ws://127.0.0.1:{server.port}/ingest/twilio?ref=nope") == 403
    finally:
        await socket.close()


async def test_ref_expires_90_seconds_after_the_answer(server: InProcessServer, fake_clock) -> None:  # type: ignore[no-untyped-def]
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    on_time = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    late = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    fake_clock.advance(89.9)
    socket, _, _ = await open_call(on_time.stream_url or "")
    await socket.close()
    fake_clock.advance(0.2)
    assert await expect_refused(late.stream_url or "") == 403


async def test_ref_of_one_provider_is_refused_on_another_path(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    ref = (answer.stream_url or "").rsplit("/", 1)[1]
    assert await expect_refused(f"ws://127.0.0.1:{server.port}/ingest/plivo/{ref}") == 403


async def test_webhook_retry_gets_the_same_answer(server: InProcessServer) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-a")
    form = tw.voice_webhook_form()
    first = await tw.post_webhook(connector.webhook_url, form)
    second = await tw.post_webhook(connector.webhook_url, form)
    assert first.stream_url == second.stream_url


async def test_caller_audio_reaches_room_and_survives_malformed_messages(
    server: InProcessServer,
) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="room-m")
    async with connect(room_url(server, "room-m")) as participant:
        joined = json.loads(await participant.recv())
        assert joined["event"] == "joined" and joined["sampleRate"] == 16000
        answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        socket, sid, call_sid = await open_call(answer.stream_url or "")
        tone = ToneGenerator(440, 8000, 0.5)
        heard: list[np.ndarray] = []
        events: list[dict] = []

        async def listen() -> None:
            async for message in participant:
                if isinstance(message, bytes):
                    heard.append(np.frombuffer(message, dtype="<i2"))
                else:
                    events.append(json.loads(message))

        async def drain_provider_socket() -> None:
            async for _ in socket:
                pass

        listener = asyncio.create_task(listen())
        drain = asyncio.create_task(drain_provider_socket())
        garbage = [
            "not json",
            "[]",
            '{"event": 5}',
            json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "%%%notbase64"}}),
            "x" * 70_000,
        ]
        for chunk in range(1, 76):
            await socket.send(tw.media(sid, ulaw_encode(tone.next_frame(160)), chunk + 1, chunk))
            if chunk <= len(garbage):
                await socket.send(garbage[chunk - 1])
            await socket.send(b"\x00\x01binary")
            await asyncio.sleep(0.02)
        await socket.send(
            json.dumps(
                {
                    "event": "dtmf",
                    "sequenceNumber": "99",
                    "streamSid": sid,
                    "dtmf": {"track": "inbound_track", "digit": "5"},
                }
            )
        )
        await socket.send(tw.stop(sid, call_sid, 100))
        await asyncio.sleep(0.5)
        await socket.close()
        await asyncio.sleep(0.1)
        listener.cancel()
        drain.cancel()
    audio = np.concatenate(heard)
    loud = audio[np.abs(audio) > 1000]
    assert len(loud) > 16000 * 0.8, "about 1.5 s of the tone arrived after the garbage"
    assert abs(dominant_frequency(audio, 16000) - 440) < 10
    kinds = [e["event"] for e in events]
    assert "participant-joined" in kinds
    assert {"event": "dtmf", "digit": "5"}.items() <= next(
        e for e in events if e["event"] == "dtmf"
    ).items()
    assert kinds[-1] == "participant-left", "stop ended the call and freed the room leg"


async def test_room_socket_requires_a_valid_token(server: InProcessServer) -> None:
    assert await expect_refused(f"ws://127.0.0.1:{server.port}/v2/rooms/r/participants") == 403
    assert (
        await expect_refused(f"ws://127.0.0.1:{server.port}/v2/rooms/r/participants?token=abc")
        == 403
    )
