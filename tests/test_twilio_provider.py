"""The Twilio provider: voice webhook, TwiML, the media-socket adapter over a fake socket,
``X-Twilio-Signature`` checks (PROTOCOLS vectors and the official SDK) and the REST hang-up."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest
from twilio.request_validator import RequestValidator

from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    DtmfIn,
    HangupResult,
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
from callbridge_plugins.providers.twilio import TwilioConfig, TwilioMediaStream, TwilioProvider
from tests.channels import (
    TextChannel,
    check_marks_pending_at_a_clear_echo_as_cleared,
    events_until_stopped,
)
from tests.fake_provider_api import FakeProviderApi
from tests.servers import free_port

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
    markup = provider.answer_markup(
        call, url, Route(room_id="room-42", strategy="test"), StreamOptions()
    )
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
    markup = provider.answer_markup(
        call, f"{INGEST}/twilio/r", Route(tricky, "test"), StreamOptions()
    )
    assert tricky not in markup.body  # raw, it would break the XML
    parameters = {p.attrib["name"]: p.attrib["value"] for p in parse_stream(markup.body)}
    assert parameters == {"callId": CALL_SID, "roomId": tricky, "from": tricky}


def test_answer_markup_ignores_codec_and_names_the_stream(tmp_path: Path) -> None:
    context = PluginContext(tmp_path, time.time, "https://cb.example.com", INGEST)
    named = TwilioProvider(TwilioConfig(stream_name="callbridge"), context)
    route = Route("room-1", "test", codec=CodecSpec("L16", 16000))
    options = StreamOptions(codec=CodecSpec("L16", 16000))
    markup = named.answer_markup(CallInfo("twilio", CALL_SID), f"{INGEST}/twilio/r", route, options)
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


def msg(event: str, sequence: int | None = None, **body: object) -> str:
    message: dict[str, object] = {"event": event}
    if sequence is not None:
        message["sequenceNumber"] = str(sequence)
        message["streamSid"] = STREAM_SID
    message.update(body)
    return json.dumps(message)


def mark_echo(sequence: int, name: str) -> str:
    return msg("mark", sequence, mark={"name": name})


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


async def test_stream_turns_messages_into_events(provider: TwilioProvider) -> None:
    channel = TextChannel(
        [
            CONNECTED,
            START,
            media(2),
            msg("dtmf", 3, dtmf={"track": "inbound_track", "digit": "5"}),
            msg("mark", 4, mark={"name": "utt-7"}),
            msg("stop", 5, stop={"accountSid": ACCOUNT_SID, "callSid": CALL_SID}),
        ]
    )
    stream = provider.open_stream(channel, StreamOptions())
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
        AudioIn(AUDIO, sequence=1),  # media.chunk
        DtmfIn("5"),
        MarkEcho("utt-7"),
        StreamStopped("stop"),
    ]
    assert stream.malformed == 0
    assert (stream.stream_id, stream.provider_call_id) == (STREAM_SID, CALL_SID)
    assert await stream.receive() == StreamStopped("stop")
    assert await stream.receive() == StreamStopped("stop")


async def test_socket_close_stops_the_stream() -> None:
    stream = TwilioMediaStream(TextChannel([CONNECTED, START, None]))
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
    stream = TwilioMediaStream(TextChannel([*bad, *good]))
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, DtmfIn, StreamStopped]
    assert events[1] == AudioIn(AUDIO, sequence=8)
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
    stream = TwilioMediaStream(TextChannel(messages))
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, StreamStopped]
    assert (stream.malformed, stream.ignored) == (0, 2)


async def test_outbound_messages_have_twilio_shape() -> None:
    channel = TextChannel([CONNECTED, START])
    stream = TwilioMediaStream(channel)
    await stream.receive()
    stream.send_audio(AUDIO)
    stream.send_mark("utt-1")
    stream.send_clear()
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
    channel = TextChannel([START])
    stream = TwilioMediaStream(channel)
    await stream.receive()
    await check_marks_pending_at_a_clear_echo_as_cleared(stream, channel, mark_echo)


async def test_sending_before_start_raises() -> None:
    channel = TextChannel([])
    stream = TwilioMediaStream(channel)
    with pytest.raises(RuntimeError):
        stream.send_audio(AUDIO)
    with pytest.raises(RuntimeError):
        stream.send_mark("m")
    with pytest.raises(RuntimeError):
        stream.send_clear()
    assert channel.sent == []


async def test_close_is_idempotent() -> None:
    channel = TextChannel([])
    stream = TwilioMediaStream(channel)
    await stream.close()
    await stream.close()
    assert channel.closed == 1


# --------------------------------------------------------------------------- signatures

TOKEN = "test_auth_token"
CREDENTIALS = ProviderCredentials({"accountSid": ACCOUNT_SID, "authToken": TOKEN})
VOICE_URL = "https://connector.example.com/twilio/voice"
MEDIA_URL = "wss://connector.example.com/twilio/media/abc123"
OUR_VECTOR_FORM = {
    "AccountSid": ACCOUNT_SID,
    "ApiVersion": "2010-04-01",
    "CallSid": CALL_SID,
    "CallStatus": "ringing",
    "Direction": "inbound",
    "From": "+14155550100",
    "To": "+14155550199",
}


class FormLists(dict[str, list[str]]):
    """Repeated form values in the shape the official validator reads (Django's getlist)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def sdk_signature(
    url: str, params: dict[str, str] | FormLists | None = None, token: str = TOKEN
) -> str:
    signature: str = RequestValidator(token).compute_signature(url, params or {})
    return signature


def signed_post(
    url: str,
    form: list[tuple[str, str]] | dict[str, str],
    signature: str | None,
    content_type: str = "application/x-www-form-urlencoded",
    body: bytes | None = None,
) -> WebhookRequest:
    """A POST webhook as the HTTP layer builds it: the raw body, params parsed from it."""
    raw = urlencode(form).encode() if body is None else body
    headers = {"content-type": content_type}
    if signature is not None:
        headers["x-twilio-signature"] = signature
    return WebhookRequest(
        method="POST",
        public_url=url,
        headers=headers,
        params=parse_qs(raw.decode(), keep_blank_values=True),
        body=raw,
    )


def signed_get(url: str, signature: str | None) -> WebhookRequest:
    headers = {} if signature is None else {"x-twilio-signature": signature}
    query = url.partition("?")[2]
    return WebhookRequest("GET", url, headers, parse_qs(query, keep_blank_values=True), b"")


def refused(action: Callable[[], None]) -> str:
    with pytest.raises(WebhookError) as caught:
        action()
    assert caught.value.status == 403
    return str(caught.value)


def test_webhook_signature_accepts_the_twilio_docs_vector(provider: TwilioProvider) -> None:
    form = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    request = signed_post(
        "https://example.com/myapp.php?foo=1&bar=2", form, "L/OH5YylLD5NRKLltdqwSvS0BnU="
    )
    provider.verify_webhook(request, ProviderCredentials({"authToken": "12345"}))


def test_webhook_signature_accepts_our_protocols_vector(provider: TwilioProvider) -> None:
    request = signed_post(VOICE_URL, OUR_VECTOR_FORM, "Rn03MHk/KXGG7W3E9H0J7GlGuMo=")
    provider.verify_webhook(request, CREDENTIALS)


def test_handshake_signature_accepts_the_wss_vector(provider: TwilioProvider) -> None:
    headers = {"x-twilio-signature": "gJ9T+BC8l9P+wvp/m7xjQy5bzLY="}
    provider.verify_handshake(MEDIA_URL, headers, CREDENTIALS)


@pytest.mark.parametrize(
    ("url", "form"),
    [
        (VOICE_URL, OUR_VECTOR_FORM),
        (f"{VOICE_URL}?roomId=room%2042&x=", OUR_VECTOR_FORM),
        (VOICE_URL, {**OUR_VECTOR_FORM, "CallerName": "", "FromCity": "SAN FRANCISCO"}),
        (VOICE_URL, {**OUR_VECTOR_FORM, "StirVerstat": "TN-Validation-Passed-A", "a": "é ü +"}),
        ("http://127.0.0.1:8000/v2/hooks/twilio/whk_x", OUR_VECTOR_FORM),
    ],
)
def test_webhook_signed_by_the_official_sdk_is_accepted(
    provider: TwilioProvider, url: str, form: dict[str, str]
) -> None:
    provider.verify_webhook(signed_post(url, form, sdk_signature(url, form)), CREDENTIALS)


def test_webhook_with_repeated_values_signed_by_the_sdk_is_accepted(
    provider: TwilioProvider,
) -> None:
    pairs = [*OUR_VECTOR_FORM.items(), ("Tag", "b"), ("Tag", "a"), ("Tag", "b")]
    lists = FormLists()
    for name, value in pairs:
        lists.setdefault(name, []).append(value)
    signature = sdk_signature(VOICE_URL, lists)
    provider.verify_webhook(signed_post(VOICE_URL, pairs, signature), CREDENTIALS)
    # The same values in another order on the wire sign the same.
    shuffled = list(reversed(pairs))
    provider.verify_webhook(signed_post(VOICE_URL, shuffled, signature), CREDENTIALS)


def test_get_webhook_signed_by_the_sdk_is_accepted(provider: TwilioProvider) -> None:
    url = f"{VOICE_URL}?{urlencode(OUR_VECTOR_FORM)}"
    provider.verify_webhook(signed_get(url, sdk_signature(url)), CREDENTIALS)
    tampered = url.replace("ringing", "in-progress")
    message = refused(
        lambda: provider.verify_webhook(signed_get(tampered, sdk_signature(url)), CREDENTIALS)
    )
    assert message == "X-Twilio-Signature does not match"


@pytest.mark.parametrize(
    ("signed_url", "public_url"),
    [
        ("https://connector.example.com:443/twilio/voice", VOICE_URL),
        (VOICE_URL, "https://connector.example.com:443/twilio/voice"),
        (
            "http://connector.example.com:80/twilio/voice",
            "http://connector.example.com/twilio/voice",
        ),
        (
            "http://connector.example.com/twilio/voice",
            "http://connector.example.com:80/twilio/voice",
        ),
        # Twilio drops any port from HTTPS voice callbacks before signing.
        (VOICE_URL, "https://connector.example.com:8443/twilio/voice"),
    ],
)
def test_webhook_signature_with_or_without_port_is_accepted(
    provider: TwilioProvider, signed_url: str, public_url: str
) -> None:
    signature = sdk_signature(signed_url, OUR_VECTOR_FORM)
    request = signed_post(public_url, OUR_VECTOR_FORM, signature)
    provider.verify_webhook(request, CREDENTIALS)
    assert RequestValidator(TOKEN).validate(public_url, OUR_VECTOR_FORM, signature)


@pytest.mark.parametrize("signature", [None, ""])
def test_webhook_without_signature_is_refused(
    provider: TwilioProvider, signature: str | None
) -> None:
    request = signed_post(VOICE_URL, OUR_VECTOR_FORM, signature)
    message = refused(lambda: provider.verify_webhook(request, CREDENTIALS))
    assert message == "X-Twilio-Signature is missing"


@pytest.mark.parametrize(
    ("public_url", "form"),
    [
        (VOICE_URL, {**OUR_VECTOR_FORM, "From": "+14155550101"}),  # tampered value
        (VOICE_URL, {**OUR_VECTOR_FORM, "Extra": "1"}),  # added parameter
        (VOICE_URL, {k: v for k, v in OUR_VECTOR_FORM.items() if k != "Direction"}),  # removed
        (VOICE_URL, {**OUR_VECTOR_FORM, "From": " +14155550100"}),  # whitespace is not trimmed
        ("https://evil.example.com/twilio/voice", OUR_VECTOR_FORM),  # host
        ("https://connector.example.com/twilio/voice2", OUR_VECTOR_FORM),  # path
        ("https://connector.example.com/twilio/voice/", OUR_VECTOR_FORM),  # trailing slash
        ("https://connector.example.com/twilio/voice?roomId=r", OUR_VECTOR_FORM),  # query
        ("http://connector.example.com/twilio/voice", OUR_VECTOR_FORM),  # scheme
        ("https://connector.example.com:8443/twilio/voice2", OUR_VECTOR_FORM),  # path + port
    ],
)
def test_tampered_webhook_is_refused(
    provider: TwilioProvider, public_url: str, form: dict[str, str]
) -> None:
    signature = sdk_signature(VOICE_URL, OUR_VECTOR_FORM)
    request = signed_post(public_url, form, signature)
    message = refused(lambda: provider.verify_webhook(request, CREDENTIALS))
    assert message == "X-Twilio-Signature does not match"
    assert not RequestValidator(TOKEN).validate(public_url, form, signature)


def test_webhook_signed_with_another_token_is_refused(provider: TwilioProvider) -> None:
    signature = sdk_signature(VOICE_URL, OUR_VECTOR_FORM, token="another_token")
    request = signed_post(VOICE_URL, OUR_VECTOR_FORM, signature)
    refused(lambda: provider.verify_webhook(request, CREDENTIALS))


def test_json_body_is_checked_against_body_sha256(provider: TwilioProvider) -> None:
    body = b'{"CallSid":"' + CALL_SID.encode() + b'"}'
    url = f"{VOICE_URL}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = sdk_signature(url)
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    request = signed_post(url, {}, signature, "application/json", body)
    provider.verify_webhook(request, CREDENTIALS)

    tampered = signed_post(url, {}, signature, "application/json", body.replace(b"1", b"2"))
    message = refused(lambda: provider.verify_webhook(tampered, CREDENTIALS))
    assert "bodySHA256" in message
    unhashed = signed_post(VOICE_URL, {}, sdk_signature(VOICE_URL), "application/json", body)
    assert "bodySHA256" in refused(lambda: provider.verify_webhook(unhashed, CREDENTIALS))


def test_missing_auth_token_refuses(provider: TwilioProvider) -> None:
    request = signed_post(VOICE_URL, OUR_VECTOR_FORM, "Rn03MHk/KXGG7W3E9H0J7GlGuMo=")
    only_sid = ProviderCredentials({"accountSid": ACCOUNT_SID})
    assert "authToken" in refused(lambda: provider.verify_webhook(request, only_sid))
    headers = {"x-twilio-signature": "gJ9T+BC8l9P+wvp/m7xjQy5bzLY="}
    assert "authToken" in refused(lambda: provider.verify_handshake(MEDIA_URL, headers, only_sid))


def test_handshake_signed_by_the_sdk_and_trailing_slash_variant(provider: TwilioProvider) -> None:
    url = "ws://127.0.0.1:8000/ingest/twilio/r3f_abc"
    for signed in (url, url + "/"):
        headers = {"x-twilio-signature": sdk_signature(signed)}
        provider.verify_handshake(url, headers, CREDENTIALS)
    provider.verify_handshake(
        MEDIA_URL + "/", {"X-Twilio-Signature": sdk_signature(MEDIA_URL)}, CREDENTIALS
    )


@pytest.mark.parametrize(
    "signed_url",
    [
        "https://connector.example.com/twilio/media/abc123",  # https form, not wss
        "wss://evil.example.com/twilio/media/abc123",  # host
        "wss://connector.example.com/twilio/media/abc124",  # path (another ref)
        "wss://connector.example.com/twilio/media/abc123?x=1",  # query
    ],
)
def test_tampered_handshake_is_refused(provider: TwilioProvider, signed_url: str) -> None:
    headers = {"x-twilio-signature": sdk_signature(signed_url)}
    message = refused(lambda: provider.verify_handshake(MEDIA_URL, headers, CREDENTIALS))
    assert message == "X-Twilio-Signature does not match"


def test_handshake_without_signature_is_refused(provider: TwilioProvider) -> None:
    message = refused(lambda: provider.verify_handshake(MEDIA_URL, {}, CREDENTIALS))
    assert message == "X-Twilio-Signature is missing"


# --------------------------------------------------------------------------- REST hang-up


@pytest.fixture
def api_provider(tmp_path: Path, fake_provider_api: FakeProviderApi) -> TwilioProvider:
    context = PluginContext(tmp_path, time.time, "https://cb.example.com", INGEST)
    return TwilioProvider(TwilioConfig(api_base_url=fake_provider_api.base_url + "/"), context)


HANGUP_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"


async def test_hangup_posts_status_completed_with_basic_auth(
    api_provider: TwilioProvider, fake_provider_api: FakeProviderApi
) -> None:
    result = await api_provider.hangup(HangupTarget(CALL_SID, ACCOUNT_SID), CREDENTIALS)
    assert result == HangupResult(ok=True, status=200)
    (request,) = fake_provider_api.requests
    assert (request.method, request.path) == ("POST", HANGUP_PATH)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {"Status": "completed"}
    expected = base64.b64encode(f"{ACCOUNT_SID}:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    await api_provider.aclose()
    await api_provider.aclose()


@pytest.mark.parametrize("body", [{"code": 20404, "message": "not found", "status": 404}, None])
async def test_hangup_of_an_ended_call_is_ok(
    api_provider: TwilioProvider, fake_provider_api: FakeProviderApi, body: object
) -> None:
    fake_provider_api.answer("POST", r"/2010-04-01/.*", 404, body)
    result = await api_provider.hangup(HangupTarget(CALL_SID), CREDENTIALS)
    assert result.ok and result.already_ended and result.status == 404
    await api_provider.aclose()


async def test_hangup_errors_are_reported_without_secrets(
    api_provider: TwilioProvider, fake_provider_api: FakeProviderApi
) -> None:
    body = {"code": 20003, "message": "Authenticate", "status": 401}
    fake_provider_api.answer("POST", r"/2010-04-01/.*", 401, body)
    result = await api_provider.hangup(HangupTarget(CALL_SID), CREDENTIALS)
    assert (result.ok, result.already_ended, result.status) == (False, False, 401)
    assert "20003" in result.detail and "Authenticate" in result.detail
    assert TOKEN not in result.detail

    fake_provider_api.answer("POST", r"/2010-04-01/.*", 500, None)
    result = await api_provider.hangup(HangupTarget(CALL_SID), CREDENTIALS)
    assert (result.ok, result.status, result.detail) == (False, 500, "HTTP 500")
    await api_provider.aclose()


async def test_hangup_uses_the_credentials_account(
    api_provider: TwilioProvider, fake_provider_api: FakeProviderApi
) -> None:
    other = "AC" + "9" * 32
    result = await api_provider.hangup(HangupTarget(CALL_SID, other), CREDENTIALS)
    assert result.ok
    assert [r.path for r in fake_provider_api.requests] == [HANGUP_PATH]
    await api_provider.aclose()


async def test_hangup_without_credentials_sends_nothing(
    api_provider: TwilioProvider, fake_provider_api: FakeProviderApi
) -> None:
    result = await api_provider.hangup(
        HangupTarget(CALL_SID), ProviderCredentials({"authToken": TOKEN})
    )
    assert not result.ok and "accountSid" in result.detail
    assert fake_provider_api.requests == []


async def test_hangup_to_an_unreachable_api_is_not_ok(tmp_path: Path) -> None:
    context = PluginContext(tmp_path, time.time, "https://cb.example.com", INGEST)
    provider = TwilioProvider(TwilioConfig(api_base_url=f"http://127.0.0.1:{free_port()}"), context)
    result = await provider.hangup(HangupTarget(CALL_SID), CREDENTIALS)
    assert (result.ok, result.status) == (False, 0)
    assert result.detail.startswith("request failed")
    await provider.aclose()


def test_config_defaults_to_the_real_api() -> None:
    assert TwilioConfig().api_base_url == "https://api.twilio.com"
