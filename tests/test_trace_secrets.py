"""No secret reaches a span: over a full call with a webhook subscription, no span name,
attribute or event holds the webhook key, the ref, the API token, the subscription's URL
query or its endpoint secret."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests import twilio_wire as tw
from tests.live_calls import twilio_caller
from tests.servers import create_connector, start_in_process
from tests.webhook_receiver import receiving


async def test_no_secret_in_any_span_of_a_call(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    overrides = {"webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}}
    server = start_in_process(tmp_path, overrides, span_processors=[SimpleSpanProcessor(exporter)])
    token = server.token()
    url_token = "qs" + secrets.token_hex(8)
    try:
        async with receiving() as receiver:
            async with httpx.AsyncClient() as client:
                created = await client.post(
                    f"{server.url}/v2/webhooks",
                    json={
                        "url": f"{receiver.url}/hook?token={url_token}",
                        "events": ["call-started", "call-hangup"],
                        "signer": "standard_webhooks",
                    },
                    headers={"Authorization": f"Bearer {token}"},
                )
            endpoint_secret = created.json()["data"]["secret"]
            connector = create_connector(server.url, token, defaultRoomId="quiet")
            form = tw.voice_webhook_form()
            answer = await tw.post_webhook(connector.webhook_url, form)
            assert answer.stream_url is not None
            ref = answer.stream_url.rsplit("/", 1)[1]
            async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
                await asyncio.sleep(0.5)
                await caller.stop(final=tw.stop(caller.stream_sid, form["CallSid"], 9999))
            await receiver.wait_for(2)
            await asyncio.sleep(0.3)
    finally:
        server.stop()
    webhook_key = connector.webhook_url.rsplit("/", 1)[1]
    spans = exporter.get_finished_spans()
    assert {"call.webhook", "call.route", "call.media", "webhook.deliver"} <= {
        s.name for s in spans
    }
    text = "\n".join(
        f"{span.name} {dict(span.attributes or {})} "
        + " ".join(f"{event.name} {dict(event.attributes or {})}" for event in span.events)
        + " ".join(f"{link.attributes}" for link in span.links)
        for span in spans
    )
    assert "callbridge.call.id" in text and "callbridge.connector.id" in text  # it did record
    for secret in (webhook_key, ref, token, url_token, endpoint_secret):
        assert secret not in text
