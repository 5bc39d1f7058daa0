"""The Twilio simulator against a small fake Twilio-facing server on loopback.

The fake server answers the voice webhook with TwiML pointing at its own media socket, logs
every message the simulator sends, and plays audio, marks and clears back as a callbridge
server would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection

from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency, level_dbfs
from callbridge.media.framing import Pacer
from callbridge.media.g711 import ulaw_decode, ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge.media.wav import read_wav, write_wav
from callbridge_plugins.simulators.twilio import (
    _signed_webhook_url,
    simulate_twilio_call,
    twilio_signature,
)
from tests.fake_peer import FakeProviderFacingServer, events_named, idle

Behaviour = Callable[[ServerConnection, str], Awaitable[None]]

SID = re.compile(r"[0-9a-f]{32}")


def connect_twiml(stream_url: str, parameters: dict[str, str]) -> str:
    params = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in parameters.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="{stream_url}">{params}</Stream></Connect></Response>'
    )


class FakeTwilioFacingServer(FakeProviderFacingServer):
    """A voice-webhook endpoint answering TwiML, plus a media socket that takes ``connected``
    and ``start``; behaviours get the socket and the ``streamSid``."""

    provider = "twilio"

    def __init__(self) -> None:
        super().__init__()
        self.parameters = {"callId": "c-1", "roomId": "room-42", "from": "+14155550100"}
        self.twiml: Callable[[], str] = lambda: connect_twiml(self.stream_url, self.parameters)
        self.behaviour: Behaviour = idle

    def markup(self) -> str:
        return self.twiml()

    async def open_stream(self, ws: ServerConnection) -> tuple[str]:
        await self.receive(ws)  # connected
        start = await self.receive(ws)
        return (start["streamSid"],)


def media_message(stream_sid: str, payload: bytes) -> str:
    media = {"payload": base64.b64encode(payload).decode()}
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": media})


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeTwilioFacingServer]:
    async with FakeTwilioFacingServer() as server:
        yield server


async def test_call_streams_audio_dtmf_and_echoes_marks(
    fake_server: FakeTwilioFacingServer, tmp_path: Any
) -> None:
    sent_tone: list[np.ndarray] = []

    async def play_tone_then_mark(ws: ServerConnection, stream_sid: str) -> None:
        tone = ToneGenerator(1000, 8000, 0.5)
        pacer = Pacer(0.02, lead=3)
        for _ in range(30):
            await pacer.wait()
            pcm = tone.next_frame(160)
            sent_tone.append(pcm)
            await ws.send(media_message(stream_sid, ulaw_encode(pcm)))
        mark = {"event": "mark", "streamSid": stream_sid, "mark": {"name": "tone-end"}}
        await ws.send(json.dumps(mark))

    fake_server.behaviour = play_tone_then_mark
    recording = tmp_path / "heard.wav"
    options = CallOptions(
        webhook_url=fake_server.webhook_url + "?roomId=room-42",
        tone_hz=440,
        seconds=1.2,
        dtmf="12#",
        dtmf_delay=0.1,
        record_path=str(recording),
    )
    summary = await simulate_twilio_call(options)

    assert summary.outcome == "completed"
    assert fake_server.errors == []

    (request,) = fake_server.webhook_requests
    assert request["method"] == "POST"
    assert request["target"] == "/v2/hooks/twilio/whk_test?roomId=room-42"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
    assert re.fullmatch(r"AC[0-9a-f]{32}", form["AccountSid"])
    assert re.fullmatch(r"CA[0-9a-f]{32}", form["CallSid"])
    assert form["ApiVersion"] == "2010-04-01"
    assert (form["CallStatus"], form["Direction"]) == ("ringing", "inbound")
    assert form["From"] == form["Caller"] == "+14155550100"
    assert form["To"] == form["Called"] == "+14155550199"
    assert "x-twilio-signature" not in request["headers"]

    (log,) = fake_server.logs
    assert log[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = log[1]
    stream_sid = start["streamSid"]
    assert re.fullmatch(r"MZ[0-9a-f]{32}", stream_sid)
    assert start["event"] == "start"
    assert start["start"] == {
        "accountSid": form["AccountSid"],
        "streamSid": stream_sid,
        "callSid": form["CallSid"],
        "tracks": ["inbound"],
        "customParameters": fake_server.parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    numbered = log[1:]
    assert [m["sequenceNumber"] for m in numbered] == [str(i) for i in range(1, len(log))]
    assert all(m["streamSid"] == stream_sid for m in numbered)

    media = [m["media"] for m in log if m["event"] == "media"]
    assert len(media) == summary.frames_sent == 60
    assert [m["chunk"] for m in media] == [str(i) for i in range(1, 61)]
    assert [m["timestamp"] for m in media] == [str(20 * i) for i in range(1, 61)]
    assert {m["track"] for m in media} == {"inbound"}
    caller_audio = [base64.b64decode(m["payload"]) for m in media]
    assert {len(payload) for payload in caller_audio} == {160}
    heard_by_server = ulaw_decode(b"".join(caller_audio))
    assert dominant_frequency(heard_by_server, 8000) == pytest.approx(440, abs=5)

    dtmf = [m["dtmf"] for m in log if m["event"] == "dtmf"]
    assert dtmf == [{"track": "inbound_track", "digit": d} for d in "12#"]
    marks = [m for m in log if m["event"] == "mark"]
    assert [m["mark"] for m in marks] == [{"name": "tone-end"}]
    assert log[-1]["event"] == "stop"
    assert log[-1]["stop"] == {"accountSid": form["AccountSid"], "callSid": form["CallSid"]}

    assert summary.frames_received == 30
    assert summary.dominant_hz == pytest.approx(1000, abs=10)
    assert abs(summary.level_dbfs - level_dbfs(np.concatenate(sent_tone))) < 6
    assert events_named(summary, "mark") == [
        {"event": "mark", "name": "tone-end", "cleared": False}
    ]
    assert events_named(summary, "protocol-error") == []
    assert events_named(summary, "bad-frame-size") == []
    assert events_named(summary, "stream") == [
        {"event": "stream", "customParameters": fake_server.parameters}
    ]
    pcm, rate = read_wav(recording)
    assert rate == 8000
    assert len(pcm) == 30 * 160


async def test_clear_flushes_playback_and_echoes_pending_marks(
    fake_server: FakeTwilioFacingServer,
) -> None:
    async def burst_then_clear(ws: ServerConnection, stream_sid: str) -> None:
        silence = b"\xff" * 160
        for _ in range(50):  # one second queued at once
            await ws.send(media_message(stream_sid, silence))
        await ws.send(
            json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "m1"}})
        )
        await asyncio.sleep(0.1)
        await ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))

    fake_server.behaviour = burst_then_clear
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=0.5))

    assert summary.outcome == "completed"
    (clear,) = events_named(summary, "clear")
    assert 0 < clear["droppedBytes"] < 50 * 160
    assert events_named(summary, "mark") == [{"event": "mark", "name": "m1", "cleared": True}]
    assert [m["mark"]["name"] for m in fake_server.logs[0] if m["event"] == "mark"] == ["m1"]
    assert summary.frames_received == 50


async def test_mark_with_nothing_buffered_echoes_at_once(
    fake_server: FakeTwilioFacingServer,
) -> None:
    async def mark_only(ws: ServerConnection, stream_sid: str) -> None:
        await ws.send(json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "m"}}))

    fake_server.behaviour = mark_only
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=0.3))
    assert events_named(summary, "mark") == [{"event": "mark", "name": "m", "cleared": False}]


async def test_protocol_errors_and_bad_frame_sizes_are_reported(
    fake_server: FakeTwilioFacingServer,
) -> None:
    async def sloppy(ws: ServerConnection, stream_sid: str) -> None:
        payload = base64.b64encode(b"\xff" * 160).decode()
        await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
        await ws.send(media_message(stream_sid, b"\xff" * 100))
        await ws.send(json.dumps({"event": "media", "streamSid": stream_sid, "media": {}}))
        await ws.send(json.dumps({"event": "hangup", "streamSid": stream_sid}))
        await ws.send(b"\x00\x01")
        await ws.send("not json")

    fake_server.behaviour = sloppy
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=0.3))

    reasons = [event["reason"] for event in events_named(summary, "protocol-error")]
    assert len(reasons) == 5
    assert "without streamSid" in reasons[0]
    assert events_named(summary, "bad-frame-size") == [
        {"event": "bad-frame-size", "count": 1, "sizes": [100]}
    ]


async def test_server_closing_first_ends_gracefully(fake_server: FakeTwilioFacingServer) -> None:
    async def hang_up(ws: ServerConnection, stream_sid: str) -> None:
        await asyncio.sleep(0.1)
        await ws.close()

    fake_server.behaviour = hang_up
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=5))
    assert summary.outcome == "completed (server closed)"
    assert 0 < summary.frames_sent < 250
    assert all(m["event"] != "stop" for m in fake_server.logs[0])


async def test_server_closing_at_once_is_not_a_crash(fake_server: FakeTwilioFacingServer) -> None:
    fake_server.close_on_accept = True
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=5))
    assert summary.outcome == "completed (server closed)"


async def test_a_wav_file_is_resampled_and_played(
    fake_server: FakeTwilioFacingServer, tmp_path: Any
) -> None:
    wav = tmp_path / "tone16k.wav"
    write_wav(wav, ToneGenerator(600, 16000).next_frame(16000), 16000)
    options = CallOptions(fake_server.webhook_url, play_path=str(wav), seconds=0.6)
    summary = await simulate_twilio_call(options)
    assert summary.outcome == "completed"
    payloads = [m["media"]["payload"] for m in fake_server.logs[0] if m["event"] == "media"]
    heard = ulaw_decode(b"".join(base64.b64decode(p) for p in payloads))
    assert dominant_frequency(heard, 8000) == pytest.approx(600, abs=5)


async def test_unreadable_audio_file_is_an_outcome(
    fake_server: FakeTwilioFacingServer, tmp_path: Any
) -> None:
    options = CallOptions(fake_server.webhook_url, play_path=str(tmp_path / "missing.wav"))
    summary = await simulate_twilio_call(options)
    assert summary.outcome.startswith("failed: cannot read the audio to play")
    assert fake_server.webhook_requests == []


async def test_rejecting_twiml_gives_the_say_text(fake_server: FakeTwilioFacingServer) -> None:
    fake_server.twiml = lambda: (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Say>Sorry, no room.</Say><Hangup/></Response>"
    )
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "rejected: Sorry, no room."
    assert fake_server.handshakes == []


async def test_refused_handshake_reports_the_status(fake_server: FakeTwilioFacingServer) -> None:
    fake_server.refuse_socket_with = 403
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "refused: HTTP 403"
    assert len(fake_server.handshakes) == 1


async def test_webhook_error_status_is_reported(fake_server: FakeTwilioFacingServer) -> None:
    fake_server.webhook_status = 500
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "webhook failed: HTTP 500"


@pytest.mark.parametrize(
    ("url", "reason"),
    [("ws://127.0.0.1:9/ingest/twilio/r?ref=x", "query"), ("https://127.0.0.1:9/r", "scheme")],
)
async def test_stream_urls_twilio_would_not_open_are_reported(
    fake_server: FakeTwilioFacingServer, url: str, reason: str
) -> None:
    fake_server.twiml = lambda: connect_twiml(url, {})
    summary = await simulate_twilio_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome.startswith("invalid stream url:")
    assert reason in summary.outcome


async def test_get_webhook_and_signatures(fake_server: FakeTwilioFacingServer) -> None:
    options = CallOptions(
        fake_server.webhook_url,
        seconds=0.1,
        method="GET",
        credentials={"authToken": "test_auth_token"},
        extra_params={"FromCountry": "US"},
    )
    summary = await simulate_twilio_call(options)
    assert summary.outcome == "completed"

    (request,) = fake_server.webhook_requests
    assert request["method"] == "GET"
    assert request["body"] == b""
    url = "http://" + request["headers"]["host"] + request["target"]
    signature = twilio_signature("test_auth_token", url)
    assert request["headers"]["x-twilio-signature"] == signature
    query = parse_qs(request["target"].split("?", 1)[1])
    assert query["FromCountry"] == ["US"]
    (handshake,) = fake_server.handshakes
    expected = twilio_signature("test_auth_token", fake_server.stream_url)
    assert handshake.headers["X-Twilio-Signature"] == expected
    validator = RequestValidator("test_auth_token")
    assert validator.validate(url, {}, request["headers"]["x-twilio-signature"])
    assert validator.validate(fake_server.stream_url, {}, expected)


async def test_post_webhook_is_signed_and_uses_the_account_sid(
    fake_server: FakeTwilioFacingServer,
) -> None:
    account_sid = "AC" + "5" * 32
    options = CallOptions(
        fake_server.webhook_url + "?roomId=r%201",
        seconds=0.1,
        credentials={"accountSid": account_sid, "authToken": "test_auth_token"},
    )
    summary = await simulate_twilio_call(options)
    assert summary.outcome == "completed"

    (request,) = fake_server.webhook_requests
    form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
    assert form["AccountSid"] == account_sid
    assert fake_server.logs[0][1]["start"]["accountSid"] == account_sid
    url = "http://" + request["headers"]["host"] + request["target"]
    signature = request["headers"]["x-twilio-signature"]
    assert RequestValidator("test_auth_token").validate(url, form, signature)
    assert not RequestValidator("another_token").validate(url, form, signature)


async def test_unsigned_calls_carry_no_signature(fake_server: FakeTwilioFacingServer) -> None:
    options = CallOptions(fake_server.webhook_url, seconds=0.1, credentials={"accountSid": "AC1"})
    summary = await simulate_twilio_call(options)
    assert summary.outcome == "completed"
    assert "x-twilio-signature" not in fake_server.webhook_requests[0]["headers"]
    assert "X-Twilio-Signature" not in fake_server.handshakes[0].headers


def test_https_webhook_urls_are_signed_without_their_port() -> None:
    assert _signed_webhook_url("https://cb.example.com:8443/v2/hooks/twilio/k?a=1") == (
        "https://cb.example.com/v2/hooks/twilio/k?a=1"
    )
    assert _signed_webhook_url("http://127.0.0.1:8000/h") == "http://127.0.0.1:8000/h"
    assert _signed_webhook_url("https://cb.example.com/h") == "https://cb.example.com/h"


def test_signature_matches_published_vectors() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "L/OH5YylLD5NRKLltdqwSvS0BnU="
    ws_url = "wss://connector.example.com/twilio/media/abc123"
    assert twilio_signature("test_auth_token", ws_url) == "gJ9T+BC8l9P+wvp/m7xjQy5bzLY="
