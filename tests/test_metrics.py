"""Metrics after simulated calls: read back from an in-memory OpenTelemetry reader and from
``GET /metrics`` (Prometheus text); labels never carry call ids."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests import twilio_wire as tw
from tests.live_calls import twilio_caller
from tests.servers import InProcessServer, create_connector, running_in_process
from tests.webhook_receiver import receiving


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def server(tmp_path: Path, reader: InMemoryMetricReader) -> Iterator[InProcessServer]:
    overrides = {"webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}}
    with running_in_process(tmp_path, overrides, metric_readers=[reader]) as running:
        yield running


async def _call(server: InProcessServer, seconds: float = 1.0) -> None:
    connector = create_connector(server.url, server.token(), defaultRoomId="lobby")
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        await asyncio.sleep(seconds)
        await caller.stop(final=tw.stop(caller.stream_sid, form["CallSid"], 9999))
    await asyncio.sleep(0.3)  # the end is recorded after the socket closes


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def _sum(points: list[Any], **labels: str) -> float:
    return sum(p.value for p in points if labels.items() <= dict(p.attributes).items())


async def test_a_call_is_counted_and_measured(
    server: InProcessServer, reader: InMemoryMetricReader
) -> None:
    await _call(server)
    points = _points(reader)
    calls = points["callbridge.calls"]
    assert _sum(calls, outcome="started", provider="twilio") == 1
    assert _sum(calls, outcome="answered") == 1
    assert _sum(calls, outcome="ended", reason="caller-hangup") == 1
    assert _sum(points["callbridge.calls.active"], provider="twilio") == 0
    (delay,) = points["callbridge.call.claim_delay"]
    assert delay.count == 1 and 0 <= delay.sum < 5
    assert _sum(points["callbridge.media.frames"], direction="in", result="received") >= 30
    # Every tick's frame to the caller is sent, or skipped by the far-end model (a quiet frame
    # while a late tick's catch-up stands queued at the phone): together a second's worth.
    sent = _sum(points["callbridge.media.frames"], direction="out", result="sent")
    skipped = _sum(points["callbridge.media.frames"], direction="out", result="dropped")
    assert sent > 0 and sent + skipped >= 30, (sent, skipped)
    (jitter,) = points["callbridge.media.jitter"]
    assert jitter.count == 1 and 0 <= jitter.sum < 50
    assert "callbridge.media_clock.ticks" in points
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {server.token()}"}
        )
    calls = answer.json()["data"]
    media = calls[0]["media"]  # on the call record too
    assert media["frames_in"] >= 30 and "jitter_us" in media and "playout_underruns" in media
    for values in points.values():
        for point in values:
            for value in dict(point.attributes).values():
                assert not str(value).startswith(("call_", "CA")), "no call ids as labels"


async def test_prometheus_text_after_calls_and_deliveries(server: InProcessServer) -> None:
    async with receiving() as receiver:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{server.url}/v2/webhooks",
                json={"url": f"{receiver.url}/hook", "events": ["call-started", "call-hangup"]},
                headers={"Authorization": f"Bearer {server.token()}"},
            )
        assert response.status_code == 201
        await _call(server, 0.6)
        await receiver.wait_for(2)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as client:
            metrics = await client.get(f"{server.url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert re.search(r'callbridge_calls_total\{[^}]*outcome="answered"[^}]*\} 1\.0', text)
    assert re.search(
        r'callbridge_webhook_deliveries_total\{[^}]*outcome="delivered"[^}]*\} 2\.0', text
    )
    assert "callbridge_webhook_delivery_duration_milliseconds_bucket" in text
    assert "callbridge_call_claim_delay_seconds_count" in text
    assert re.search(r'callbridge_events_clients\{[^}]*transport="ws"[^}]*\} 0\.0', text)
    assert re.search(r'callbridge_room_members\{kind="caller"[^}]*\} 0\.0', text)
    assert not re.search(r'="call_[a-z0-9]{20}"', text), "no call ids as labels"
