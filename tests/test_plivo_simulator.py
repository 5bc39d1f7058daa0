"""The Plivo simulator against a small fake Plivo-facing server on loopback.

The fake server answers the Answer URL with Plivo XML pointing at its own media socket, logs
every message the simulator sends, and plays audio, checkpoints and clears back as a callbridge
server would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from plivo.utils.signature_v3 import validate_v3_signature
from websockets.asyncio.server import ServerConnection

from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency, level_dbfs
from callbridge.media.framing import Pacer
from callbridge.media.g711 import ulaw_decode, ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge_plugins.simulators.plivo import plivo_v3_signature, simulate_plivo_call
from tests.fake_peer import FakeProviderFacingServer, events_named, idle

Behaviour = Callable[[ServerConnection, str], Awaitable[None]]

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MULAW = "audio/x-mulaw;rate=8000"


def stream_xml(url: str, content_type: str | None = MULAW, **attributes: str) -> str:
    attrs = {"bidirectional": "true", "audioTrack": "inbound", "keepCallAlive": "true"}
    if content_type is not None:
        attrs["contentType"] = content_type
    attrs.update(attributes)
    rendered = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Stream {rendered}>{url}</Stream></Response>"
    )


class FakePlivoFacingServer(FakeProviderFacingServer):
    """An Answer-URL endpoint answering Plivo XML, plus a media socket that takes ``start``
    (Plivo sends no ``connected``) and is read until the simulator closes it; behaviours get
    the socket and the ``streamId``."""

    provider = "plivo"
    markup_type = "application/xml"
    ends_on_stop = False

    def __init__(self) -> None:
        super().__init__()
        self.content_type: str | None = MULAW
        self.xml: Callable[[], str] = lambda: stream_xml(self.stream_url, self.content_type)
        self.behaviour: Behaviour = idle

    def markup(self) -> str:
        return self.xml()

    async def open_stream(self, ws: ServerConnection) -> tuple[str]:
        start = await self.receive(ws)
        return (start["start"]["streamId"],)


def play_audio(payload: bytes, content_type: str = "audio/x-mulaw", rate: Any = 8000) -> str:
    media = {"contentType": content_type, "sampleRate": rate}
    media["payload"] = base64.b64encode(payload).decode()
    return json.dumps({"event": "playAudio", "media": media})


def checkpoint(stream_id: str, name: str) -> str:
    return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


@pytest.fixture
async def fake_server() -> AsyncIterator[FakePlivoFacingServer]:
    async with FakePlivoFacingServer() as server:
        yield server


async def test_call_sends_start_first_then_media_and_dtmf_and_plays_audio(
    fake_server: FakePlivoFacingServer, tmp_path: Any
) -> None:
    sent_tone: list[np.ndarray] = []
    checkpoint_sent_at: list[float] = []

    async def play_tone_then_checkpoint(ws: ServerConnection, stream_id: str) -> None:
        tone = ToneGenerator(1000, 8000, 0.5)
        pacer = Pacer(0.02, lead=3)
        for _ in range(30):
            await pacer.wait()
            pcm = tone.next_frame(160)
            sent_tone.append(pcm)
            await ws.send(play_audio(ulaw_encode(pcm)))
        checkpoint_sent_at.append(time.monotonic())
        await ws.send(checkpoint(stream_id, "tone-end"))

    fake_server.behaviour = play_tone_then_checkpoint
    options = CallOptions(
        webhook_url=fake_server.webhook_url + "?roomId=room-42",
        tone_hz=440,
        seconds=1.2,
        dtmf="12#",
        dtmf_delay=0.1,
        record_path=str(tmp_path / "heard.wav"),
    )
    summary = await simulate_plivo_call(options)

    assert summary.outcome == "completed"
    assert fake_server.errors == []
    (request,) = fake_server.webhook_requests
    assert request["method"] == "POST"
    assert request["target"] == "/v2/hooks/plivo/whk_test?roomId=room-42"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
    assert UUID.fullmatch(form["CallUUID"])
    assert (form["From"], form["To"]) == ("14155550100", "14155550199"), "no + as on Plivo"
    assert (form["Direction"], form["CallStatus"]) == ("inbound", "ringing")
    assert not any(name.startswith("x-plivo") for name in request["headers"])

    (log,) = fake_server.logs
    start = log[0]
    assert start["event"] == "start", "Plivo sends no connected message"
    assert start["sequenceNumber"] == 1
    stream_id = start["start"]["streamId"]
    assert start["start"] == {
        "callId": form["CallUUID"],
        "streamId": stream_id,
        "accountId": start["start"]["accountId"],
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    }
    assert [m["sequenceNumber"] for m in log] == list(range(1, len(log) + 1))
    assert all(m["streamId"] == stream_id for m in log[1:])

    media = [m["media"] for m in log if m["event"] == "media"]
    assert len(media) == summary.frames_sent == 60
    assert [m["chunk"] for m in media] == list(range(1, 61))
    assert all(isinstance(m["timestamp"], str) and m["timestamp"].isdigit() for m in media)
    assert {m["track"] for m in media} == {"inbound"}
    caller_audio = [base64.b64decode(m["payload"]) for m in media]
    assert {len(payload) for payload in caller_audio} == {160}
    assert dominant_frequency(ulaw_decode(b"".join(caller_audio)), 8000) == pytest.approx(
        440, abs=5
    )
    dtmf = [m["dtmf"] for m in log if m["event"] == "dtmf"]
    assert [(d["track"], d["digit"]) for d in dtmf] == [("inbound", d) for d in "12#"]

    played = [i for i, m in enumerate(log) if m["event"] == "playedStream"]
    assert [log[i]["name"] for i in played] == ["tone-end"]
    # The checkpoint came after 30 frames sent 3 ahead of playback: it is reached only once
    # the queued audio has played out, not when it arrives.
    (arrived,) = [fake_server.arrivals[0][i] for i in played]
    assert arrived - checkpoint_sent_at[0] > 0.02
    assert log[-1]["event"] != "stop", "Plivo ends by closing the socket"

    assert summary.frames_received == 30
    assert summary.dominant_hz == pytest.approx(1000, abs=10)
    assert abs(summary.level_dbfs - level_dbfs(np.concatenate(sent_tone))) < 6
    assert events_named(summary, "playedStream") == [{"event": "playedStream", "name": "tone-end"}]
    assert events_named(summary, "protocol-error") == []
    (stream,) = events_named(summary, "stream")
    assert stream["url"] == fake_server.stream_url
    assert stream["attributes"]["contentType"] == MULAW


async def test_clear_audio_drops_queue_and_checkpoints_and_confirms(
    fake_server: FakePlivoFacingServer,
) -> None:
    async def burst_then_clear(ws: ServerConnection, stream_id: str) -> None:
        for _ in range(50):  # one second queued at once
            await ws.send(play_audio(b"\xff" * 160))
        await ws.send(checkpoint(stream_id, "m1"))
        await asyncio.sleep(0.1)
        await ws.send(json.dumps({"event": "clearAudio", "streamId": stream_id}))
        await asyncio.sleep(0.05)
        await ws.send(checkpoint(stream_id, "m2"))

    fake_server.behaviour = burst_then_clear
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=0.5))

    assert summary.outcome == "completed"
    (clear,) = events_named(summary, "clear")
    assert 0 < clear["droppedBytes"] < 50 * 160
    assert clear["droppedCheckpoints"] == ["m1"]
    log = fake_server.logs[0]
    cleared = [m for m in log if m["event"] == "clearedAudio"]
    assert len(cleared) == 1 and set(cleared[0]) == {"event", "sequenceNumber", "streamId"}
    assert [m["name"] for m in log if m["event"] == "playedStream"] == ["m2"], (
        "a flushed checkpoint never comes back; one with nothing queued comes back at once"
    )


async def test_l16_16k_stream_uses_the_xml_content_type(
    fake_server: FakePlivoFacingServer,
) -> None:
    async def play_l16(ws: ServerConnection, stream_id: str) -> None:
        tone = ToneGenerator(1000, 16000, 0.5)
        for _ in range(20):
            await ws.send(
                play_audio(tone.next_frame(320).astype("<i2").tobytes(), "audio/x-l16", 16000)
            )
        await ws.send(play_audio(b"\xff" * 160))  # μ-law on an L16 stream

    fake_server.content_type = "audio/x-l16;rate=16000"
    fake_server.behaviour = play_l16
    summary = await simulate_plivo_call(
        CallOptions(fake_server.webhook_url, tone_hz=440, seconds=0.6)
    )

    assert summary.outcome == "completed"
    log = fake_server.logs[0]
    assert log[0]["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 16000}
    payloads = [base64.b64decode(m["media"]["payload"]) for m in log if m["event"] == "media"]
    assert {len(p) for p in payloads} == {640}
    caller = np.frombuffer(b"".join(payloads), dtype="<i2")
    assert dominant_frequency(caller, 16000) == pytest.approx(440, abs=5)
    assert summary.frames_received == 20
    assert summary.dominant_hz == pytest.approx(1000, abs=10)
    (error,) = events_named(summary, "protocol-error")
    assert "contentType 'audio/x-mulaw'" in error["reason"]


async def test_protocol_errors_are_reported(fake_server: FakePlivoFacingServer) -> None:
    async def sloppy(ws: ServerConnection, stream_id: str) -> None:
        await ws.send(b"\x00\x01")
        await ws.send("not json")
        await ws.send(json.dumps({"event": "media", "media": {}}))
        await ws.send(json.dumps({"event": "clearAudio", "streamId": "another"}))
        await ws.send(play_audio(b"\xff" * 160, rate=16000))
        await ws.send(
            json.dumps(
                {
                    "event": "playAudio",
                    "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "%%%"},
                }
            )
        )
        await ws.send(play_audio(b"\xff" * 50_000))  # over 64 KB once base64-encoded
        await ws.send(json.dumps({"event": "checkpoint", "name": "no-stream-id"}))

    fake_server.behaviour = sloppy
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=0.3))

    reasons = [event["reason"] for event in events_named(summary, "protocol-error")]
    assert len(reasons) == 8, reasons
    assert "binary" in reasons[0]
    assert "'media'" in reasons[2]
    assert "another stream" in reasons[3]
    assert "sampleRate 16000" in reasons[4]
    assert "base64" in reasons[5]
    assert "over 64 KB" in reasons[6]
    assert "without streamId" in reasons[7]
    assert summary.frames_received == 0


async def test_xml_problems_are_reported_and_one_way_streams_are_silent(
    fake_server: FakePlivoFacingServer,
) -> None:
    async def play(ws: ServerConnection, stream_id: str) -> None:
        for _ in range(10):
            await ws.send(play_audio(ulaw_encode(ToneGenerator(1000, 8000).next_frame(160))))

    fake_server.xml = lambda: (
        '<?xml version="1.0"?><Response><Stream bidirectional="false">\n  '
        f"{fake_server.stream_url}\n</Stream></Response>"
    )
    fake_server.behaviour = play
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=0.4))

    assert summary.outcome == "completed"
    reasons = [event["reason"] for event in events_named(summary, "protocol-error")]
    assert any("whitespace" in r for r in reasons)
    assert any("bidirectional" in r for r in reasons)
    assert any("audioTrack" in r for r in reasons)
    assert any("keepCallAlive" in r for r in reasons)
    assert any("contentType" in r for r in reasons)
    assert summary.frames_received == 10
    assert summary.level_dbfs == -120.0, "bidirectional=false: the caller hears nothing"


async def test_unsupported_content_type_is_an_outcome(fake_server: FakePlivoFacingServer) -> None:
    fake_server.content_type = "audio/x-opus;rate=48000"
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "invalid stream: unsupported contentType 'audio/x-opus;rate=48000'"
    assert fake_server.handshakes == []


async def test_rejecting_xml_gives_the_speak_text(fake_server: FakePlivoFacingServer) -> None:
    fake_server.xml = lambda: (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Speak>Sorry, no room.</Speak><Hangup/></Response>"
    )
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "rejected: Sorry, no room."
    assert fake_server.handshakes == []


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_requests_are_v3_signed_when_given_a_token(
    fake_server: FakePlivoFacingServer, method: str
) -> None:
    token = "MY_AUTH_TOKEN"
    options = CallOptions(
        fake_server.webhook_url + "?roomId=r",
        seconds=0.1,
        method=method,
        credentials={"authId": "MAXXXXXXXXXXXXXXXXXX", "authToken": token},
        extra_params={"CallerName": "Alice Smith"},
    )
    summary = await simulate_plivo_call(options)
    assert summary.outcome == "completed"

    (request,) = fake_server.webhook_requests
    assert request["method"] == method
    url = "http://" + request["headers"]["host"] + request["target"]
    headers = request["headers"]
    nonce = headers["x-plivo-signature-v3-nonce"]
    assert re.fullmatch(r"[0-9]{20}", nonce)
    params = (
        {} if method == "GET" else {k: v[0] for k, v in parse_qs(request["body"].decode()).items()}
    )
    if method == "GET":
        assert parse_qs(request["target"].split("?", 1)[1])["CallerName"] == ["Alice Smith"]
    else:
        assert params["CallerName"] == "Alice Smith"
    signature = headers["x-plivo-signature-v3"]
    assert validate_v3_signature(method, url, nonce, token, signature, params)
    assert not validate_v3_signature(method, url, nonce, "other", signature, params)
    assert headers["x-plivo-signature-ma-v3"] == signature

    (handshake,) = fake_server.handshakes
    https_url = fake_server.stream_url.replace("ws://", "http://", 1)
    handshake_nonce = handshake.headers["X-Plivo-Signature-V3-Nonce"]
    assert handshake_nonce != nonce
    assert validate_v3_signature(
        "GET", https_url, handshake_nonce, token, handshake.headers["X-Plivo-Signature-V3"]
    )
    assert fake_server.logs[0][0]["start"]["accountId"] == "MAXXXXXXXXXXXXXXXXXX"


def test_signature_matches_published_vectors() -> None:
    params = {
        "CallUUID": "11111111-2222-3333-4444-555555555555",
        "Direction": "inbound",
        "From": "14155550100",
        "To": "14155550101",
    }
    nonce, token = "05429567804466091622", "MY_AUTH_TOKEN"
    post = plivo_v3_signature(token, nonce, "POST", "https://example.com/answer", params)
    assert post == "X4lpzZ+5yWvpBzUm8ROZ43iL3oSRkawk37PiAqnmIkM="
    with_query = "https://example.com/answer?foo=bar&a=1"
    assert plivo_v3_signature(token, nonce, "POST", with_query, params) == (
        "WQ1RyPjS/Fx44YHmr8dLeh+a0CG4cNbZ5LmSRGABXDk="
    )
    get_url = "https://example.com/answer?" + "&".join(f"{k}={v}" for k, v in params.items())
    assert plivo_v3_signature(token, nonce, "GET", get_url) == (
        "Fv+bnTc6TveLE7lql4UfYt5BJRsg55hIRLhdoxsDqqk="
    )
    assert plivo_v3_signature(token, nonce, "GET", "wss://example.com/stream") == (
        "0TU1k1HQtIxNOYi8KCDsqqahMdoABz1eUCzVJUmO+gI="
    )


async def test_stop_before_close_is_an_option(fake_server: FakePlivoFacingServer) -> None:
    summary = await simulate_plivo_call(
        CallOptions(fake_server.webhook_url, seconds=0.2), send_stop=True
    )
    assert summary.outcome == "completed"
    last = fake_server.logs[0][-1]
    assert last["event"] == "stop"
    assert last["stop"] == {
        "callId": fake_server.logs[0][0]["start"]["callId"],
        "streamId": last["streamId"],
    }


async def test_server_closing_first_ends_gracefully(fake_server: FakePlivoFacingServer) -> None:
    async def hang_up(ws: ServerConnection, stream_id: str) -> None:
        await asyncio.sleep(0.1)
        await ws.close()

    fake_server.behaviour = hang_up
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=5))
    assert summary.outcome == "completed (server closed)"
    assert 0 < summary.frames_sent < 250


async def test_refused_handshake_and_failed_webhook_are_outcomes(
    fake_server: FakePlivoFacingServer,
) -> None:
    fake_server.refuse_socket_with = 403
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "refused: HTTP 403"
    fake_server.webhook_status = 500
    summary = await simulate_plivo_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "webhook failed: HTTP 500"
