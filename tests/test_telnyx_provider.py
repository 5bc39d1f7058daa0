"""The Telnyx provider: TeXML webhook and markup, Ed25519 signatures, REST hang-up, and the
media-socket adapter (reordering included) over a fake socket."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    DtmfIn,
    HangupTarget,
    MarkEcho,
    MediaStream,
    PluginContext,
    Provider,
    ProviderCredentials,
    Route,
    StreamOptions,
    StreamStarted,
    StreamStopped,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers.telnyx import (
    TelnyxConfig,
    TelnyxMediaStream,
    TelnyxProvider,
)
from tests.channels import (
    TextChannel,
    check_marks_pending_at_a_clear_echo_as_cleared,
    events_until_stopped,
)
from tests.fake_provider_api import FakeProviderApi
from tests.servers import FakeClock

CALL_ID = "v3:u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO"
ACCOUNT = "3e6f995f-85f7-4705-9741-53b116d28237"
STREAM_ID = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
INGEST = "wss://cb.example.com/ingest"
PCMU = CodecSpec("PCMU", 8000)
PCMA = CodecSpec("PCMA", 8000)
NOW = 1_735_689_600


def make_provider(
    tmp_path: Path, clock: FakeClock | None = None, **config: object
) -> TelnyxProvider:
    context = PluginContext(
        data_dir=tmp_path,
        clock=clock or FakeClock(NOW),
        public_api_url="https://cb.example.com",
        public_ingest_url=INGEST,
    )
    return TelnyxProvider(TelnyxConfig.model_validate(config), context)


@pytest.fixture
def provider(tmp_path: Path) -> TelnyxProvider:
    return make_provider(tmp_path)


def webhook(
    params: dict[str, str], method: str = "POST", headers: dict[str, str] | None = None
) -> WebhookRequest:
    body = urlencode(params).encode() if method == "POST" else b""
    url = "https://cb.example.com/v2/hooks/telnyx/whk_x"
    if method == "GET":
        url += "?" + urlencode(params)
    return WebhookRequest(
        method=method,
        public_url=url,
        headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
        params=parse_qs(urlencode(params), keep_blank_values=True),
        body=body,
    )


TEXML_FETCH = {
    "AccountSid": ACCOUNT,
    "ApiVersion": "2010-04-01",
    "CallSid": CALL_ID,
    "CallSidLegacy": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
    "CallStatus": "ringing",
    "ConnectionId": "1684641123236054244",
    "Direction": "inbound",
    "From": "+13122010094",
    "To": "+13122123456",
}


# --------------------------------------------------------------------------- identity and config


def test_provider_satisfies_the_protocol(provider: TelnyxProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "telnyx"
    assert provider.supported_codecs == (PCMU, PCMA)
    assert provider.credential_fields == ("apiKey", "publicKey")
    assert provider.echoes_marks_on_clear is True
    assert provider.markup_styles == ("connect", "start")


def test_yaml_default_style_comes_first(tmp_path: Path) -> None:
    started = make_provider(tmp_path, markup_style="start")
    assert started.markup_styles == ("start", "connect")
    assert started.call_ends_with_stream(StreamOptions()) is False
    assert started.call_ends_with_stream(StreamOptions(markup_style="connect")) is True


def test_call_ends_with_stream_only_in_connect_style(provider: TelnyxProvider) -> None:
    assert provider.call_ends_with_stream(StreamOptions()) is True
    assert provider.call_ends_with_stream(StreamOptions(markup_style="connect")) is True
    assert provider.call_ends_with_stream(StreamOptions(markup_style="start")) is False


def test_config_forbids_unknown_fields_and_documents_every_field() -> None:
    with pytest.raises(ValueError):
        TelnyxConfig.model_validate({"api_key": "x"})
    with pytest.raises(ValueError):
        TelnyxConfig.model_validate({"markup_style": "stream"})
    assert TelnyxConfig().api_base_url == "https://api.telnyx.com"
    for name, info in TelnyxConfig.model_fields.items():
        assert info.description, f"{name} has no description"


# --------------------------------------------------------------------------- webhook


def test_parse_webhook_reads_the_post_form(provider: TelnyxProvider) -> None:
    call = provider.parse_webhook(webhook(TEXML_FETCH))
    assert call.provider == "telnyx"
    assert call.provider_call_id == CALL_ID
    assert call.account_id == ACCOUNT
    assert (call.from_number, call.to_number) == ("+13122010094", "+13122123456")
    assert call.direction == "inbound"
    assert call.extra == {
        "CallSidLegacy": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "CallStatus": "ringing",
        "ConnectionId": "1684641123236054244",
        "ApiVersion": "2010-04-01",
    }


def test_parse_webhook_reads_the_get_query_and_normalises_numbers(
    provider: TelnyxProvider,
) -> None:
    params = {"CallSid": CALL_ID, "From": "13122010094", "To": "sip:bob@example.com"}
    call = provider.parse_webhook(webhook(params, method="GET"))
    assert call.provider_call_id == CALL_ID
    assert call.from_number == "+13122010094"
    assert call.to_number == "sip:bob@example.com"
    assert call.account_id is None and call.direction is None


@pytest.mark.parametrize(
    "params", [{"From": "+13122010094"}, {"CallSid": ""}, {"CallSid": "v3:has space"}]
)
def test_parse_webhook_requires_a_call_sid(
    provider: TelnyxProvider, params: dict[str, str]
) -> None:
    with pytest.raises(WebhookError, match="CallSid") as caught:
        provider.parse_webhook(webhook(params))
    assert caught.value.status == 400


def test_stream_url_carries_the_ref_in_the_path(provider: TelnyxProvider) -> None:
    assert provider.stream_url(INGEST + "/", "r3f_abc-123") == f"{INGEST}/telnyx/r3f_abc-123"


# --------------------------------------------------------------------------- markup


def answer(provider: TelnyxProvider, options: StreamOptions, url: str | None = None) -> ET.Element:
    call = CallInfo("telnyx", CALL_ID, from_number="+13122010094")
    markup = provider.answer_markup(
        call, url or f"{INGEST}/telnyx/ref123", Route("room-42", "test"), options
    )
    assert markup.media_type == "text/xml"
    assert markup.body.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(markup.body)
    assert root.tag == "Response"
    return root


@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_connect_markup_attribute_by_attribute(provider: TelnyxProvider, codec: CodecSpec) -> None:
    root = answer(provider, StreamOptions(codec=codec))
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    assert list(stream) == []
    assert stream.attrib == {
        "url": f"{INGEST}/telnyx/ref123",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": codec.name,
        "bidirectionalSamplingRate": "8000",
        "codec": codec.name,
        "track": "inbound_track",
        "enableReconnect": "false",
    }


@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_start_markup_keeps_the_call_up_with_a_pause(
    provider: TelnyxProvider, codec: CodecSpec
) -> None:
    root = answer(provider, StreamOptions(codec=codec, markup_style="start"))
    start, pause = list(root)
    assert (start.tag, pause.tag) == ("Start", "Pause")
    assert pause.attrib == {"length": "86400"}
    (stream,) = list(start)
    assert stream.tag == "Stream"
    assert stream.attrib == {
        "url": f"{INGEST}/telnyx/ref123",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": codec.name,
        "bidirectionalSamplingRate": "8000",
        "codec": codec.name,
        "track": "inbound_track",
        "enableReconnect": "false",
    }


def test_connector_style_overrides_the_yaml_default(tmp_path: Path) -> None:
    started = make_provider(tmp_path, markup_style="start")
    assert [child.tag for child in answer(started, StreamOptions())] == ["Start", "Pause"]
    assert [c.tag for c in answer(started, StreamOptions(markup_style="connect"))] == ["Connect"]


def test_markup_escapes_the_url_query(provider: TelnyxProvider) -> None:
    url = f"{INGEST}/telnyx/ref123?room=a&b=<c>"
    call = CallInfo("telnyx", CALL_ID)
    body = provider.answer_markup(call, url, Route("r", "t"), StreamOptions()).body
    assert "&amp;" in body and "&lt;c&gt;" in body
    assert ET.fromstring(body).find("Connect/Stream").get("url") == url  # type: ignore[union-attr]


def test_reject_markup_says_and_hangs_up(provider: TelnyxProvider) -> None:
    root = ET.fromstring(provider.reject_markup("No room <here> & now").body)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "No room <here> & now"
    default = ET.fromstring(provider.reject_markup("").body)
    assert default[0].text == TelnyxConfig().reject_message


# --------------------------------------------------------------------------- signatures

VECTOR_PUBLIC_KEY = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="
VECTOR_TIMESTAMP = "1735689600"
VECTOR_BODY = (
    b'{"data":{"event_type":"call.initiated","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"}}'
)
VECTOR_SIGNATURE = (
    "MTLKb3e8GIBfjgNL8QASPpB0x1ZsAu5/nPEBqyNc/yfVfQdaJAh4/6eatgMy39pwvdiITPlOVHRo7zWidP+nAA=="
)


def raw_request(body: bytes, headers: dict[str, str], method: str = "POST") -> WebhookRequest:
    return WebhookRequest(
        method=method,
        public_url="https://cb.example.com/v2/hooks/telnyx/whk_x",
        headers=headers,
        params=parse_qs(body.decode(), keep_blank_values=True),
        body=body,
    )


def keys() -> tuple[Ed25519PrivateKey, ProviderCredentials]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    credentials = {"apiKey": "KEY0123", "publicKey": base64.b64encode(public).decode()}
    return private, ProviderCredentials(credentials)


def signed(private: Ed25519PrivateKey, body: bytes, timestamp: int) -> dict[str, str]:
    signature = private.sign(f"{timestamp}|".encode() + body)
    return {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": str(timestamp),
    }


def test_published_vector_verifies(provider: TelnyxProvider) -> None:
    seed_key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    public = seed_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(public).decode() == VECTOR_PUBLIC_KEY
    credentials = ProviderCredentials({"apiKey": "k", "publicKey": VECTOR_PUBLIC_KEY})
    headers = {"telnyx-signature-ed25519": VECTOR_SIGNATURE, "telnyx-timestamp": VECTOR_TIMESTAMP}
    provider.verify_webhook(raw_request(VECTOR_BODY, headers), credentials)
    with pytest.raises(WebhookError) as caught:
        provider.verify_webhook(raw_request(VECTOR_BODY + b" ", headers), credentials)
    assert caught.value.status == 403


def test_signed_post_and_get_fetches_verify(provider: TelnyxProvider) -> None:
    private, credentials = keys()
    body = urlencode(TEXML_FETCH).encode()
    provider.verify_webhook(raw_request(body, signed(private, body, NOW)), credentials)
    # A GET fetch has no body: only "timestamp|" is signed.
    get = raw_request(b"", signed(private, b"", NOW - 5), method="GET")
    provider.verify_webhook(get, credentials)


def test_tolerance_is_300_seconds_either_way(provider: TelnyxProvider) -> None:
    private, credentials = keys()
    body = urlencode(TEXML_FETCH).encode()
    for timestamp in (NOW - 300, NOW + 300):
        provider.verify_webhook(raw_request(body, signed(private, body, timestamp)), credentials)


def refused(
    provider: TelnyxProvider, request: WebhookRequest, credentials: ProviderCredentials
) -> str:
    with pytest.raises(WebhookError) as caught:
        provider.verify_webhook(request, credentials)
    assert caught.value.status == 403
    return str(caught.value)


def test_tampering_staleness_and_wrong_keys_are_refused(provider: TelnyxProvider) -> None:
    private, credentials = keys()
    body = urlencode(TEXML_FETCH).encode()
    good = signed(private, body, NOW)
    tampered_body = body.replace(b"13122010094", b"13122010095")
    assert "does not match" in refused(provider, raw_request(tampered_body, good), credentials)
    moved = {**good, "telnyx-timestamp": str(NOW + 1)}
    assert "does not match" in refused(provider, raw_request(body, moved), credentials)
    _, other = keys()
    assert "does not match" in refused(provider, raw_request(body, good), other)
    stale = signed(private, body, NOW - 301)
    assert "301 s" in refused(provider, raw_request(body, stale), credentials)
    future = signed(private, body, NOW + 301)
    assert "301 s" in refused(provider, raw_request(body, future), credentials)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"telnyx-timestamp": str(NOW)}, "missing"),
        ({"telnyx-signature-ed25519": "AAAA"}, "missing"),
        ({"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": "soon"}, "Unix seconds"),
        ({"telnyx-signature-ed25519": "%%%", "telnyx-timestamp": str(NOW)}, "64-byte"),
        ({"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": str(NOW)}, "64-byte"),
    ],
)
def test_missing_or_malformed_headers_are_refused(
    provider: TelnyxProvider, headers: dict[str, str], reason: str
) -> None:
    _, credentials = keys()
    assert reason in refused(provider, raw_request(b"CallSid=x", headers), credentials)


@pytest.mark.parametrize("public_key", ["x" * 32, base64.b64encode(b"\x01" * 31).decode(), ""])
def test_an_unusable_public_key_refuses(provider: TelnyxProvider, public_key: str) -> None:
    private, _ = keys()
    credentials = ProviderCredentials({"apiKey": "k", "publicKey": public_key})
    headers = signed(private, b"", NOW)
    assert "publicKey" in refused(provider, raw_request(b"", headers), credentials)


def test_the_provider_clock_decides_staleness(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    provider = make_provider(tmp_path, clock)
    private, credentials = keys()
    request = raw_request(b"", signed(private, b"", NOW))
    provider.verify_webhook(request, credentials)
    clock.advance(301)
    refused(provider, request, credentials)


def test_handshakes_are_not_signed_so_they_are_accepted(provider: TelnyxProvider) -> None:
    _, credentials = keys()
    provider.verify_handshake(f"{INGEST}/telnyx/ref", {}, credentials)


# --------------------------------------------------------------------------- hang-up


async def test_hangup_posts_to_call_control_with_the_bearer_key(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    provider = make_provider(tmp_path, api_base_url=fake_provider_api.base_url)
    credentials = ProviderCredentials({"apiKey": "KEY0123", "publicKey": VECTOR_PUBLIC_KEY})
    try:
        result = await provider.hangup(HangupTarget(CALL_ID, ACCOUNT), credentials)
    finally:
        await provider.aclose()
    assert result.ok and not result.already_ended and result.status == 200
    (request,) = fake_provider_api.requests
    assert (request.method, request.path) == ("POST", f"/v2/calls/{CALL_ID}/actions/hangup")
    assert request.headers["authorization"] == "Bearer KEY0123"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {}


@pytest.mark.parametrize(
    ("status", "body", "ok", "already_ended"),
    [
        (422, {"errors": [{"code": "90018", "title": "Call has already ended"}]}, True, True),
        (422, {"errors": [{"code": 90018, "title": "Call has already ended"}]}, True, True),
        (422, {"errors": [{"code": "90015", "title": "Invalid state"}]}, False, False),
        (401, {"errors": [{"code": "10009", "title": "Authentication failed"}]}, False, False),
        (404, None, False, False),
        (500, "oops", False, False),
    ],
)
async def test_hangup_answers(
    tmp_path: Path,
    fake_provider_api: FakeProviderApi,
    status: int,
    body: object,
    ok: bool,
    already_ended: bool,
) -> None:
    fake_provider_api.answer("POST", r"/v2/calls/.*/actions/hangup", status, body)
    provider = make_provider(tmp_path, api_base_url=fake_provider_api.base_url)
    credentials = ProviderCredentials({"apiKey": "KEY0123", "publicKey": VECTOR_PUBLIC_KEY})
    try:
        result = await provider.hangup(HangupTarget(CALL_ID), credentials)
    finally:
        await provider.aclose()
    assert (result.ok, result.already_ended, result.status) == (ok, already_ended, status)
    assert "KEY0123" not in result.detail


async def test_hangup_never_raises(tmp_path: Path) -> None:
    unreachable = make_provider(tmp_path, api_base_url="http://127.0.0.1:9")
    credentials = ProviderCredentials({"apiKey": "KEY0123", "publicKey": VECTOR_PUBLIC_KEY})
    try:
        failed = await unreachable.hangup(HangupTarget(CALL_ID), credentials)
        missing = await unreachable.hangup(HangupTarget(CALL_ID), ProviderCredentials({}))
    finally:
        await unreachable.aclose()
        await unreachable.aclose()
    assert (failed.ok, failed.status) == (False, 0)
    assert failed.detail.startswith("request failed")
    assert (missing.ok, missing.detail) == (False, "credentials: apiKey is required")


# --------------------------------------------------------------------------- media stream


def msg(event: str, sequence: int | None = None, **body: object) -> str:
    message: dict[str, object] = {"event": event}
    if sequence is not None:
        message["sequence_number"] = str(sequence)
    message["stream_id"] = STREAM_ID
    message.update(body)
    return json.dumps(message)


def mark_echo(sequence: int, name: str) -> str:
    return msg("mark", sequence, mark={"name": name})


CONNECTED = json.dumps({"event": "connected", "version": "1.0.0"})


def start(encoding: str = "PCMU", sequence: int = 1) -> str:
    return msg(
        "start",
        sequence,
        start={
            "user_id": "3e6f995f-85f7-4705-9741-53b116d28237",
            "call_control_id": CALL_ID,
            "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
            "from": "+13122010094",
            "to": "+13122123456",
            "tags": [],
            "client_state": "cm9vbS00Mg==",
            "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1},
        },
    )


def frame(chunk: int) -> bytes:
    return bytes([chunk % 256]) * 160


def media(chunk: int, payload: str | None = None, track: str = "inbound") -> str:
    body = {"track": track, "chunk": str(chunk), "timestamp": str(chunk * 20)}
    body["payload"] = base64.b64encode(frame(chunk)).decode() if payload is None else payload
    return msg("media", chunk + 1, media=body)


STOP = msg("stop", 999, stop={"user_id": "u", "call_control_id": CALL_ID})


def open_stream(
    messages: list[str | bytes | None], options: StreamOptions | None = None
) -> tuple[TelnyxMediaStream, TextChannel]:
    channel = TextChannel(messages)
    return TelnyxMediaStream(channel, options or StreamOptions(), reorder_depth=4), channel


def audio_chunks(events: list[object]) -> list[int]:
    return [event.payload[0] for event in events if isinstance(event, AudioIn)]


async def test_stream_turns_messages_into_events(provider: TelnyxProvider) -> None:
    channel = TextChannel(
        [
            CONNECTED,
            start(),
            *(media(chunk) for chunk in range(1, 6)),
            msg("dtmf", 7, occurred_at="2025-06-05T08:54:19.698408Z", dtmf={"digit": "1"}),
            msg("mark", 8, mark={"name": "utt-7"}),
            STOP,
        ]
    )
    stream = provider.open_stream(channel, StreamOptions())
    assert isinstance(stream, MediaStream)
    events = await events_until_stopped(stream)
    assert events[0] == StreamStarted(
        stream_id=STREAM_ID, provider_call_id=CALL_ID, codec=PCMU, custom_parameters={}
    )
    # The first four frames wait in the reorder buffer until it has seen four.
    assert events[1:] == [
        AudioIn(frame(1), 1),
        AudioIn(frame(2), 2),
        AudioIn(frame(3), 3),
        AudioIn(frame(4), 4),
        AudioIn(frame(5), 5),
        DtmfIn("1"),
        MarkEcho("utt-7"),
        StreamStopped("stop"),
    ]
    assert (stream.malformed, stream.ignored, stream.errors) == (0, 0, 0)
    assert (stream.stream_id, stream.provider_call_id) == (STREAM_ID, CALL_ID)
    assert await stream.receive() == StreamStopped("stop")


async def test_out_of_order_frames_are_restored() -> None:
    order = [2, 1, 3, 4, 6, 5, 7, 9, 8, 10, 12, 11]
    stream, _ = open_stream([CONNECTED, start(), *(media(c) for c in order), STOP])
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == list(range(1, 13))
    assert (stream.reorder.dropped, stream.reorder.missing) == (0, 0)
    # Counted as they arrived, although they are delivered in order: 1, 5, 8 and 11.
    assert [e.sequence for e in events if isinstance(e, AudioIn)] == list(range(1, 13))
    assert (stream.arrivals.reordered, stream.arrivals.lost, stream.arrivals.frames) == (4, 0, 12)


async def test_reorder_falls_back_to_sequence_number() -> None:
    def numbered(sequence: int) -> str:
        payload = base64.b64encode(frame(sequence)).decode()
        return msg("media", sequence, media={"track": "inbound", "payload": payload})

    stream, _ = open_stream([start(), *(numbered(s) for s in [3, 2, 4, 5, 7, 6]), None])
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == [2, 3, 4, 5, 6, 7]
    # sequence_number also counts DTMF and marks: it orders frames but numbers none.
    assert {e.sequence for e in events if isinstance(e, AudioIn)} == {None}
    assert (stream.arrivals.reordered, stream.arrivals.frames) == (0, 6)


async def test_a_lost_frame_is_skipped_and_a_late_one_dropped() -> None:
    order = [1, 2, 3, 4, 6, 7, 8, 9, 5, 10]
    stream, _ = open_stream([start(), *(media(c) for c in order), STOP])
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert (stream.reorder.missing, stream.reorder.dropped) == (1, 1)
    # Frame 5 did arrive, too late for the reorder buffer: reordered, not lost.
    assert (stream.arrivals.reordered, stream.arrivals.lost) == (1, 0)


async def test_frames_held_at_the_end_are_flushed_on_close() -> None:
    stream, _ = open_stream([start(), media(2), media(1), None])
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == [1, 2]
    assert events[-1] == StreamStopped("closed")


async def test_media_before_start_is_kept_for_after_it() -> None:
    stream, _ = open_stream([CONNECTED, media(1), media(2), start(), *map(media, [3, 4, 5]), STOP])
    events = await events_until_stopped(stream)
    assert isinstance(events[0], StreamStarted)
    assert audio_chunks(events) == [1, 2, 3, 4, 5]
    assert stream.malformed == 0


async def test_only_the_inbound_track_reaches_the_room() -> None:
    messages = [start(), *(media(c, track="outbound") for c in range(1, 5))]
    messages += [*(media(c) for c in range(1, 5)), STOP]
    stream, _ = open_stream(messages)
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == [1, 2, 3, 4]
    assert stream.ignored == 4


async def test_error_events_are_counted_and_the_stream_goes_on() -> None:
    error = msg(
        "error",
        payload={"code": 100004, "title": "invalid_media", "detail": "not base64"},
    )
    stream, _ = open_stream([start(), error, error, *map(media, range(1, 5)), STOP])
    events = await events_until_stopped(stream)
    assert audio_chunks(events) == [1, 2, 3, 4]
    assert (stream.errors, stream.malformed) == (2, 0)


async def test_malformed_and_oversized_messages_are_counted_and_skipped() -> None:
    bad: list[str | bytes | None] = [
        msg("mark", 2, mark={"name": "early"}),  # before start
        start(),
        "{not json",
        "[1, 2, 3]",
        json.dumps({"no": "event"}),
        json.dumps({"event": 7}),
        b"\x00\x01binary",
        media(1, payload="!!not base64!!"),
        media(1, payload=""),
        msg("media", 4, media={"track": "inbound"}),
        msg("media", 5),
        msg("media", media={"track": "inbound", "payload": "AAAA"}),  # no counters
        msg("media", media={"chunk": "x1", "payload": "AAAA"}),  # bad chunk, no fallback
        msg("dtmf", 6, dtmf={"digit": "55"}),
        msg("dtmf", 6, dtmf={"digit": ["5"]}),
        msg("mark", 7, mark={}),
        json.dumps({"event": "media", "stream_id": "other", "media": {"chunk": "1"}}),
        start(),  # a second start
        "x" * 70_000,
        msg("media", 8, media={"chunk": "9", "payload": "A" * 70_000}),
    ]
    good: list[str | bytes | None] = [
        *map(media, range(1, 5)),
        msg("dtmf", 10, dtmf={"digit": "#"}),
        None,
    ]
    stream, _ = open_stream([*bad, *good])
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted] + [AudioIn] * 4 + [
        DtmfIn,
        StreamStopped,
    ]
    assert stream.malformed == len(bad) - 1  # the first start is fine


async def test_unknown_events_are_ignored() -> None:
    stream, _ = open_stream([start(), msg("stream-status", 2, status={}), None])
    await events_until_stopped(stream)
    assert (stream.malformed, stream.ignored) == (0, 1)


@pytest.mark.parametrize(
    ("encoding", "requested", "expected"),
    [("PCMU", PCMU, PCMU), ("PCMA", PCMA, PCMA), ("PCMA", PCMU, PCMA), ("OPUS", PCMA, PCMA)],
)
async def test_media_format_decides_the_codec(
    encoding: str, requested: CodecSpec, expected: CodecSpec
) -> None:
    stream, _ = open_stream([start(encoding)], StreamOptions(codec=requested))
    started = await stream.receive()
    assert isinstance(started, StreamStarted) and started.codec == expected
    assert stream.codec == expected


async def test_start_without_media_format_uses_the_requested_codec() -> None:
    message = json.dumps(
        {"event": "start", "stream_id": STREAM_ID, "start": {"call_control_id": CALL_ID}}
    )
    stream, _ = open_stream([message], StreamOptions(codec=PCMA))
    started = await stream.receive()
    assert isinstance(started, StreamStarted) and started.codec == PCMA


async def test_outbound_messages_have_telnyx_shape() -> None:
    stream, channel = open_stream([CONNECTED, start()])
    await stream.receive()
    stream.send_audio(frame(7))
    stream.send_mark("utt-1")
    stream.send_clear()
    assert [json.loads(text) for text in channel.sent] == [
        {"event": "media", "media": {"payload": base64.b64encode(frame(7)).decode()}},
        {"event": "mark", "mark": {"name": "utt-1"}},
        {"event": "clear"},
    ]
    assert all(" " not in text for text in channel.sent)  # compact JSON


async def test_marks_pending_at_a_clear_echo_as_cleared() -> None:
    stream, channel = open_stream([start()])
    await stream.receive()
    await check_marks_pending_at_a_clear_echo_as_cleared(stream, channel, mark_echo)


async def test_close_is_idempotent() -> None:
    stream, channel = open_stream([])
    await stream.close()
    await stream.close()
    assert channel.closed == 1
