"""The custom provider: JSON webhook and answer, signatures, and the socket adapter over a fake
socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

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
from callbridge_plugins.providers.custom import CustomConfig, CustomMediaStream, CustomProvider
from callbridge_plugins.simulators.custom import sign_get, sign_webhook
from tests.channels import FakeChannel, events_until_stopped
from tests.servers import FakeClock

INGEST = "wss://cb.example.com/ingest"
HOOK = "https://cb.example.com/v2/hooks/custom/whk_x"
SECRET = "whsec_4f7c1d2e9a8b"
NOW = 1_767_225_600
BODY = b'{"callId":"pbx-1712345678.42","from":"+14155550100","to":"+14155550199"}'
SOCKET_URL = f"{INGEST}/custom/Q2hhbmdlTWU0MjQyNDI0MjQyNDI0Mg"
# Independent vectors (computed with `openssl dgst -sha256 -hmac`), also in the docs.
BODY_SIGNATURE = "59e6e51e6594fef56be6c5fc5f608ed9fa777d398032b6f46a6c800e2cd04bf0"
SOCKET_SIGNATURE = "168f179288eb07b501d66395b8554c85f6c730dce49db35d0957c6aab0a73287"
L16_8K, L16_16K = CodecSpec("L16", 8000), CodecSpec("L16", 16000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def provider(tmp_path: Path, clock: FakeClock) -> CustomProvider:
    context = PluginContext(tmp_path, clock, "https://cb.example.com", INGEST)
    return CustomProvider(CustomConfig(), context)


def json_webhook(body: bytes, headers: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        public_url=HOOK,
        headers={"content-type": "application/json", **(headers or {})},
        params={},
        body=body,
    )


def get_webhook(url: str, headers: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        method="GET",
        public_url=url,
        headers=headers or {},
        params=parse_qs(urlsplit(url).query, keep_blank_values=True),
        body=b"",
    )


def test_provider_satisfies_the_protocol(provider: CustomProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "custom"
    assert provider.supported_codecs == (L16_8K, L16_16K)
    assert provider.markup_styles == ()
    assert provider.credential_fields == ("signingSecret",)
    assert provider.echoes_marks_on_clear is True
    assert provider.call_ends_with_stream(StreamOptions(L16_8K)) is True


# --------------------------------------------------------------------------- webhook


def test_parse_webhook_reads_the_json_body(provider: CustomProvider) -> None:
    body = json.dumps(
        {
            "callId": "pbx-1712345678.42",
            "from": "+14155550100",
            "to": "1001",
            "metadata": {"queue": "sales", "agent.id": "a-7"},
        }
    ).encode()
    call = provider.parse_webhook(json_webhook(body))
    assert call == CallInfo(
        provider="custom",
        provider_call_id="pbx-1712345678.42",
        from_number="+14155550100",
        to_number="1001",
        extra={"queue": "sales", "agent.id": "a-7"},
    )


def test_parse_webhook_generates_a_call_id_when_absent(provider: CustomProvider) -> None:
    first = provider.parse_webhook(json_webhook(b"{}"))
    second = provider.parse_webhook(json_webhook(b'{"callId": null, "from": null}'))
    assert first.provider_call_id and second.provider_call_id
    assert first.provider_call_id != second.provider_call_id
    assert (first.from_number, first.to_number, first.extra) == (None, None, {})


def test_parse_webhook_takes_json_without_a_content_type(provider: CustomProvider) -> None:
    request = WebhookRequest("POST", HOOK, {}, {}, b'{"callId": "c-1"}')
    assert provider.parse_webhook(request).provider_call_id == "c-1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b'"callId"', "body"),
        (b'{"callId": 42}', "callId"),
        (b'{"callId": ""}', "callId"),
        (b'{"callId": "has space"}', "callId"),
        (b'{"callId": "' + b"x" * 129 + b'"}', "callId"),
        (b'{"from": 14155550100}', "from"),
        (b'{"to": ["+1"]}', "to"),
        (b'{"to": "+1\\n2"}', "to"),
        (b'{"from": "' + b"1" * 129 + b'"}', "from"),
        (b'{"metadata": "queue=sales"}', "metadata"),
        (b'{"metadata": {"queue": 7}}', "metadata.queue"),
        (b'{"metadata": {"bad key": "x"}}', "metadata"),
        (b'{"metadata": {"k": "' + b"v" * 257 + b'"}}', "metadata.k"),
        (json.dumps({"metadata": {f"k{i}": "v" for i in range(17)}}).encode(), "metadata"),
        (b'{"callid": "c-1"}', "callid"),
        (b'{"roomId": "r-1"}', "roomId"),
    ],
)
def test_parse_webhook_refuses_bad_bodies_naming_the_field(
    provider: CustomProvider, body: bytes, field: str
) -> None:
    with pytest.raises(WebhookError) as caught:
        provider.parse_webhook(json_webhook(body))
    assert caught.value.status == 400
    assert str(caught.value).startswith(f"{field}: ")


def test_parse_webhook_reads_a_query_or_form(provider: CustomProvider) -> None:
    url = f"{HOOK}?roomId=r-1&callId=c-9&from=%2B14155550100&to=%2B14155550199"
    call = provider.parse_webhook(get_webhook(url))
    assert (call.provider_call_id, call.from_number, call.to_number) == (
        "c-9",
        "+14155550100",
        "+14155550199",
    )
    form = WebhookRequest(
        "POST",
        HOOK,
        {"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
        {"callId": ["c-10"], "from": ["+14155550100"]},
        b"callId=c-10&from=%2B14155550100",
    )
    assert provider.parse_webhook(form).provider_call_id == "c-10"


def test_a_query_webhook_needs_a_call_id(provider: CustomProvider) -> None:
    with pytest.raises(WebhookError, match=r"^callId: required") as caught:
        provider.parse_webhook(get_webhook(f"{HOOK}?roomId=r-1"))
    assert caught.value.status == 400


def test_stream_url_carries_the_ref_in_the_path(provider: CustomProvider) -> None:
    assert provider.stream_url(INGEST + "/", "r3f_abc-123") == f"{INGEST}/custom/r3f_abc-123"


@pytest.mark.parametrize(("codec", "rate"), [(L16_8K, 8000), (L16_16K, 16000)])
def test_answer_is_json_checked_field_by_field(
    provider: CustomProvider, codec: CodecSpec, rate: int
) -> None:
    call = CallInfo("custom", "pbx-1712345678.42", from_number="+14155550100")
    url = provider.stream_url(INGEST, "ref123")
    markup = provider.answer_markup(call, url, Route("room-42", "test"), StreamOptions(codec))
    assert markup.media_type == "application/json"
    answer = json.loads(markup.body)
    assert list(answer) == ["action", "socketUrl", "callId", "roomId", "expiresInSeconds", "audio"]
    assert answer["action"] == "connect"
    assert answer["socketUrl"] == f"{INGEST}/custom/ref123"
    assert answer["callId"] == "pbx-1712345678.42"
    assert answer["roomId"] == "room-42"
    assert answer["expiresInSeconds"] == 90
    assert answer["audio"] == {
        "encoding": "pcm_s16le",
        "sampleRate": rate,
        "channels": 1,
        "frameMs": 20,
    }


def test_reject_answer(provider: CustomProvider) -> None:
    rejected = provider.reject_markup('No room <here> & "now"')
    assert rejected.media_type == "application/json"
    assert json.loads(rejected.body) == {"action": "reject", "message": 'No room <here> & "now"'}
    default = json.loads(provider.reject_markup("").body)
    assert default == {"action": "reject", "message": CustomConfig().reject_message}


async def test_hangup_has_nothing_to_call(provider: CustomProvider) -> None:
    result = await provider.hangup(HangupTarget("c-1"), ProviderCredentials({}))
    assert result.ok and not result.already_ended
    assert "closing the socket" in result.detail


def test_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError):
        CustomConfig.model_validate({"api_base_url": "https://example.com"})


# --------------------------------------------------------------------------- signatures


CREDENTIALS = ProviderCredentials({"signingSecret": SECRET})


def test_signature_vectors(provider: CustomProvider) -> None:
    assert sign_webhook(SECRET, BODY, NOW) == f"t={NOW},v1={BODY_SIGNATURE}"
    assert sign_get(SECRET, SOCKET_URL, NOW) == f"t={NOW},v1={SOCKET_SIGNATURE}"
    header = {"x-callbridge-signature": f"t={NOW},v1={BODY_SIGNATURE}"}
    provider.verify_webhook(json_webhook(BODY, header), CREDENTIALS)
    upper = {"x-callbridge-signature": f"t={NOW}, v1={SOCKET_SIGNATURE.upper()}"}
    provider.verify_handshake(SOCKET_URL, upper, CREDENTIALS)


def refused(check: Any) -> str:
    with pytest.raises(WebhookError) as caught:
        check()
    assert caught.value.status == 403
    return str(caught.value)


def test_tampered_body_is_refused(provider: CustomProvider) -> None:
    header = {"x-callbridge-signature": sign_webhook(SECRET, BODY, NOW)}
    tampered = BODY.replace(b"+14155550100", b"+14155550666")
    reason = refused(lambda: provider.verify_webhook(json_webhook(tampered, header), CREDENTIALS))
    assert reason == "signature: no v1 signature matches"
    provider.verify_webhook(json_webhook(BODY, header), CREDENTIALS)


def test_tampered_url_is_refused(provider: CustomProvider) -> None:
    header = {"x-callbridge-signature": sign_get(SECRET, SOCKET_URL, NOW)}
    other = SOCKET_URL.replace("Q2h", "X2h")
    refused(lambda: provider.verify_handshake(other, header, CREDENTIALS))
    plain = SOCKET_URL.replace("wss://", "ws://")
    refused(lambda: provider.verify_handshake(plain, header, CREDENTIALS))
    provider.verify_handshake(SOCKET_URL, header, CREDENTIALS)

    url = f"{HOOK}?roomId=r-1&callId=c-1"
    signed = {"x-callbridge-signature": sign_get(SECRET, url, NOW)}
    provider.verify_webhook(get_webhook(url, signed), CREDENTIALS)
    moved = url.replace("r-1", "r-2")
    refused(lambda: provider.verify_webhook(get_webhook(moved, signed), CREDENTIALS))


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**6])
def test_stale_and_future_timestamps_are_refused(provider: CustomProvider, offset: int) -> None:
    header = {"x-callbridge-signature": sign_webhook(SECRET, BODY, NOW + offset)}
    reason = refused(lambda: provider.verify_webhook(json_webhook(BODY, header), CREDENTIALS))
    assert "timestamp" in reason


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamps_within_tolerance_pass(provider: CustomProvider, offset: int) -> None:
    header = {"x-callbridge-signature": sign_webhook(SECRET, BODY, NOW + offset)}
    provider.verify_webhook(json_webhook(BODY, header), CREDENTIALS)


def test_wrong_secret_is_refused(provider: CustomProvider) -> None:
    header = {"x-callbridge-signature": sign_webhook("whsec_other", BODY, NOW)}
    refused(lambda: provider.verify_webhook(json_webhook(BODY, header), CREDENTIALS))
    refused(lambda: provider.verify_webhook(json_webhook(BODY, header), ProviderCredentials({})))


def test_one_valid_signature_among_several_is_enough(provider: CustomProvider) -> None:
    old = sign_webhook("whsec_old", BODY, NOW).split(",")[1]
    new = sign_webhook(SECRET, BODY, NOW).split(",")[1]
    rotating = {"x-callbridge-signature": f"t={NOW},{old},v0=legacy,{new}"}
    provider.verify_webhook(json_webhook(BODY, rotating), CREDENTIALS)
    both_wrong = {"x-callbridge-signature": f"t={NOW},{old},{old}"}
    refused(lambda: provider.verify_webhook(json_webhook(BODY, both_wrong), CREDENTIALS))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"v1={BODY_SIGNATURE}",
        f"t={NOW}",
        f"t={NOW},v0={BODY_SIGNATURE}",
        f"t={NOW},t={NOW},v1={BODY_SIGNATURE}",
        f"t=-{NOW},v1={BODY_SIGNATURE}",
        f"t={NOW}.5,v1={BODY_SIGNATURE}",
        f"t={NOW};v1={BODY_SIGNATURE}",
        f"t={NOW},v1={BODY_SIGNATURE}," + "v1=00," * 1000,
    ],
)
def test_missing_or_malformed_headers_are_refused(
    provider: CustomProvider, header: str | None
) -> None:
    headers = {} if header is None else {"x-callbridge-signature": header}
    refused(lambda: provider.verify_webhook(json_webhook(BODY, headers), CREDENTIALS))


def test_unsigned_handshake_is_refused(provider: CustomProvider) -> None:
    reason = refused(lambda: provider.verify_handshake(SOCKET_URL, {}, CREDENTIALS))
    assert "missing" in reason


# --------------------------------------------------------------------------- media stream


START = json.dumps({"event": "start", "callId": "pbx-1712345678.42"})
FRAME = bytes(range(256)) + bytes(64)  # 320 bytes: 20 ms at 8 kHz


def msg(event: str, **body: object) -> str:
    return json.dumps({"event": event, **body})


async def test_stream_turns_messages_into_events(provider: CustomProvider) -> None:
    channel = FakeChannel(
        [
            START,
            FRAME,
            msg("dtmf", digit="5"),
            msg("mark", name="utt-7", cleared=False),
            msg("mark", name="utt-8", cleared=True),
            msg("mark", name="utt-9"),
            msg("stop"),
        ]
    )
    stream = provider.open_stream(channel, StreamOptions(L16_8K))
    assert isinstance(stream, MediaStream)
    assert stream.stream_id is None
    events = await events_until_stopped(stream)
    started = events[0]
    assert isinstance(started, StreamStarted)
    assert started.provider_call_id == "pbx-1712345678.42"
    assert started.codec == L16_8K
    assert started.stream_id == stream.stream_id and started.stream_id.startswith("cs_")
    assert events[1:] == [
        AudioIn(FRAME),
        DtmfIn("5"),
        MarkEcho("utt-7"),
        MarkEcho("utt-8", cleared=True),
        MarkEcho("utt-9"),
        StreamStopped("stop"),
    ]
    assert (stream.malformed, stream.ignored) == (0, 0)
    assert await stream.receive() == StreamStopped("stop")


async def test_start_without_call_id_and_socket_close() -> None:
    stream = CustomMediaStream(FakeChannel([msg("start"), None]), L16_16K)
    started = await stream.receive()
    assert isinstance(started, StreamStarted)
    assert started.provider_call_id is None and started.codec == L16_16K
    assert await stream.receive() == StreamStopped("closed")
    assert await stream.receive() == StreamStopped("closed")


async def test_audio_is_reframed_into_whole_20ms_frames() -> None:
    pcm = bytes(range(256)) * 5  # 1280 bytes: 80 ms at 8 kHz
    messages: list[str | bytes | None] = [START, pcm[:100], pcm[100:700], pcm[700:], None]
    stream = CustomMediaStream(FakeChannel(messages), L16_8K)
    events = await events_until_stopped(stream)
    frames = [event.payload for event in events if isinstance(event, AudioIn)]
    assert [len(frame) for frame in frames] == [320] * 4
    assert b"".join(frames) == pcm
    assert stream.malformed == 0


async def test_16khz_frames_are_640_bytes() -> None:
    stream = CustomMediaStream(FakeChannel([START, bytes(960), None]), L16_16K)
    events = await events_until_stopped(stream)
    assert [len(e.payload) for e in events if isinstance(e, AudioIn)] == [640]


async def test_malformed_messages_are_counted_and_skipped() -> None:
    bad: list[str | bytes | None] = [
        FRAME,  # audio before start
        msg("dtmf", digit="1"),  # before start
        msg("mark", name="m"),  # before start
        START,
        "{not json",
        "[1, 2, 3]",
        json.dumps({"no": "event"}),
        json.dumps({"event": 7}),
        b"",
        b"\x00\x01\x02",  # odd length
        msg("dtmf", digit="55"),
        msg("dtmf", digit=5),
        msg("dtmf"),
        msg("mark"),
        msg("mark", name=""),
        msg("mark", name="x" * 129),
        msg("mark", name="m", cleared="yes"),
        START,  # a second start
        "x" * 70_000,
        '{"event":"dtmf","digit":"1","pad":"' + "é" * 33_000 + '"}',  # over 64 KiB as UTF-8
        bytes(70_000),
    ]
    good: list[str | bytes | None] = [FRAME, msg("dtmf", digit="#"), None]
    stream = CustomMediaStream(FakeChannel([*bad, *good]), L16_8K)
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, DtmfIn, StreamStopped]
    assert events[1] == AudioIn(FRAME)
    assert events[2] == DtmfIn("#")
    assert stream.malformed == len(bad) - 1  # all but the first START
    assert stream.ignored == 0


async def test_start_with_a_bad_call_id_is_malformed() -> None:
    messages: list[str | bytes | None] = [msg("start", callId=7), msg("start", callId="a b"), None]
    stream = CustomMediaStream(FakeChannel(messages))
    assert await stream.receive() == StreamStopped("closed")
    assert stream.malformed == 2


async def test_unknown_events_are_ignored_not_malformed() -> None:
    stream = CustomMediaStream(FakeChannel([START, msg("ping"), msg("clear"), FRAME, None]))
    events = await events_until_stopped(stream)
    assert [type(event) for event in events] == [StreamStarted, AudioIn, StreamStopped]
    assert (stream.malformed, stream.ignored) == (0, 2)


async def test_outbound_messages_have_the_documented_shape() -> None:
    channel = FakeChannel([START])
    stream = CustomMediaStream(channel)
    await stream.receive()
    stream.send_audio(FRAME)
    stream.send_mark("utt-1")
    stream.send_clear()
    stream.send_dtmf("12#")
    assert channel.sent == [
        FRAME,
        '{"event":"mark","name":"utt-1"}',
        '{"event":"clear"}',
        '{"event":"dtmf","digits":"12#"}',
    ]


async def test_sending_before_start_raises() -> None:
    channel = FakeChannel([])
    stream = CustomMediaStream(channel)
    with pytest.raises(RuntimeError):
        stream.send_audio(FRAME)
    with pytest.raises(RuntimeError):
        stream.send_mark("m")
    with pytest.raises(RuntimeError):
        stream.send_clear()
    with pytest.raises(RuntimeError):
        stream.send_dtmf("1")
    assert channel.sent == []


async def test_close_sends_stop_when_the_server_ends_the_call() -> None:
    channel = FakeChannel([START])
    stream = CustomMediaStream(channel)
    await stream.receive()
    await stream.close()
    await stream.close()
    assert channel.sent == ['{"event":"stop","reason":"hangup"}']
    assert channel.closed == 1


@pytest.mark.parametrize("ending", [msg("stop"), None])
async def test_close_sends_no_stop_after_the_client_ended(ending: str | None) -> None:
    channel = FakeChannel([START, ending])
    stream = CustomMediaStream(channel)
    await events_until_stopped(stream)
    await stream.close()
    assert channel.sent == []
    assert channel.closed == 1


async def test_close_survives_a_dead_socket() -> None:
    class DeadChannel(FakeChannel):
        def send_text(self, data: str, droppable: bool = False) -> None:
            raise ConnectionError("gone")

    channel = DeadChannel([START])
    stream = CustomMediaStream(channel)
    await stream.receive()
    await stream.close()
    assert channel.closed == 1
