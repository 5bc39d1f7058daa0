"""The Plivo provider: answer-URL request, Plivo XML, V3 signatures, the media-socket adapter
over a fake socket, and the REST hang-up against the fake provider API."""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

from callbridge.protocols import (
    AudioIn,
    CallInfo,
    ClearDone,
    CodecSpec,
    DtmfIn,
    HangupTarget,
    MarkEcho,
    MediaStream,
    PluginContext,
    PluginError,
    Provider,
    ProviderCredentials,
    Route,
    StreamOptions,
    StreamStarted,
    StreamStopped,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers.plivo import (
    NonceCache,
    PlivoConfig,
    PlivoMediaStream,
    PlivoProvider,
    v3_signature,
    v3_signing_string,
)
from tests.fake_provider_api import FakeProviderApi
from tests.servers import FakeClock

CALL_UUID = "11111111-2222-3333-4444-555555555555"
STREAM_ID = "b1d0e6f2-7a3c-4c55-8e21-6f9a0b3c2d10"
INGEST = "wss://cb.example.com/ingest"
HOOK_URL = "https://cb.example.com/v2/hooks/plivo/whk_x"
TOKEN = "MY_AUTH_TOKEN"
NONCE = "05429567804466091622"
CREDENTIALS = ProviderCredentials({"authId": "MAXXXXXXXXXXXXXXXXXX", "authToken": TOKEN})
VECTOR_PARAMS = {
    "CallUUID": CALL_UUID,
    "Direction": "inbound",
    "From": "14155550100",
    "To": "14155550101",
}
PCMU = CodecSpec("PCMU", 8000)
L16_8K = CodecSpec("L16", 8000)
L16_16K = CodecSpec("L16", 16000)


def make_provider(tmp_path: Path, clock: Any = time.time, **config: Any) -> PlivoProvider:
    context = PluginContext(
        data_dir=tmp_path,
        clock=clock,
        public_api_url="https://cb.example.com",
        public_ingest_url=INGEST,
    )
    return PlivoProvider(PlivoConfig(**config), context)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def provider(tmp_path: Path, clock: FakeClock) -> PlivoProvider:
    return make_provider(tmp_path, clock)


def post_request(
    params: dict[str, str], url: str = HOOK_URL, headers: dict[str, str] | None = None
) -> WebhookRequest:
    body = urlencode(params)
    merged = parse_qs(url.partition("?")[2], keep_blank_values=True)
    for name, values in parse_qs(body, keep_blank_values=True).items():
        merged.setdefault(name, []).extend(values)
    return WebhookRequest(
        method="POST",
        public_url=url,
        headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
        params=merged,
        body=body.encode(),
    )


def get_request(
    params: dict[str, str], url: str = HOOK_URL, headers: dict[str, str] | None = None
) -> WebhookRequest:
    full = url + ("&" if "?" in url else "?") + urlencode(params) if params else url
    return WebhookRequest(
        method="GET",
        public_url=full,
        headers=headers or {},
        params=parse_qs(full.partition("?")[2], keep_blank_values=True),
        body=b"",
    )


def sdk_headers(
    method: str, url: str, params: dict[str, str], nonce: str = NONCE
) -> dict[str, str]:
    """Signature headers made with the official plivo SDK's own functions."""
    if method == "GET":
        signed = construct_get_url(url, dict(params)).decode()
    else:
        signed = construct_post_url(url, dict(params)).decode()
    signature = get_signature_v3(TOKEN.encode(), signed, nonce.encode()).decode()
    return {"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": nonce}


# --------------------------------------------------------------------------- webhook


def test_provider_satisfies_the_protocol(provider: PlivoProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "plivo"
    assert provider.supported_codecs == (PCMU, L16_8K, L16_16K)
    assert provider.markup_styles == ()
    assert provider.credential_fields == ("authId", "authToken")
    assert provider.echoes_marks_on_clear is False
    assert all(provider.call_ends_with_stream(StreamOptions(c)) for c in provider.supported_codecs)


def test_parse_webhook_reads_the_form_and_normalises_numbers(provider: PlivoProvider) -> None:
    params = {**VECTOR_PARAMS, "CallStatus": "ringing", "ForwardedFrom": "14155550999"}
    call = provider.parse_webhook(post_request(params))
    assert call == CallInfo(
        provider="plivo",
        provider_call_id=CALL_UUID,
        from_number="+14155550100",
        to_number="+14155550101",
        direction="inbound",
        account_id=None,
        extra={"CallStatus": "ringing", "ForwardedFrom": "14155550999"},
    )


def test_parse_webhook_by_get_keeps_plus_and_sip_uris(provider: PlivoProvider) -> None:
    params = {"CallUUID": CALL_UUID, "From": "sip:alice@phone.plivo.com", "To": "+14155550101"}
    call = provider.parse_webhook(get_request(params))
    assert (call.from_number, call.to_number) == ("sip:alice@phone.plivo.com", "+14155550101")
    assert call.direction is None


@pytest.mark.parametrize(
    "params",
    [
        {"From": "14155550100"},
        {"CallUUID": ""},
        {"CallUUID": "not-a-uuid"},
        {"CallUUID": CALL_UUID[:-1]},
        {"CallUUID": CALL_UUID.replace("-", "")},
        {"CallUUID": CALL_UUID + "0"},
        {"CallUUID": "11111111-2222-3333-4444555555555555-"},
    ],
)
def test_parse_webhook_rejects_missing_or_malformed_call_uuid(
    provider: PlivoProvider, params: dict[str, str]
) -> None:
    with pytest.raises(WebhookError, match="CallUUID") as caught:
        provider.parse_webhook(post_request(params))
    assert caught.value.status == 400


def test_stream_url_carries_the_ref_in_the_path(provider: PlivoProvider) -> None:
    assert provider.stream_url(INGEST + "/", "r3f_abc-123") == f"{INGEST}/plivo/r3f_abc-123"


# --------------------------------------------------------------------------- markup


@pytest.mark.parametrize(
    ("codec", "content_type"),
    [
        (PCMU, "audio/x-mulaw;rate=8000"),
        (L16_8K, "audio/x-l16;rate=8000"),
        (L16_16K, "audio/x-l16;rate=16000"),
    ],
)
def test_answer_markup_opens_a_bidirectional_stream(
    provider: PlivoProvider, codec: CodecSpec, content_type: str
) -> None:
    call = CallInfo("plivo", CALL_UUID)
    url = provider.stream_url(INGEST, "ref123")
    markup = provider.answer_markup(call, url, Route("room-42", "test"), StreamOptions(codec))
    assert markup.media_type == "application/xml"
    assert markup.body == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Stream bidirectional="true" '
        f'audioTrack="inbound" keepCallAlive="true" contentType="{content_type}">'
        f"{INGEST}/plivo/ref123</Stream></Response>"
    )
    root = ET.fromstring(markup.body)
    assert root.tag == "Response"
    (stream,) = list(root)
    assert stream.tag == "Stream"
    assert stream.attrib == {
        "bidirectional": "true",
        "audioTrack": "inbound",
        "keepCallAlive": "true",
        "contentType": content_type,
    }
    assert stream.text == url
    assert list(stream) == []


def test_answer_markup_escapes_the_url_text(provider: PlivoProvider) -> None:
    url = "wss://cb.example.com/ingest/plivo/ref?a=1&b=<2>"
    markup = provider.answer_markup(
        CallInfo("plivo", CALL_UUID), url, Route("r", "t"), StreamOptions()
    )
    assert ">wss://cb.example.com/ingest/plivo/ref?a=1&amp;b=&lt;2&gt;</Stream>" in markup.body
    assert ET.fromstring(markup.body).find("Stream").text == url  # type: ignore[union-attr]


def test_answer_markup_refuses_a_codec_plivo_cannot_stream(provider: PlivoProvider) -> None:
    with pytest.raises(PluginError, match="PCMA"):
        provider.answer_markup(
            CallInfo("plivo", CALL_UUID),
            "wss://x/y",
            Route("r", "t"),
            StreamOptions(CodecSpec("PCMA", 8000)),
        )


def test_reject_markup_speaks_then_hangs_up(provider: PlivoProvider) -> None:
    markup = provider.reject_markup("No room & no luck")
    assert markup.body == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Speak>No room &amp; no luck</Speak><Hangup /></Response>"
    )
    default = ET.fromstring(provider.reject_markup("").body)
    assert default.findtext("Speak") == "Sorry, this call cannot be connected."


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    ("method", "url", "params", "signed", "signature"),
    [
        (
            "POST",
            "https://example.com/answer",
            VECTOR_PARAMS,
            "https://example.com/answer?CallUUID11111111-2222-3333-4444-555555555555"
            "DirectioninboundFrom14155550100To14155550101",
            "X4lpzZ+5yWvpBzUm8ROZ43iL3oSRkawk37PiAqnmIkM=",
        ),
        (
            "POST",
            "https://example.com/answer?foo=bar&a=1",
            VECTOR_PARAMS,
            "https://example.com/answer?a=1&foo=bar.CallUUID11111111-2222-3333-4444-555555555555"
            "DirectioninboundFrom14155550100To14155550101",
            "WQ1RyPjS/Fx44YHmr8dLeh+a0CG4cNbZ5LmSRGABXDk=",
        ),
        (
            "GET",
            "https://example.com/answer?" + urlencode(VECTOR_PARAMS),
            {},
            "https://example.com/answer?CallUUID=11111111-2222-3333-4444-555555555555"
            "&Direction=inbound&From=14155550100&To=14155550101",
            "Fv+bnTc6TveLE7lql4UfYt5BJRsg55hIRLhdoxsDqqk=",
        ),
        (
            "GET",
            "wss://example.com/stream",
            {},
            "wss://example.com/stream",
            "0TU1k1HQtIxNOYi8KCDsqqahMdoABz1eUCzVJUmO+gI=",
        ),
    ],
)
def test_published_v3_vectors(
    method: str, url: str, params: dict[str, str], signed: str, signature: str
) -> None:
    text = v3_signing_string(method, url, {k: [v] for k, v in params.items()})
    assert text == signed
    assert v3_signature(TOKEN, text, NONCE) == signature


def test_signing_string_edge_cases_match_the_sdk() -> None:
    cases = [
        ("POST", "https://e.com/a?x=1", {}),
        ("POST", "https://e.com/a", {}),
        ("POST", "https://e.com:8443/a?b=2&b=1&c=", {"z": "a b", "y": "%41"}),
        ("GET", "https://e.com/a?q=%20space&q=+plus", {}),
    ]
    for method, url, params in cases:
        if method == "GET":
            expected = construct_get_url(url, {}).decode()
        else:
            expected = construct_post_url(url, dict(params)).decode()
        ours = v3_signing_string(method, url, {k: [v] for k, v in params.items()})
        assert ours == expected, (method, url, params)


def test_sdk_signed_post_is_accepted(provider: PlivoProvider) -> None:
    url = HOOK_URL + "?roomId=r-1"
    request = post_request(VECTOR_PARAMS, url, sdk_headers("POST", url, VECTOR_PARAMS))
    provider.verify_webhook(request, CREDENTIALS)


def test_sdk_signed_get_is_accepted(provider: PlivoProvider) -> None:
    full = HOOK_URL + "?" + urlencode(VECTOR_PARAMS)
    provider.verify_webhook(get_request({}, full, sdk_headers("GET", full, {})), CREDENTIALS)


def test_one_of_several_comma_separated_signatures_suffices(provider: PlivoProvider) -> None:
    headers = sdk_headers("POST", HOOK_URL, VECTOR_PARAMS)
    headers["x-plivo-signature-v3"] = "AAAA," + headers["x-plivo-signature-v3"]
    provider.verify_webhook(post_request(VECTOR_PARAMS, headers=headers), CREDENTIALS)


def test_main_account_signature_is_accepted(provider: PlivoProvider) -> None:
    headers = sdk_headers("POST", HOOK_URL, VECTOR_PARAMS)
    headers["x-plivo-signature-ma-v3"] = headers["x-plivo-signature-v3"]
    headers["x-plivo-signature-v3"] = "c29tZXRoaW5nIGVsc2U="
    provider.verify_webhook(post_request(VECTOR_PARAMS, headers=headers), CREDENTIALS)


def tampered_requests() -> dict[str, WebhookRequest]:
    headers = sdk_headers("POST", HOOK_URL, VECTOR_PARAMS)
    get_url = HOOK_URL + "?" + urlencode(VECTOR_PARAMS)
    get_headers = sdk_headers("GET", get_url, {})
    return {
        "body": post_request({**VECTOR_PARAMS, "From": "14155550999"}, headers=headers),
        "extra body field": post_request({**VECTOR_PARAMS, "X": "1"}, headers=headers),
        "url": post_request(VECTOR_PARAMS, HOOK_URL + "?roomId=evil", headers),
        "host": post_request(VECTOR_PARAMS, HOOK_URL.replace("cb.", "cc."), headers),
        "nonce": post_request(
            VECTOR_PARAMS, headers={**headers, "x-plivo-signature-v3-nonce": "1" + NONCE}
        ),
        "get query": get_request({}, get_url.replace("inbound", "outbound"), get_headers),
        "no signature": post_request(VECTOR_PARAMS),
        "no nonce": post_request(
            VECTOR_PARAMS, headers={"x-plivo-signature-v3": headers["x-plivo-signature-v3"]}
        ),
        "garbage": post_request(VECTOR_PARAMS, headers={**headers, "x-plivo-signature-v3": "%%%"}),
    }


@pytest.mark.parametrize("case", list(tampered_requests()))
def test_tampered_or_unsigned_requests_are_refused(provider: PlivoProvider, case: str) -> None:
    with pytest.raises(WebhookError) as caught:
        provider.verify_webhook(tampered_requests()[case], CREDENTIALS)
    assert caught.value.status == 403


def test_wrong_token_or_missing_credentials_are_refused(provider: PlivoProvider) -> None:
    request = post_request(VECTOR_PARAMS, headers=sdk_headers("POST", HOOK_URL, VECTOR_PARAMS))
    for credentials in (
        ProviderCredentials({"authId": "MA1", "authToken": "other"}),
        ProviderCredentials({"authId": "MA1"}),
    ):
        with pytest.raises(WebhookError) as caught:
            provider.verify_webhook(request, credentials)
        assert caught.value.status == 403


def test_replayed_nonce_is_refused_until_it_expires(
    provider: PlivoProvider, clock: FakeClock
) -> None:
    request = post_request(VECTOR_PARAMS, headers=sdk_headers("POST", HOOK_URL, VECTOR_PARAMS))
    provider.verify_webhook(request, CREDENTIALS)
    with pytest.raises(WebhookError, match="nonce replayed") as caught:
        provider.verify_webhook(request, CREDENTIALS)
    assert caught.value.status == 403
    clock.advance(599)
    with pytest.raises(WebhookError, match="nonce replayed"):
        provider.verify_webhook(request, CREDENTIALS)
    clock.advance(2)
    provider.verify_webhook(request, CREDENTIALS)


def test_a_refused_request_does_not_burn_its_nonce(provider: PlivoProvider) -> None:
    good = sdk_headers("POST", HOOK_URL, VECTOR_PARAMS)
    forged = post_request({**VECTOR_PARAMS, "To": "1"}, headers=good)
    with pytest.raises(WebhookError, match="does not match"):
        provider.verify_webhook(forged, CREDENTIALS)
    provider.verify_webhook(post_request(VECTOR_PARAMS, headers=good), CREDENTIALS)


def test_nonce_cache_is_bounded(clock: FakeClock) -> None:
    cache = NonceCache(clock, ttl=600, size=3)
    for nonce in "abcd":
        cache.remember(nonce)
    assert [cache.seen(n) for n in "abcd"] == [False, True, True, True]


def test_handshake_is_verified_over_the_https_form(provider: PlivoProvider) -> None:
    public = "wss://cb.example.com/ingest/plivo/REF"
    headers = sdk_headers("GET", "https://cb.example.com/ingest/plivo/REF", {})
    provider.verify_handshake(public, headers, CREDENTIALS)
    with pytest.raises(WebhookError, match="nonce replayed"):
        provider.verify_handshake(public, headers, CREDENTIALS)
    local = sdk_headers("GET", "http://127.0.0.1:8000/ingest/plivo/REF", {}, nonce="7")
    provider.verify_handshake("ws://127.0.0.1:8000/ingest/plivo/REF", local, CREDENTIALS)


def test_handshake_signed_over_the_wss_form_is_also_accepted(provider: PlivoProvider) -> None:
    public = "wss://cb.example.com/ingest/plivo/REF"
    signature = v3_signature(TOKEN, v3_signing_string("GET", public), "42")
    assert v3_signing_string("GET", public) == public
    headers = {"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": "42"}
    provider.verify_handshake(public, headers, CREDENTIALS)


@pytest.mark.parametrize(
    "signed_url",
    ["https://cb.example.com/ingest/plivo/OTHER", "https://evil.example.com/ingest/plivo/REF"],
)
def test_handshake_for_another_url_is_refused(provider: PlivoProvider, signed_url: str) -> None:
    with pytest.raises(WebhookError) as caught:
        provider.verify_handshake(
            "wss://cb.example.com/ingest/plivo/REF",
            sdk_headers("GET", signed_url, {}),
            CREDENTIALS,
        )
    assert caught.value.status == 403
    with pytest.raises(WebhookError):
        provider.verify_handshake("wss://cb.example.com/ingest/plivo/REF", {}, CREDENTIALS)


# --------------------------------------------------------------------------- media socket


class FakeChannel:
    """Hands out scripted messages, then ``None`` (closed); records what is sent."""

    def __init__(self, messages: list[str | bytes] | None = None) -> None:
        self.incoming: list[str | bytes] = list(messages or [])
        self.sent: list[dict[str, Any]] = []
        self.closed = 0

    async def receive(self) -> str | bytes | None:
        return self.incoming.pop(0) if self.incoming else None

    def send_text(self, data: str, droppable: bool = False) -> None:
        self.sent.append(json.loads(data))

    def send_bytes(self, data: bytes, droppable: bool = False) -> None:
        raise AssertionError("Plivo takes text only")

    def drop_pending(self) -> int:
        return 0

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed += 1


def start(encoding: str = "audio/x-mulaw", rate: int = 8000, **extra: Any) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": 1,
            "start": {
                "callId": CALL_UUID,
                "streamId": STREAM_ID,
                "accountId": "MAXXXXXXXXXXXXXXXXXX",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": encoding, "sampleRate": rate},
            },
            **extra,
        }
    )


def media(
    audio: bytes, seq: int = 2, chunk: int = 1, stream_id: str = STREAM_ID, **fields: Any
) -> str:
    body = {"track": "inbound", "timestamp": "1735689600020", "chunk": chunk}
    body["payload"] = base64.b64encode(audio).decode()
    body.update(fields)
    message = {"event": "media", "sequenceNumber": seq, "streamId": stream_id, "media": body}
    return json.dumps(message)


def plain(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, "sequenceNumber": 9, "streamId": STREAM_ID, **fields})


async def drain(stream: PlivoMediaStream) -> list[Any]:
    events = []
    while not isinstance(event := await stream.receive(), StreamStopped):
        events.append(event)
    events.append(event)
    return events


async def test_stream_yields_start_media_dtmf_marks_and_clear_then_closed() -> None:
    channel = FakeChannel(
        [
            start(extra_headers="room=room42;userId=7"),
            media(b"\xff" * 160),
            plain("dtmf", dtmf={"track": "inbound", "digit": "5", "timestamp": "1"}),
            plain("playedStream", name="utt-7"),
            plain("played", name="legacy"),
            plain("clearedAudio"),
        ]
    )
    stream = PlivoMediaStream(channel, PCMU)
    assert isinstance(stream, MediaStream)
    events = await drain(stream)
    assert events == [
        StreamStarted(STREAM_ID, CALL_UUID, PCMU, {"room": "room42", "userId": "7"}),
        AudioIn(b"\xff" * 160, sequence=1),  # media.chunk
        DtmfIn("5"),
        MarkEcho("utt-7"),
        MarkEcho("legacy"),
        ClearDone(),
        StreamStopped("closed"),
    ]
    assert isinstance(await stream.receive(), StreamStopped), "keeps returning the end"
    assert (stream.malformed, stream.ignored) == (0, 0)
    assert (stream.stream_id, stream.provider_call_id) == (STREAM_ID, CALL_UUID)


async def test_stop_message_ends_the_stream_as_a_caller_hangup() -> None:
    stream = PlivoMediaStream(FakeChannel([start(), plain("stop"), media(b"\xff" * 160)]))
    events = await drain(stream)
    assert events[-1] == StreamStopped("stop")
    assert len(events) == 2


@pytest.mark.parametrize(
    "extra_headers",
    ['{"room": "room42", "n": 1}', "room=room42,n=1", {"room": "room42", "n": 1}],
)
async def test_extra_headers_in_any_documented_form(extra_headers: Any) -> None:
    stream = PlivoMediaStream(FakeChannel([start(extra_headers=extra_headers)]))
    started = await stream.receive()
    assert isinstance(started, StreamStarted)
    assert started.custom_parameters == {"room": "room42", "n": "1"}


async def test_malformed_messages_are_counted_and_skipped() -> None:
    good = b"\x01\x02" * 80
    channel = FakeChannel(
        [
            media(good),  # before start
            start(),
            b"\x00binary",
            "not json",
            "[]",
            json.dumps({"event": 5}),
            json.dumps({"no": "event"}),
            media(b"x", payload="%%%notbase64"),
            media(b"x", payload=""),
            json.dumps({"event": "media", "streamId": STREAM_ID}),
            media(good, stream_id="another-stream"),
            plain("dtmf", dtmf={"digit": "X"}),
            plain("playedStream"),
            plain("playedStream", name=7),
            start(),  # a second start
            media(good) + " " * (64 * 1024),
            media(good, seq=3, chunk=2),
        ]
    )
    stream = PlivoMediaStream(channel)
    events = await drain(stream)
    assert [type(e).__name__ for e in events] == ["StreamStarted", "AudioIn", "StreamStopped"]
    assert events[1] == AudioIn(good, sequence=2)
    assert stream.malformed == 15


async def test_unknown_and_failure_events_are_ignored() -> None:
    channel = FakeChannel(
        [
            start(),
            plain("playFailed", reason="bad audio"),
            plain("error", reason="oops"),
            plain("muteStream"),
            plain("somethingNew"),
            media(b"\xff" * 160, track="outbound"),
            media(b"\xff" * 160),
        ]
    )
    stream = PlivoMediaStream(channel)
    events = await drain(stream)
    assert [type(e).__name__ for e in events] == ["StreamStarted", "AudioIn", "StreamStopped"]
    assert (stream.malformed, stream.ignored) == (0, 5)


@pytest.mark.parametrize(
    ("codec", "content_type"),
    [(PCMU, "audio/x-mulaw"), (L16_8K, "audio/x-l16"), (L16_16K, "audio/x-l16")],
)
async def test_outbound_messages_match_the_stream_codec(
    codec: CodecSpec, content_type: str
) -> None:
    encoding = "audio/x-mulaw" if codec.name == "PCMU" else "audio/x-l16"
    channel = FakeChannel([start(encoding, codec.sample_rate)])
    stream = PlivoMediaStream(channel, codec)
    with pytest.raises(RuntimeError, match="not started"):
        stream.send_audio(b"\x00" * 160)
    started = await stream.receive()
    assert isinstance(started, StreamStarted) and started.codec == codec
    frame = bytes(range(256))[: codec.sample_rate // 50 * (1 if codec.name == "PCMU" else 2)]
    stream.send_audio(frame)
    stream.send_mark("utt-1")
    stream.send_clear()
    stream.send_dtmf("42")
    await stream.close()
    await stream.close()
    play, checkpoint, clear, dtmf = channel.sent
    assert play == {
        "event": "playAudio",
        "media": {
            "contentType": content_type,
            "sampleRate": codec.sample_rate,
            "payload": base64.b64encode(frame).decode(),
        },
    }
    assert checkpoint == {"event": "checkpoint", "streamId": STREAM_ID, "name": "utt-1"}
    assert clear == {"event": "clearAudio", "streamId": STREAM_ID}
    assert dtmf == {"event": "sendDTMF", "dtmf": "42"}
    assert channel.closed == 1


async def test_start_media_format_wins_over_the_requested_codec() -> None:
    channel = FakeChannel([start("audio/x-l16", 16000)])
    stream = PlivoMediaStream(channel, PCMU)
    started = await stream.receive()
    assert isinstance(started, StreamStarted) and started.codec == L16_16K
    stream.send_audio(b"\x00\x00" * 320)
    assert channel.sent[0]["media"]["contentType"] == "audio/x-l16"
    assert channel.sent[0]["media"]["sampleRate"] == 16000


@pytest.mark.parametrize(
    "media_format",
    [None, {}, {"encoding": "audio/x-opus", "sampleRate": 48000}, {"encoding": "audio/x-l16"}],
)
async def test_missing_or_unknown_media_format_keeps_the_requested_codec(
    media_format: Any,
) -> None:
    message = json.loads(start())
    message["start"]["mediaFormat"] = media_format
    stream = PlivoMediaStream(FakeChannel([json.dumps(message)]), L16_16K)
    started = await stream.receive()
    assert isinstance(started, StreamStarted)
    expected = L16_8K if media_format == {"encoding": "audio/x-l16"} else L16_16K
    assert started.codec == expected


# --------------------------------------------------------------------------- hang-up


async def test_hangup_deletes_the_call_with_basic_auth(
    tmp_path: Path, fake_provider_api: FakeProviderApi
) -> None:
    provider = make_provider(tmp_path, api_base_url=fake_provider_api.base_url + "/")
    try:
        result = await provider.hangup(HangupTarget(CALL_UUID), CREDENTIALS)
    finally:
        await provider.aclose()
    assert result.ok and not result.already_ended and result.status == 204
    (request,) = fake_provider_api.requests
    assert request.method == "DELETE"
    assert request.path == f"/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/{CALL_UUID}/"
    expected = base64.b64encode(f"MAXXXXXXXXXXXXXXXXXX:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(
    ("status", "ok", "already_ended"), [(404, True, True), (500, False, False), (401, False, False)]
)
async def test_hangup_answers(
    tmp_path: Path,
    fake_provider_api: FakeProviderApi,
    status: int,
    ok: bool,
    already_ended: bool,
) -> None:
    fake_provider_api.answer("DELETE", r"/v1/Account/.*", status, {"error": "x"})
    provider = make_provider(tmp_path, api_base_url=fake_provider_api.base_url)
    try:
        result = await provider.hangup(HangupTarget(CALL_UUID), CREDENTIALS)
    finally:
        await provider.aclose()
    assert (result.ok, result.already_ended, result.status) == (ok, already_ended, status)
    assert TOKEN not in result.detail


async def test_hangup_without_credentials_or_api_is_a_failed_result(tmp_path: Path) -> None:
    provider = make_provider(tmp_path, api_base_url="http://127.0.0.1:9", api_timeout_seconds=2)
    try:
        missing = await provider.hangup(HangupTarget(CALL_UUID), ProviderCredentials({}))
        unreachable = await provider.hangup(HangupTarget(CALL_UUID), CREDENTIALS)
    finally:
        await provider.aclose()
    assert not missing.ok and "authId" in missing.detail
    assert not unreachable.ok and unreachable.status == 0
