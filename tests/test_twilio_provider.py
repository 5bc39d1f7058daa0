"""The Twilio provider: voice webhook, TwiML, and the media-socket adapter over a fake socket."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    DtmfIn,
    MarkEcho,
    MediaStream,
    PluginContext,
    Provider,
    Route,
    StreamStarted,
    StreamStopped,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers.twilio import TwilioConfig, TwilioMediaStream, TwilioProvider

CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "0" * 32
STREAM_SID = "MZ" + "8f2c0a55d9e14bd1a3b7c6e2f0a91d44"
INGEST = "wss://cb.example.com/ingest"


@pytest.fixture
def provider(tmp_path: Path) -> TwilioProvider:
    context = PluginContext(
        data_dir=tmp_path,
        clock=time.time,
        public_api_url="https://cb.example.com",
        public_ingest_url=INGEST,
    )
    return TwilioProvider(TwilioConfig(), context)


def webhook(body: str, method: str = "POST") -> WebhookRequest:
    return WebhookRequest(
        method=method,
        public_url="https://cb.example.com/v2/hooks/twilio/whk_x",
        headers={"content-type": "application/x-www-form-urlencoded"},
        params=parse_qs(body, keep_blank_values=True),
        body=body.encode(),
    )


GOOD_FORM = (
    f"AccountSid={ACCOUNT_SID}&ApiVersion=2010-04-01&CallSid={CALL_SID}&CallStatus=ringing"
    "&Direction=inbound&From=%2B14155550100&To=%2B14155550199&Caller=%2B14155550100"
    "&Called=%2B14155550199&CallToken=secret-ish"
)


def test_provider_satisfies_the_protocol(provider: TwilioProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "twilio"


def test_parse_webhook_reads_the_form(provider: TwilioProvider) -> None:
    call = provider.parse_webhook(webhook(GOOD_FORM))
    assert call.provider == "twilio"
    assert call.provider_call_id == CALL_SID
    assert call.account_id == ACCOUNT_SID
    assert (call.from_number, call.to_number) == ("+14155550100", "+14155550199")
    assert call.direction == "inbound"
    assert call.extra == {"CallStatus": "ringing", "ApiVersion": "2010-04-01"}


def test_parse_webhook_keeps_client_and_sip_identities(provider: TwilioProvider) -> None:
    form = f"CallSid={CALL_SID}&From=client%3Aalice&To=sip%3Abob%40example.com"
    call = provider.parse_webhook(webhook(form, method="GET"))
    assert (call.from_number, call.to_number) == ("client:alice", "sip:bob@example.com")
    assert call.account_id is None


@pytest.mark.parametrize(
    "form",
    [
        "From=%2B14155550100",
        "CallSid=",
        "CallSid=CA123",
        "CallSid=XX" + "1" * 32,
        "CallSid=CA" + "g" * 32,
        "CallSid=CA" + "1" * 33,
    ],
)
def test_parse_webhook_rejects_missing_or_malformed_call_sid(
    provider: TwilioProvider, form: str
) -> None:
    with pytest.raises(WebhookError, match="CallSid") as caught:
        provider.parse_webhook(webhook(form))
    assert caught.value.status == 400


def test_parse_webhook_rejects_malformed_account_sid(provider: TwilioProvider) -> None:
    with pytest.raises(WebhookError, match="AccountSid") as caught:
        provider.parse_webhook(webhook(f"CallSid={CALL_SID}&AccountSid=nope"))
    assert caught.value.status == 400


def test_stream_url_carries_the_ref_in_the_path(provider: TwilioProvider) -> None:
    url = provider.stream_url(INGEST, "r3f_abc-123")
    assert url == f"{INGEST}/twilio/r3f_abc-123"
    assert "?" not in url


def parse_stream(markup_body: str) -> ET.Element:
    root = ET.fromstring(markup_body)
    assert root.tag == "Response"
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    return stream


def test_answer_markup_connects_a_stream_with_parameters(provider: TwilioProvider) -> None:
    call = CallInfo("twilio", CALL_SID, from_number="+14155550100", to_number="+14155550199")
    url = provider.stream_url(INGEST, "ref123")
    markup = provider.answer_markup(call, url, Route(room_id="room-42", strategy="test"))
    assert markup.media_type == "text/xml"
    assert markup.body.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    stream = parse_stream(markup.body)
    assert stream.attrib == {"url": f"{INGEST}/twilio/ref123"}
    assert "?" not in stream.attrib["url"]
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream}
    assert all(p.tag == "Parameter" for p in stream)
    assert parameters == {
        "callId": CALL_SID,
        "roomId": "room-42",
        "from": "+14155550100",
        "to": "+14155550199",
    }


def test_answer_markup_escapes_parameter_values(provider: TwilioProvider) -> None:
    tricky = "a&b\"c<d>'e"
    call = CallInfo("twilio", CALL_SID, from_number=tricky, to_number=None)
    markup = provider.answer_markup(call, f"{INGEST}/twilio/r", Route(tricky, "test"))
    assert tricky not in markup.body  # raw, it would break the XML
    parameters = {p.attrib["name"]: p.attrib["value"] for p in parse_stream(markup.body)}
    assert parameters == {"callId": CALL_SID, "roomId": tricky, "from": tricky}


def test_answer_markup_ignores_codec_and_names_the_stream(tmp_path: Path) -> None:
    context = PluginContext(tmp_path, time.time, "https://cb.example.com", INGEST)
    named = TwilioProvider(TwilioConfig(stream_name="callbridge"), context)
    route = Route("room-1", "test", codec=CodecSpec("L16", 16000))
    markup = named.answer_markup(CallInfo("twilio", CALL_SID), f"{INGEST}/twilio/r", route)
    stream = parse_stream(markup.body)
    assert stream.attrib["name"] == "callbridge"
    assert "L16" not in markup.body


def test_reject_markup_says_and_hangs_up(provider: TwilioProvider) -> None:
    root = ET.fromstring(provider.reject_markup("No room <here> & now").body)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "No room <here> & now"
    default = ET.fromstring(provider.reject_markup("").body)
    assert default[0].text == TwilioConfig().reject_message


def test_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError):
        TwilioConfig.model_validate({"auth_token": "x"})


# --------------------------------------------------------------------------- media stream


class FakeChannel:
    """An in-memory SocketChannel: queued incoming messages, recorded outgoing ones."""

    def __init__(self, incoming: list[str | bytes | None]) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        for message in incoming:
            self.incoming.put_nowait(message)
        self.sent: list[str] = []
        self.closed = 0

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def send_bytes(self, data: bytes) -> None:
        raise AssertionError("Twilio takes text frames only")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed += 1


def msg(event: str, sequence: int | None = None, **body: object) -> str:
    message: dict[str, object] = {"event": event}
    if sequence is not None:
        message["sequenceNumber"] = str(sequence)
        message["streamSid"] = STREAM_SID
    message.update(body)
    return json.dumps(message)


CONNECTED = msg("connected", protocol="Call", version="1.0.0")
START = msg(
    "start",
    1,
    start={
        "accountSid": ACCOUNT_SID,
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "customParameters": {"roomId": "room-42", "from": "+14155550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
)
AUDIO = bytes(range(160))


def media(sequence: int, payload: str | None = None, track: str = "inbound") -> str:
    body = {"track": track, "chunk": str(sequence - 1), "timestamp": str(sequence * 20)}
    body["payload"] = base64.b64encode(AUDIO).decode() if payload is None else payload
    return msg("media", sequence, media=body)


async def events_until_stopped(stream: TwilioMediaStream) -> list[object]:
    events: list[object] = []
    while True:
        event = await asyncio.wait_for(stream.receive(), 2)
        events.append(event)
        if isinstance(event, StreamStopped):
            return events


async def test_stream_turns_messages_into_events(provider: TwilioProvider) -> None:
    channel = FakeChannel(
        [
            CONNECTED,
            START,
            media(2),
            msg("dtmf", 3, dtmf={"track": "inbound_track", "digit": "5"}),
            msg("mark", 4, mark={"name": "utt-7"}),
            msg("stop", 5, stop={"accountSid": ACCOUNT_SID, "callSid": CALL_SID}),
        ]
    )
    stream = provider.open_stream(channel)
    assert isinstance(stream, MediaStream)
    assert stream.stream_id is None
    events = await events_until_stopped(stream)
    assert events == [
        StreamStarted(
            stream_id=STREAM_SID,
            provider_call_id=CALL_SID,
            codec=CodecSpec("PCMU", 8000),
            custom_parameters={"roomId": "room-42", "from": "+14155550100"},
        ),
        AudioIn(AUDIO),
        DtmfIn("5"),
        MarkEcho("utt-7"),
        StreamStopped("stop"),
    ]
    assert stream.malformed == 0
    assert (stream.stream_id, stream.provider_call_id) == (STREAM_SID, CALL_SID)
    assert await stream.receive() == StreamStopped("stop")
    assert await stream.receive() == StreamStopped("stop")


async def test_socket_close_stops_the_stream() -> None:
    stream = TwilioMediaStream(FakeChannel([CONNECTED, START, None]))
    assert isinstance(await stream.receive(), StreamStarted)
    assert await stream.receive() == StreamStopped("closed")
    assert await stream.receive() == StreamStopped("closed")


async def test_malformed_messages_are_counted_and_skipped() -> None:
    bad = [
        media(1),  # before start
        msg("dtmf", 1, dtmf={"digit": "1"}),  # before start
        CONNECTED,
        START,
        "{not json",
        "[1, 2, 3]",
        json.dumps({"no": "event"}),
        json.dumps({"event": 7}),
        b"\x00\x01binary",
        media(2, payload="!!not base64!!"),
        media(3, payload=""),
        msg("media", 4, media={"track": "inbound"}),
        msg("media", 5),
        msg("dtmf", 6, dtmf={"digit": "55"}),
        msg("dtmf", 6, dtmf={"digit": ["5"]}),
        msg("mark", 7, mark={}),
        json.dumps({"event": "media", "streamSid": "MZother", "media": {"payload": "AAAA"}}),
        START,  # a second start
        "x" * 70_000,
        msg("media", 8, media={"payload": "A" * 70_000}),
    ]
    good = [media(9), msg("dtmf", 10, dtmf={"track": "inbound_track", "digit": "#"}), None]
    stream = TwilioMediaStream(FakeChannel([*bad, *good]))
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, DtmfIn, StreamStopped]
    assert events[1] == AudioIn(AUDIO)
    assert events[2] == DtmfIn("#")
    assert stream.malformed == len(bad) - 2  # CONNECTED and the first START are fine


async def test_unknown_events_and_other_tracks_are_ignored_not_malformed() -> None:
    messages = [
        START,
        msg("stream-error", 2, error={"code": 1}),
        media(3, track="outbound"),
        media(4),
        None,
    ]
    stream = TwilioMediaStream(FakeChannel(messages))
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, StreamStopped]
    assert (stream.malformed, stream.ignored) == (0, 2)


async def test_outbound_messages_have_twilio_shape() -> None:
    channel = FakeChannel([CONNECTED, START])
    stream = TwilioMediaStream(channel)
    await stream.receive()
    await stream.send_audio(AUDIO)
    await stream.send_mark("utt-1")
    await stream.send_clear()
    sent = [json.loads(text) for text in channel.sent]
    assert sent == [
        {
            "event": "media",
            "streamSid": STREAM_SID,
            "media": {"payload": base64.b64encode(AUDIO).decode()},
        },
        {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "utt-1"}},
        {"event": "clear", "streamSid": STREAM_SID},
    ]
    assert all(" " not in text for text in channel.sent)  # compact JSON


async def test_marks_pending_at_a_clear_echo_as_cleared() -> None:
    channel = FakeChannel([START])
    stream = TwilioMediaStream(channel)
    await stream.receive()
    await stream.send_mark("played")
    channel.incoming.put_nowait(msg("mark", 2, mark={"name": "played"}))
    assert await stream.receive() == MarkEcho("played", cleared=False)
    await stream.send_mark("flushed")
    await stream.send_clear()
    await stream.send_mark("after")
    channel.incoming.put_nowait(msg("mark", 3, mark={"name": "flushed"}))
    channel.incoming.put_nowait(msg("mark", 4, mark={"name": "after"}))
    assert await stream.receive() == MarkEcho("flushed", cleared=True)
    assert await stream.receive() == MarkEcho("after", cleared=False)


async def test_sending_before_start_raises() -> None:
    channel = FakeChannel([])
    stream = TwilioMediaStream(channel)
    with pytest.raises(RuntimeError):
        await stream.send_audio(AUDIO)
    with pytest.raises(RuntimeError):
        await stream.send_mark("m")
    with pytest.raises(RuntimeError):
        await stream.send_clear()
    assert channel.sent == []


async def test_close_is_idempotent() -> None:
    channel = FakeChannel([])
    stream = TwilioMediaStream(channel)
    await stream.close()
    await stream.close()
    assert channel.closed == 1
