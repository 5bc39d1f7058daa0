"""Contract suites: each registered implementation of every plugin kind keeps its protocol.

A new built-in or external plugin is picked up automatically; a provider also needs a sample
webhook in ``PROVIDER_SAMPLES``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callbridge.plugins import build_plugin_manager
from callbridge.protocols import (
    CallInfo,
    CodecSpec,
    ConnectorView,
    Participant,
    PluginContext,
    Provider,
    ProviderCredentials,
    RefRecord,
    RefStore,
    RoomTransport,
    Route,
    RoutingContext,
    RoutingStrategy,
    SignedMessage,
    StreamOptions,
    StreamStopped,
    WebhookError,
    WebhookRequest,
    WebhookSigner,
)
from callbridge.registry import Registry
from callbridge.routing.chain import as_decision
from tests.keystores import MemoryKeyStore
from tests.servers import FakeClock
from tests.services import redis_url
from tests.sinks import RecordingSink

REGISTRY = Registry(build_plugin_manager())

PROVIDER_SAMPLES: dict[str, dict[str, str]] = {
    "twilio": {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + "1" * 32,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+14155550100",
        "To": "+14155550199",
    },
    "plivo": {
        "CallUUID": "11111111-2222-3333-4444-555555555555",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "14155550100",
        "To": "14155550101",
    },
    "custom": {"callId": "pbx-1712345678.42", "from": "+14155550100", "to": "+14155550199"},
    "telnyx": {
        "AccountSid": "3e6f995f-85f7-4705-9741-53b116d28237",
        "ApiVersion": "2010-04-01",
        "CallSid": "v3:u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO",
        "CallSidLegacy": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "CallStatus": "ringing",
        "ConnectionId": "1684641123236054244",
        "From": "+13122010094",
        "To": "+13122123456",
    },
}


def build(
    kind: str, name: str, tmp_path: Path, clock: Any = None, config: dict[str, Any] | None = None
) -> Any:
    record = REGISTRY.get(kind, name, kind)  # type: ignore[arg-type]
    context = PluginContext(
        data_dir=tmp_path,
        clock=clock or FakeClock(),
        public_api_url="http://127.0.0.1:8000",
        public_ingest_url="ws://127.0.0.1:8000/ingest",
    )
    config = SAMPLE_CONFIGS.get(name, {}) if config is None else config
    return record.factory(record.config_model(**config), context)


SAMPLE_CONFIGS: dict[str, dict[str, Any]] = {
    # plugins whose config has required fields; nothing listens on port 9
    "websocket": {"url": "ws://127.0.0.1:9/agent"},
}


# --------------------------------------------------------------------------- providers


class ClosedChannel:
    async def receive(self) -> None:
        return None

    def send_text(self, data: str, droppable: bool = False) -> None:
        raise AssertionError("nothing should be sent")

    def send_bytes(self, data: bytes, droppable: bool = False) -> None:
        raise AssertionError("nothing should be sent")

    def drop_pending(self) -> int:
        return 0

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def webhook(params: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        public_url="http://127.0.0.1:8000/v2/hooks/x/whk_test",
        headers={"content-type": "application/x-www-form-urlencoded"},
        params={k: [v] for k, v in params.items()},
        body=b"",
    )


@pytest.mark.parametrize("name", REGISTRY.names("provider"))
async def test_provider_contract(name: str, tmp_path: Path) -> None:
    provider = build("provider", name, tmp_path)
    assert isinstance(provider, Provider)
    assert provider.name == name
    assert name in PROVIDER_SAMPLES, f"add a sample webhook for provider {name!r}"

    call = provider.parse_webhook(webhook(PROVIDER_SAMPLES[name]))
    assert isinstance(call, CallInfo) and call.provider == name and call.provider_call_id
    with pytest.raises(WebhookError) as caught:
        provider.parse_webhook(webhook({}))
    assert 400 <= caught.value.status < 500

    ref = "R" * 32
    url = provider.stream_url("wss://cb.example.com/ingest", ref)
    assert url.startswith("wss://cb.example.com/ingest/") and ref in url

    assert provider.supported_codecs and all(
        isinstance(c, CodecSpec) for c in provider.supported_codecs
    )
    assert isinstance(provider.markup_styles, tuple)
    assert provider.credential_fields and all(
        isinstance(f, str) for f in provider.credential_fields
    )
    assert isinstance(provider.echoes_marks_on_clear, bool)
    for codec in provider.supported_codecs:
        for style in provider.markup_styles or (None,):
            options = StreamOptions(codec=codec, markup_style=style)
            answer = provider.answer_markup(
                call, url, Route(room_id="room-1", strategy="t"), options
            )
            assert url in _document_text(answer.body, answer.media_type)
            assert isinstance(provider.call_ends_with_stream(options), bool)

    rejected = provider.reject_markup("Sorry & goodbye")
    assert "Sorry & goodbye" in _document_text(rejected.body, rejected.media_type)

    credentials = ProviderCredentials({field: "x" * 32 for field in provider.credential_fields})
    with pytest.raises(WebhookError) as caught:
        provider.verify_webhook(webhook(PROVIDER_SAMPLES[name]), credentials)
    assert caught.value.status == 403, "an unsigned webhook is refused"

    stream = provider.open_stream(
        ClosedChannel(), StreamOptions(codec=provider.supported_codecs[0])
    )
    assert isinstance(await stream.receive(), StreamStopped)
    assert isinstance(await stream.receive(), StreamStopped)
    await stream.close()
    await provider.aclose()


def _document_text(body: str, media_type: str) -> str:
    """Every string of an XML or JSON answer document, unescaped."""
    if "json" in media_type:
        return json.dumps(json.loads(body), ensure_ascii=False)
    root = ET.fromstring(body)
    assert root.tag == "Response"
    parts = list(root.itertext())
    for element in root.iter():
        parts.extend(element.attrib.values())
    return " ".join(parts)


# --------------------------------------------------------------------------- routing


def routing_context(
    query: dict[str, str] | None = None, default_room: str | None = None
) -> RoutingContext:
    return RoutingContext(
        call=CallInfo(provider="twilio", provider_call_id="CA1"),
        connector=ConnectorView("cn_x", "ak", "twilio", default_room, None, None),
        query=query or {},
    )


@pytest.mark.parametrize("name", REGISTRY.names("routing_strategy"))
async def test_routing_strategy_contract(name: str, tmp_path: Path) -> None:
    """Every strategy answers a decision (or a route, or None) and explains a pass."""
    strategy = build("routing_strategy", name, tmp_path)
    assert isinstance(strategy, RoutingStrategy)
    assert strategy.name == name
    nothing = as_decision(await strategy.route(routing_context()))
    assert nothing.route is None
    assert nothing.reasons and all(isinstance(reason, str) for reason in nothing.reasons)
    for context in (
        routing_context({"roomId": "r-1"}),
        routing_context(default_room="r-2"),
        routing_context({"roomId": "r-1"}, "r-2"),
    ):
        decision = as_decision(await strategy.route(context))
        route = decision.route
        assert route is None or (
            isinstance(route, Route) and route.room_id and route.strategy == name
        )
        if route is not None:
            assert decision.reasons, "a decision says why"


# --------------------------------------------------------------------------- rooms


@pytest.mark.parametrize("name", REGISTRY.names("room_transport"))
async def test_room_transport_contract(name: str, tmp_path: Path) -> None:
    transport = build("room_transport", name, tmp_path)
    assert isinstance(transport, RoomTransport)
    await transport.start()
    try:
        sink_a, sink_b, sink_other = RecordingSink(), RecordingSink(), RecordingSink()
        a = await transport.join("tenant", "room", Participant("a", "client"), sink_a)
        b = await transport.join("tenant", "room", Participant("b", "client"), sink_b)
        other = await transport.join("other-tenant", "room", Participant("c", "client"), sink_other)
        joined = await sink_a.next_event()
        assert joined["event"] == "participant-joined" and joined["participantId"] == "b"

        samples = a.sample_rate // 50
        loud = np.full(samples, 8000, dtype=np.int16)
        for _ in range(25):
            a.send_audio(loud)
            await asyncio.sleep(0.02)
        await sink_b.wait_until(lambda: len(sink_b.frames) >= 20)
        assert all(len(frame) == samples for frame in sink_b.frames)
        assert np.abs(sink_b.audio()).max() >= 7000, "b hears a"
        assert not sink_other.audio().any(), "tenants are isolated"

        b.send_event({"event": "dtmf", "digit": "7"})
        assert await sink_a.next_event() == {"event": "dtmf", "digit": "7"}

        await b.leave()
        left = await sink_a.next_event()
        assert left["event"] == "participant-left" and left["participantId"] == "b"
        heard = len(sink_b.frames)
        a.send_audio(loud)
        await asyncio.sleep(0.1)
        assert len(sink_b.frames) == heard, "a leg that left hears nothing more"
        await b.leave()
        await a.leave()
        await other.leave()
    finally:
        await transport.aclose()


# --------------------------------------------------------------------------- webhook signers


# Signers whose options change how they sign are checked in each variant.
SIGNER_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "standard_webhooks": [{"scheme": "hmac"}, {"scheme": "ed25519"}],
}


def build_signer(name: str, config: dict[str, Any], tmp_path: Path, clock: FakeClock) -> Any:
    record = REGISTRY.get("webhook_signer", name, "webhook_signer")
    context = PluginContext(
        data_dir=tmp_path,
        clock=clock,
        public_api_url="http://127.0.0.1:8000",
        public_ingest_url="ws://127.0.0.1:8000/ingest",
    )
    return record.factory(record.config_model(**config), context)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        pytest.param(name, config, id="-".join([name, *map(str, config.values())]))
        for name in REGISTRY.names("webhook_signer")
        for config in SIGNER_VARIANTS.get(name, [{}])
    ],
)
async def test_webhook_signer_contract(name: str, config: dict[str, Any], tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    signer = build_signer(name, config, tmp_path, clock)
    assert isinstance(signer, WebhookSigner)
    body = b'{"webhookType":"call-started","data":{"callId":"call_1"}}'
    secret = signer.new_endpoint_secret()
    assert secret is None or secret.startswith("whsec_")
    message = SignedMessage(id="evt_1", timestamp=int(clock()), secret=secret)
    with pytest.raises(RuntimeError):
        signer.sign(body, message)

    keys = MemoryKeyStore()
    await signer.start(keys)
    headers = signer.sign(body, message)
    assert headers and all(isinstance(v, str) and v for v in headers.values())
    now = int(clock())
    assert signer.verify(body, headers, secret, now)
    assert not signer.verify(body + b" ", headers, secret, now)
    assert not signer.verify(body, {k: "AAAA" for k in headers}, secret, now)
    assert not signer.verify(body, {}, secret, now)
    public = signer.public_key_pem()
    assert public is None or public.startswith("-----BEGIN ")

    again = build_signer(name, config, tmp_path, clock)
    await again.start(keys)
    assert again.verify(body, headers, secret, now), "replicas share the key kept in the store"
    assert again.public_key_pem() == public
    made = sum(keys.creations.values())
    assert made == (0 if public is None else 1), "a key pair is made once, in the store"


# --------------------------------------------------------------------------- ref stores


def ref_record(call_id: str = "call_1") -> RefRecord:
    return RefRecord(
        call_id=call_id,
        apikey="ak",
        connector_id="cn_1",
        provider="twilio",
        provider_call_id="CA1",
        room_id="room-1",
    )


@pytest.mark.parametrize("name", REGISTRY.names("ref_store"))
async def test_ref_store_contract(name: str, tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    config: dict[str, Any] = {}
    if name == "redis":
        config = {"url": await redis_url(), "key_prefix": f"cb-test:{secrets.token_hex(6)}:"}
    store = build("ref_store", name, tmp_path, clock, config)
    assert isinstance(store, RefStore)
    await store.start()
    try:
        ref = await store.issue(ref_record(), 90, "cn_1:CA1")
        assert len(ref) >= 22, "at least 128 bits of entropy in URL-safe text"
        assert await store.issue(ref_record(), 90, "cn_1:CA1") == ref, "retries get the same ref"
        assert await store.find("cn_1:CA1") == (ref, ref_record())
        assert await store.find("cn_1:CA-never") is None
        assert await store.claim("unknown-" + ref, "twilio") is None
        assert await store.claim(ref, "plivo") is None, "another provider's path"
        assert await store.find("cn_1:CA1") == (ref, ref_record()), "still claimable"
        assert await store.claim(ref, "twilio") == ref_record()
        assert await store.claim(ref, "twilio") is None, "single use"
        assert await store.find("cn_1:CA1") is None, "claimed refs are not found"

        fresh = await store.issue(ref_record("call_2"), 90, "cn_1:CA2")
        assert fresh != ref
        clock.advance(89.9)
        assert await store.claim(fresh, "twilio") == ref_record("call_2")

        late = await store.issue(ref_record("call_3"), 90, "cn_1:CA3")
        clock.advance(90.1)
        assert await store.find("cn_1:CA3") is None, "expired refs are not found"
        assert await store.claim(late, "twilio") is None, "expired 90 s after issue"

        contested = await store.issue(ref_record("call_4"), 90, "cn_1:CA4")
        results = await asyncio.gather(*(store.claim(contested, "twilio") for _ in range(50)))
        assert sum(result is not None for result in results) == 1
    finally:
        await store.aclose()


def test_every_plugin_kind_has_a_contract_suite() -> None:
    suites = {name for name in globals() if name.startswith("test_") and name.endswith("_contract")}
    assert suites == {
        "test_provider_contract",
        "test_routing_strategy_contract",
        "test_room_transport_contract",
        "test_webhook_signer_contract",
        "test_ref_store_contract",
    }
