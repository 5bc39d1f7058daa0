"""One trace per call, plugin spans for free, and no secret in span attributes."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import connect

from tests import twilio_wire as tw
from tests.servers import FakeClock, InProcessServer, create_connector, start_in_process


@pytest.fixture
def traced_server(tmp_path: Path) -> Iterator[tuple[InProcessServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    server = start_in_process(
        tmp_path, clock=FakeClock(), span_processors=[SimpleSpanProcessor(exporter)]
    )
    try:
        yield server, exporter
    finally:
        server.stop()


async def test_one_trace_per_call(
    traced_server: tuple[InProcessServer, InMemorySpanExporter],
) -> None:
    server, exporter = traced_server
    connector = create_connector(server.url, server.token(), defaultRoomId="traced")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    ref = (answer.stream_url or "").rsplit("/", 1)[1]
    stream_sid, call_sid = "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
    async with connect(answer.stream_url or "") as socket:
        await socket.send(tw.connected())
        await socket.send(tw.start(stream_sid, call_sid))
        await socket.send(tw.media(stream_sid, b"\xff" * 160, 2, 1))
        await socket.send(tw.stop(stream_sid, call_sid, 3))
        await asyncio.sleep(0.3)

    for _ in range(50):
        names = [span.name for span in exporter.get_finished_spans()]
        if "call.media" in names:
            break
        await asyncio.sleep(0.05)
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    webhook, media = by_name["call.webhook"], by_name["call.media"]
    assert media.context.trace_id == webhook.context.trace_id
    assert media.parent is not None and media.parent.span_id == webhook.context.span_id
    assert {span.context.trace_id for span in spans} == {webhook.context.trace_id}, "one trace"
    names = {span.name for span in spans}
    assert {
        "routing_strategy.route",
        "ref_store.issue",
        "provider.parse_webhook",
        "room_transport.join",
    } <= names
    assert media.attributes["callbridge.end_reason"] == "caller-hangup"
    assert media.attributes["callbridge.media.frames_in"] == 1
    assert webhook.attributes["callbridge.call.id"] == media.attributes["callbridge.call.id"]

    webhook_key = connector.webhook_url.rsplit("/", 1)[1]
    for span in spans:
        text = repr(dict(span.attributes or {})) + span.name
        assert ref not in text and webhook_key not in text


async def test_webhook_deliveries_are_linked_to_the_calls_trace(tmp_path: Path) -> None:
    from opentelemetry.trace import format_trace_id

    from tests.webhook_receiver import receiving

    exporter = InMemorySpanExporter()
    overrides = {"webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}}
    server = start_in_process(tmp_path, overrides, span_processors=[SimpleSpanProcessor(exporter)])
    try:
        async with receiving() as receiver:
            import httpx

            async with httpx.AsyncClient() as client:
                created = await client.post(
                    f"{server.url}/v2/webhooks",
                    json={"url": f"{receiver.url}/hook", "events": ["call-started"]},
                    headers={"Authorization": f"Bearer {server.token()}"},
                )
            assert created.status_code == 201
            connector = create_connector(server.url, server.token(), defaultRoomId="traced")
            await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            (request,) = await receiver.wait_for(1)
            await asyncio.sleep(0.2)
    finally:
        server.stop()
    spans = exporter.get_finished_spans()
    webhook = next(span for span in spans if span.name == "call.webhook")
    deliver = next(span for span in spans if span.name == "webhook.deliver")
    assert [link.context.trace_id for link in deliver.links] == [webhook.context.trace_id]
    assert deliver.attributes["http.response.status_code"] == 200
    # the receiver got the delivery span's context, so it can join that trace
    assert request.headers["traceparent"].split("-")[1] == format_trace_id(deliver.context.trace_id)


async def test_the_routing_and_bridge_tell_their_story_in_the_trace(
    traced_server: tuple[InProcessServer, InMemorySpanExporter],
) -> None:
    server, exporter = traced_server
    connector = create_connector(server.url, server.token(), defaultRoomId="story")
    answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
    stream_sid, call_sid = "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
    async with connect(answer.stream_url or "") as socket:
        await socket.send(tw.connected())
        await socket.send(tw.start(stream_sid, call_sid))
        await socket.send(tw.media(stream_sid, b"\xff" * 160, 2, 1))
        dtmf = {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": "3",
            "dtmf": {"track": "inbound_track", "digit": "7"},
        }
        await socket.send(json.dumps(dtmf))
        await asyncio.sleep(0.1)
        await socket.send(tw.stop(stream_sid, call_sid, 4))
        await asyncio.sleep(0.3)
    for _ in range(50):
        if any(span.name == "call.media" for span in exporter.get_finished_spans()):
            break
        await asyncio.sleep(0.05)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    webhook, route, media = spans["call.webhook"], spans["call.route"], spans["call.media"]
    assert route.parent is not None and route.parent.span_id == webhook.context.span_id
    assert list(route.attributes["callbridge.route.strategies"]) == [
        "room_query",
        "phone_rules",
        "default_rule",
        "default_room",
    ]
    assert route.attributes["callbridge.route.strategy"] == "default_room"
    assert [event.name for event in route.events] == list(
        route.attributes["callbridge.route.strategies"]
    )
    assert webhook.attributes["callbridge.route.strategy"] == "default_room"
    events = [event.name for event in media.events]
    assert "codec" in events
    assert "first audio from the caller" in events
    dtmf = next(event for event in media.events if event.name == "dtmf")
    assert dtmf.attributes["callbridge.dtmf.digit"] == "7"
