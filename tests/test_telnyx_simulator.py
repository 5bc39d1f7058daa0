"""The Telnyx simulator against a small fake Telnyx-facing server on loopback.

The fake server answers the TeXML fetch with markup pointing at its own media socket, logs
every message the simulator sends, and plays audio, marks and clears back as a callbridge
server would.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from websockets.asyncio.server import ServerConnection

from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency, level_dbfs
from callbridge.media.framing import Pacer
from callbridge.media.g711 import alaw_decode, ulaw_decode, ulaw_encode
from callbridge.media.tones import ToneGenerator
from callbridge.media.wav import read_wav
from callbridge_plugins.simulators.telnyx import (
    public_key_of,
    simulate_telnyx_call,
    telnyx_signature_headers,
)
from tests.fake_peer import FakeProviderFacingServer, events_named, idle

Behaviour = Callable[[ServerConnection], Awaitable[None]]

SEED = base64.b64encode(b"\x01" * 32).decode()
STREAM_ATTRIBUTES = {
    "bidirectionalMode": "rtp",
    "bidirectionalCodec": "PCMU",
    "bidirectionalSamplingRate": "8000",
    "codec": "PCMU",
    "track": "inbound_track",
    "enableReconnect": "false",
}


def texml(url: str, style: str = "connect", pause: bool = True, **attributes: str) -> str:
    attrs = {"url": url, **STREAM_ATTRIBUTES, **attributes}
    rendered = " ".join(f'{k}="{v}"' for k, v in attrs.items() if v != "-")
    stream = f"<Stream {rendered}/>"
    if style == "connect":
        body = f"<Connect>{stream}</Connect>"
    else:
        body = f"<Start>{stream}</Start>" + ('<Pause length="86400"/>' if pause else "")
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'


class FakeTelnyxFacingServer(FakeProviderFacingServer):
    """A TeXML endpoint, plus a media socket that takes ``connected`` and ``start``;
    behaviours get the socket only."""

    provider = "telnyx"

    def __init__(self) -> None:
        super().__init__()
        self.texml: Callable[[], str] = lambda: texml(self.stream_url)
        self.behaviour: Behaviour = idle

    def markup(self) -> str:
        return self.texml()

    async def open_stream(self, ws: ServerConnection) -> tuple[()]:
        await self.receive(ws)  # connected
        await self.receive(ws)  # start
        return ()


def media_message(payload: bytes) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeTelnyxFacingServer]:
    async with FakeTelnyxFacingServer() as server:
        yield server


def inbound_media(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["media"] for m in log if m["event"] == "media" and m["media"]["track"] == "inbound"]


async def test_call_streams_reordered_audio_dtmf_and_echoes_marks(
    fake_server: FakeTelnyxFacingServer, tmp_path: Any
) -> None:
    sent_tone: list[np.ndarray] = []

    async def play_tone_then_mark(ws: ServerConnection) -> None:
        tone = ToneGenerator(1000, 8000, 0.5)
        pacer = Pacer(0.02, lead=3)
        for _ in range(30):
            await pacer.wait()
            pcm = tone.next_frame(160)
            sent_tone.append(pcm)
            await ws.send(media_message(ulaw_encode(pcm)))
        await ws.send(json.dumps({"event": "mark", "mark": {"name": "tone-end"}}))

    fake_server.behaviour = play_tone_then_mark
    recording = tmp_path / "heard.wav"
    options = CallOptions(
        webhook_url=fake_server.webhook_url + "?roomId=room-42",
        provider="telnyx",
        tone_hz=440,
        seconds=1.2,
        dtmf="12#",
        dtmf_delay=0.1,
        record_path=str(recording),
    )
    summary = await simulate_telnyx_call(options)

    assert summary.outcome == "completed"
    assert fake_server.errors == []

    (request,) = fake_server.webhook_requests
    assert request["method"] == "POST"
    assert request["target"] == "/v2/hooks/telnyx/whk_test?roomId=room-42"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert "telnyx-signature-ed25519" not in request["headers"]
    form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
    assert set(form) == {
        "AccountSid",
        "ApiVersion",
        "CallSid",
        "CallSidLegacy",
        "CallStatus",
        "ConnectionId",
        "Direction",
        "From",
        "To",
    }
    assert form["CallSid"].startswith("v3:")
    assert (form["From"], form["To"]) == ("+14155550100", "+14155550199")
    assert (form["ApiVersion"], form["CallStatus"]) == ("2010-04-01", "ringing")
    assert form["ConnectionId"].isdigit()

    (log,) = fake_server.logs
    assert log[0] == {"event": "connected", "version": "1.0.0"}
    start = log[1]
    assert start["event"] == "start" and start["sequence_number"] == "1"
    assert re.fullmatch(r"[0-9a-f-]{36}", start["stream_id"])
    assert start["start"]["call_control_id"] == form["CallSid"]
    assert start["start"]["media_format"] == {
        "encoding": "PCMU",
        "sample_rate": 8000,
        "channels": 1,
    }
    assert (start["start"]["from"], start["start"]["to"]) == ("+14155550100", "+14155550199")
    numbered = log[1:]
    assert all(isinstance(m["sequence_number"], str) for m in numbered)
    assert sorted(int(m["sequence_number"]) for m in numbered) == list(range(1, len(log)))
    assert all(m["stream_id"] == start["stream_id"] for m in numbered)

    media = inbound_media(log)
    assert len(media) == summary.frames_sent == 60
    chunks = [int(m["chunk"]) for m in media]
    assert sorted(chunks) == list(range(1, 61))
    swapped = sum(1 for a, b in itertools.pairwise(chunks) if a > b)
    assert swapped >= 5, "adjacent pairs are delivered swapped"
    assert events_named(summary, "reordered") == [{"event": "reordered", "pairs": swapped}]
    assert all(m["timestamp"] == str(int(m["chunk"]) * 20) for m in media)
    in_order = sorted(media, key=lambda m: int(m["chunk"]))
    caller_audio = [base64.b64decode(m["payload"]) for m in in_order]
    assert {len(payload) for payload in caller_audio} == {160}
    heard_by_server = ulaw_decode(b"".join(caller_audio))
    assert dominant_frequency(heard_by_server, 8000) == pytest.approx(440, abs=5)

    dtmf = [m for m in log if m["event"] == "dtmf"]
    assert [m["dtmf"] for m in dtmf] == [{"digit": d} for d in "12#"]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", m["occurred_at"]) for m in dtmf
    )
    assert [m["mark"] for m in log if m["event"] == "mark"] == [{"name": "tone-end"}]
    assert log[-1]["event"] == "stop"
    assert log[-1]["stop"]["call_control_id"] == form["CallSid"]

    assert summary.frames_received == 30
    assert summary.dominant_hz == pytest.approx(1000, abs=10)
    assert abs(summary.level_dbfs - level_dbfs(np.concatenate(sent_tone))) < 6
    assert events_named(summary, "mark") == [
        {"event": "mark", "name": "tone-end", "cleared": False}
    ]
    assert events_named(summary, "protocol-error") == []
    assert events_named(summary, "warning") == []
    assert events_named(summary, "bad-frame-size") == []
    assert events_named(summary, "call-continues") == []
    assert events_named(summary, "stream") == [
        {
            "event": "stream",
            "style": "connect",
            "codec": "PCMU",
            "bidirectionalCodec": "PCMU",
            "track": "inbound_track",
        }
    ]
    pcm, rate = read_wav(recording)
    assert (rate, len(pcm)) == (8000, 30 * 160)


async def test_reordering_can_be_turned_off(fake_server: FakeTelnyxFacingServer) -> None:
    options = CallOptions(fake_server.webhook_url, provider="telnyx", tone_hz=440, seconds=0.4)
    summary = await simulate_telnyx_call(options, reorder=False)
    assert summary.outcome == "completed"
    chunks = [int(m["chunk"]) for m in inbound_media(fake_server.logs[0])]
    assert chunks == list(range(1, 21))
    assert events_named(summary, "reordered") == []


async def test_pcma_streams_a_law(fake_server: FakeTelnyxFacingServer) -> None:
    fake_server.texml = lambda: texml(
        fake_server.stream_url, codec="PCMA", bidirectionalCodec="PCMA"
    )
    options = CallOptions(fake_server.webhook_url, provider="telnyx", tone_hz=440, seconds=0.6)
    summary = await simulate_telnyx_call(options)
    assert summary.outcome == "completed"
    log = fake_server.logs[0]
    assert log[1]["start"]["media_format"]["encoding"] == "PCMA"
    media = sorted(inbound_media(log), key=lambda m: int(m["chunk"]))
    heard = alaw_decode(b"".join(base64.b64decode(m["payload"]) for m in media))
    assert dominant_frequency(heard, 8000) == pytest.approx(440, abs=5)


async def test_signed_post_and_get_fetches(fake_server: FakeTelnyxFacingServer) -> None:
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_of(SEED)))
    for method in ("POST", "GET"):
        options = CallOptions(
            fake_server.webhook_url,
            provider="telnyx",
            seconds=0.1,
            method=method,
            credentials={"privateKey": SEED},
            extra_params={"CallerName": "Ada"},
        )
        assert (await simulate_telnyx_call(options)).outcome == "completed"
    post, get = fake_server.webhook_requests
    for request in (post, get):
        signature = base64.b64decode(request["headers"]["telnyx-signature-ed25519"])
        timestamp = request["headers"]["telnyx-timestamp"]
        public.verify(signature, timestamp.encode() + b"|" + request["body"])
    assert b"CallerName=Ada" in post["body"]
    assert get["body"] == b""
    assert parse_qs(get["target"].split("?", 1)[1])["CallerName"] == ["Ada"]


def test_signature_helper_matches_the_published_vector() -> None:
    body = b'{"data":{"event_type":"call.initiated","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"}}'
    assert public_key_of(SEED) == "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="
    assert telnyx_signature_headers(SEED, body, 1735689600) == {
        "telnyx-signature-ed25519": "MTLKb3e8GIBfjgNL8QASPpB0x1ZsAu5/nPEBqyNc/yfVfQdaJAh4/"
        "6eatgMy39pwvdiITPlOVHRo7zWidP+nAA==",
        "telnyx-timestamp": "1735689600",
    }
    other = Ed25519PrivateKey.generate()
    assert public_key_of(base64.b64encode(other.private_bytes_raw()).decode()) != public_key_of(
        SEED
    )


async def test_a_bad_private_key_is_an_outcome(fake_server: FakeTelnyxFacingServer) -> None:
    options = CallOptions(
        fake_server.webhook_url, provider="telnyx", credentials={"privateKey": "abc"}
    )
    summary = await simulate_telnyx_call(options)
    assert summary.outcome.startswith("failed: credentials.privateKey")
    assert fake_server.webhook_requests == []


@pytest.mark.parametrize(("mode", "shown"), [("mp3", '"mp3"'), ("-", 'absent, so "mp3"')])
async def test_mp3_mode_is_reported_as_invalid_texml(
    fake_server: FakeTelnyxFacingServer, mode: str, shown: str
) -> None:
    fake_server.texml = lambda: texml(fake_server.stream_url, bidirectionalMode=mode)
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.2))
    assert summary.outcome.startswith(f"invalid texml: bidirectionalMode is {shown}")
    assert fake_server.handshakes == []


async def test_start_style_call_outlives_its_stream(fake_server: FakeTelnyxFacingServer) -> None:
    fake_server.texml = lambda: texml(fake_server.stream_url, style="start")
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.2))
    assert summary.outcome == "completed"
    assert events_named(summary, "call-continues") == [{"event": "call-continues"}]
    assert events_named(summary, "stream")[0]["style"] == "start"
    assert fake_server.logs[0][-1]["event"] == "stop"
    assert events_named(summary, "protocol-error") == []


async def test_start_without_pause_is_a_protocol_error(fake_server: FakeTelnyxFacingServer) -> None:
    fake_server.texml = lambda: texml(fake_server.stream_url, style="start", pause=False)
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.1))
    (error,) = events_named(summary, "protocol-error")
    assert "<Start>" in error["reason"]


async def test_reconnect_left_on_is_a_warning(fake_server: FakeTelnyxFacingServer) -> None:
    fake_server.texml = lambda: texml(fake_server.stream_url, enableReconnect="-")
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.1))
    assert summary.outcome == "completed"
    (warning,) = events_named(summary, "warning")
    assert "enableReconnect" in warning["reason"]


async def test_both_tracks_also_streams_what_the_caller_hears(
    fake_server: FakeTelnyxFacingServer,
) -> None:
    async def tone(ws: ServerConnection) -> None:
        pcm = ToneGenerator(1000, 8000, 0.5).next_frame(160 * 10)
        await ws.send(media_message(ulaw_encode(pcm)))

    fake_server.behaviour = tone
    fake_server.texml = lambda: texml(fake_server.stream_url, track="both_tracks")
    options = CallOptions(fake_server.webhook_url, tone_hz=440, seconds=0.5)
    summary = await simulate_telnyx_call(options)
    assert summary.outcome == "completed"
    log = fake_server.logs[0]
    outbound = [
        m["media"] for m in log if m["event"] == "media" and m["media"]["track"] == "outbound"
    ]
    assert len(outbound) >= 10
    assert [int(m["chunk"]) for m in outbound] == list(range(1, len(outbound) + 1))
    heard = ulaw_decode(b"".join(base64.b64decode(m["payload"]) for m in outbound[:10]))
    assert dominant_frequency(heard, 8000) == pytest.approx(1000, abs=10)
    assert len(inbound_media(log)) == 25


async def test_clear_flushes_playback_and_echoes_pending_marks(
    fake_server: FakeTelnyxFacingServer,
) -> None:
    async def burst_then_clear(ws: ServerConnection) -> None:
        for _ in range(50):  # one second queued at once
            await ws.send(media_message(b"\xff" * 160))
        await ws.send(json.dumps({"event": "mark", "mark": {"name": "m1"}}))
        await asyncio.sleep(0.1)
        await ws.send(json.dumps({"event": "clear"}))
        await ws.send(json.dumps({"event": "mark", "mark": {"name": "m2"}}))

    fake_server.behaviour = burst_then_clear
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.5))

    assert summary.outcome == "completed"
    (clear,) = events_named(summary, "clear")
    assert 0 < clear["droppedBytes"] < 50 * 160
    assert events_named(summary, "mark") == [
        {"event": "mark", "name": "m1", "cleared": True},
        {"event": "mark", "name": "m2", "cleared": False},
    ]
    echoed = [m["mark"]["name"] for m in fake_server.logs[0] if m["event"] == "mark"]
    assert echoed == ["m1", "m2"]


async def test_bad_server_messages_get_telnyx_error_events(
    fake_server: FakeTelnyxFacingServer,
) -> None:
    async def sloppy(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"event": "media", "media": {"payload": "%%%"}}))
        await ws.send(b"\x00\x01")
        await ws.send(json.dumps({"event": "hangup"}))
        await ws.send(json.dumps({"event": "clear", "stream_id": "another"}))
        await ws.send(media_message(b"\xff" * 100))

    fake_server.behaviour = sloppy
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=0.4))

    reasons = [event["reason"] for event in events_named(summary, "protocol-error")]
    assert len(reasons) == 4
    errors = [m for m in fake_server.logs[0] if m["event"] == "error"]
    assert [e["payload"]["code"] for e in errors] == [100004, 100003]
    assert errors[0]["payload"]["title"] == "invalid_media"
    assert events_named(summary, "bad-frame-size") == [
        {"event": "bad-frame-size", "count": 1, "sizes": [100]}
    ]


async def test_server_closing_first_ends_gracefully(fake_server: FakeTelnyxFacingServer) -> None:
    async def hang_up(ws: ServerConnection) -> None:
        await asyncio.sleep(0.1)
        await ws.close()

    fake_server.behaviour = hang_up
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=5))
    assert summary.outcome == "completed (server closed)"
    assert 0 < summary.frames_sent < 250
    assert all(m["event"] != "stop" for m in fake_server.logs[0])


async def test_rejecting_texml_gives_the_say_text(fake_server: FakeTelnyxFacingServer) -> None:
    fake_server.texml = lambda: (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Say>Sorry, no room.</Say><Hangup/></Response>"
    )
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "rejected: Sorry, no room."
    assert fake_server.handshakes == []


async def test_refused_handshake_and_failed_webhook_are_outcomes(
    fake_server: FakeTelnyxFacingServer,
) -> None:
    fake_server.refuse_socket_with = 403
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "refused: HTTP 403"
    fake_server.webhook_status = 500
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome == "webhook failed: HTTP 500"


async def test_unsupported_codecs_and_urls_are_outcomes(
    fake_server: FakeTelnyxFacingServer,
) -> None:
    fake_server.texml = lambda: texml(fake_server.stream_url, bidirectionalCodec="OPUS")
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome.startswith("unsupported: bidirectionalCodec=OPUS")
    fake_server.texml = lambda: texml("https://127.0.0.1:9/r")
    summary = await simulate_telnyx_call(CallOptions(fake_server.webhook_url, seconds=1))
    assert summary.outcome.startswith("invalid stream url:")
