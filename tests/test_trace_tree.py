"""One trace per call across processes: the webhook answered by one app instance, the media
socket claimed on another that shares the Redis ref store and the database; the claim and the
bridge continue the webhook's trace, each phase in its own span, closed when the phase ends."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests import twilio_wire as tw
from tests.live_calls import twilio_caller
from tests.servers import create_connector, start_in_process
from tests.services import redis_url


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [span for span in spans if span.name == name]
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def wait_for_span(exporter: InMemorySpanExporter, name: str) -> None:
    for _ in range(100):
        if any(span.name == name for span in exporter.get_finished_spans()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} span")


async def test_the_claim_on_a_second_instance_continues_the_webhooks_trace(
    tmp_path: Path,
) -> None:
    shared_refs = {
        "refs": {
            "store": "redis",
            "config": {
                "redis": {"url": await redis_url(), "key_prefix": f"cb-{secrets.token_hex(6)}:"}
            },
        }
    }
    webhook_spans, media_spans = InMemorySpanExporter(), InMemorySpanExporter()
    # Same data_dir: both instances share the database (and the credentials key).
    first = start_in_process(
        tmp_path, shared_refs, span_processors=[SimpleSpanProcessor(webhook_spans)]
    )
    second = start_in_process(
        tmp_path, shared_refs, span_processors=[SimpleSpanProcessor(media_spans)]
    )
    try:
        connector = create_connector(first.url, first.token(), defaultRoomId="traced")
        form = tw.voice_webhook_form()
        answer = await tw.post_webhook(connector.webhook_url, form)
        assert answer.stream_url is not None
        on_second = answer.stream_url.replace(f":{first.port}/", f":{second.port}/")
        async with twilio_caller(on_second, form["CallSid"]):
            await asyncio.sleep(0.4)
        await wait_for_span(media_spans, "call.media")
    finally:
        second.stop()
        first.stop()

    a, b = webhook_spans.get_finished_spans(), media_spans.get_finished_spans()
    webhook = only(a, "call.webhook")
    trace_id, root = webhook.context.trace_id, webhook.context.span_id
    assert webhook.parent is None and webhook.kind is SpanKind.SERVER
    assert {span.context.trace_id for span in (*a, *b)} == {trace_id}, "one trace, two processes"
    assert {span.name for span in a}.isdisjoint({"call.claim", "call.media"})

    # the webhook's phases, each a child of the webhook's span
    route = only(a, "call.route")
    assert parent_of(route) == root
    strategies = [span for span in a if span.name == "routing_strategy.route"]
    assert {parent_of(span) for span in strategies} == {route.context.span_id}
    assert [span.attributes["callbridge.plugin.name"] for span in strategies] == list(
        route.attributes["callbridge.route.strategies"]
    )
    for name in ("provider.parse_webhook", "ref_store.issue", "provider.answer_markup"):
        assert parent_of(only(a, name)) == root, name
    issue = only(a, "ref_store.issue")
    assert issue.attributes["callbridge.plugin.kind"] == "ref_store"
    assert issue.attributes["callbridge.plugin.name"] == "redis"
    assert webhook.attributes["http.route"] == "/v2/hooks/{provider}/{webhook_key}"
    assert webhook.attributes["http.request.method"] == "POST"
    assert webhook.attributes["http.response.status_code"] == 200

    # the claim and the bridge, on the second instance, in the same trace
    claim, media = only(b, "call.claim"), only(b, "call.media")
    assert parent_of(claim) == root and parent_of(media) == root
    assert claim.attributes["callbridge.instance.id"] == second.runtime.instance_id
    assert second.runtime.instance_id != first.runtime.instance_id
    call_id = webhook.attributes["callbridge.call.id"]
    for span in (claim, media):
        assert span.attributes["callbridge.call.id"] == call_id
        assert span.attributes["callbridge.connector.id"] == connector.id
        assert span.attributes["callbridge.provider"] == "twilio"
        assert span.attributes["callbridge.room.id"] == "traced"
    assert claim.attributes["http.route"] == "/ingest/{provider}/{ref}"
    assert parent_of(only(b, "room_transport.join")) == media.context.span_id
    assert media.attributes["callbridge.end_reason"] == "caller-hangup"
    assert media.attributes["callbridge.media.frames_in"] > 0

    # no span stays open beyond its phase
    assert webhook.end_time is not None and claim.start_time is not None
    assert webhook.end_time <= claim.start_time
    assert claim.end_time is not None and media.start_time is not None
    assert claim.end_time <= media.start_time

    ref = on_second.rsplit("/", 1)[1]
    webhook_key = connector.webhook_url.rsplit("/", 1)[1]
    for span in (*a, *b):
        text = f"{span.name} {dict(span.attributes or {})} " + " ".join(
            f"{event.name} {dict(event.attributes or {})}" for event in span.events
        )
        assert ref not in text and webhook_key not in text
