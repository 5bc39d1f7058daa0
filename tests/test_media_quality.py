"""Per-call media quality: lost, late, reordered and duplicate caller frames, and the latency of
marks and clears, on the call record, in ``call-hangup``, on the ``call.media`` span (figures
as attributes, marks and clears as events) and in the metrics.

The first tests drive one bridge over a fake socket with a hand-moved clock, so every figure
is exact; the others run real calls over loopback (a hand-driven Twilio socket, the Telnyx
simulator delivering frames out of order).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import ClientConnection, connect

from callbridge.calls.bridge import CallBridge
from callbridge.clients.call import CallOptions
from callbridge.protocols import CodecSpec, MediaStream, Pcm, StreamOptions, StreamStarted
from callbridge_plugins.providers.plivo import PlivoMediaStream
from callbridge_plugins.providers.telnyx import TelnyxMediaStream
from callbridge_plugins.providers.twilio import TwilioMediaStream
from callbridge_plugins.simulators.telnyx import simulate_telnyx_call
from tests import twilio_wire as tw
from tests.calls import ended_call
from tests.channels import TextChannel
from tests.fake_provider_api import FakeProviderApi
from tests.rooms import participant_in
from tests.servers import (
    InProcessServer,
    create_connector,
    provider_api_overrides,
    running_in_process,
)
from tests.webhook_receiver import receiving

PCMU = CodecSpec("PCMU", 8000)
SILENCE = b"\xff" * 160
STREAM_SID = "MZ" + "1" * 32
CALL_SID = "CA" + "2" * 32


# --------------------------------------------------------------------------- one bridge, by hand


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingLeg:
    """A room leg that keeps the events the bridge sends the room."""

    participant_id = "call_1"
    sample_rate = 16000
    closed_reason: str | None = None

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send_audio(self, frame: Pcm) -> None:
        pass

    def send_event(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))

    def media_stats(self) -> Mapping[str, int]:
        return {}

    async def leave(self) -> None:
        pass


class HandDriven:
    """A started ``stream`` bridged to a :class:`RecordingLeg` in a ``call.media`` span of its
    own, the bridge's clock moved by hand."""

    def __init__(self, stream: MediaStream, channel: TextChannel, started: StreamStarted) -> None:
        self.channel = channel
        self.clock = Clock()
        self.leg = RecordingLeg()
        echoes = not isinstance(stream, PlivoMediaStream)
        self.bridge = CallBridge("call_1", stream, started, 16000, echoes_marks_on_clear=echoes)
        self.bridge.attach(self.leg)
        self.bridge._now = self.clock
        self.exporter = InMemorySpanExporter()
        tracing = TracerProvider()
        tracing.add_span_processor(SimpleSpanProcessor(self.exporter))
        self._span = tracing.get_tracer("test").start_span("call.media")
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            self._run: asyncio.Task[object] | None = asyncio.create_task(self.bridge.run(30))
        finally:
            otel_context.detach(token)

    async def receive_at(self, at: float, message: str) -> None:
        """The provider's ``message`` arrives at ``at`` and the bridge handles it."""
        self.clock.now = at
        self.channel.incoming.put_nowait(message)
        for _ in range(5):
            await asyncio.sleep(0)

    def room_says(self, at: float, event: dict[str, Any]) -> None:
        self.clock.now = at
        self.bridge.notify(event)

    def figures(self) -> dict[str, int]:
        return self.bridge.stats.as_dict(0, 0)

    async def end(self) -> ReadableSpan:
        """Close the provider's socket; the finished span."""
        if self._run is not None:
            self.channel.incoming.put_nowait(None)
            await asyncio.wait_for(self._run, 2)
            self._run = None
            self._span.end()
        (span,) = self.exporter.get_finished_spans()
        return span

    def timed_events(self) -> list[tuple[str, dict[str, Any]]]:
        (span,) = self.exporter.get_finished_spans()
        names = ("mark played", "mark cleared", "clear confirmed")
        return [(e.name, dict(e.attributes or {})) for e in span.events if e.name in names]


@pytest.fixture
async def twilio() -> AsyncIterator[HandDriven]:
    channel = TextChannel([tw.connected(), tw.start(STREAM_SID, CALL_SID)])
    stream = TwilioMediaStream(channel)
    started = await stream.receive()
    assert isinstance(started, StreamStarted)
    driven = HandDriven(stream, channel, started)
    await asyncio.sleep(0)
    yield driven
    await driven.end()


@pytest.fixture
async def plivo() -> AsyncIterator[HandDriven]:
    start = {
        "event": "start",
        "sequenceNumber": 1,
        "start": {
            "callId": "3c1f7a2e-58d4-4e0b-9a61-2b7f0c9d1e44",
            "streamId": "s1",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
    }
    channel = TextChannel([json.dumps(start)])
    stream = PlivoMediaStream(channel, PCMU)
    started = await stream.receive()
    assert isinstance(started, StreamStarted)
    driven = HandDriven(stream, channel, started)
    await asyncio.sleep(0)
    yield driven
    await driven.end()


def twilio_echo(name: str) -> str:
    return json.dumps(
        {"event": "mark", "sequenceNumber": "9", "streamSid": STREAM_SID, "mark": {"name": name}}
    )


async def test_a_skipped_chunk_is_lost_and_a_swapped_pair_reordered(twilio: HandDriven) -> None:
    for chunk in [1, 2, 3, 5, 7, 6, 8, 9, 10]:
        slot = 100.0 + chunk * 0.02
        await twilio.receive_at(slot, tw.media(STREAM_SID, SILENCE, chunk + 1, chunk))
    figures = twilio.figures()
    assert figures["frames_in"] == 9
    assert (figures["lost"], figures["reordered"], figures["duplicates"]) == (1, 1, 0)
    assert figures["late"] == 0
    # chunk 3 again, 180 ms behind its slot: a duplicate, which is never late
    await twilio.receive_at(100.24, tw.media(STREAM_SID, SILENCE, 20, 3))
    figures = twilio.figures()
    assert (figures["duplicates"], figures["late"]) == (1, 0)
    # a stall: chunk 11 arrives 120 ms behind its slot
    await twilio.receive_at(100.34, tw.media(STREAM_SID, SILENCE, 21, 11))
    assert twilio.figures()["late"] == 1


async def test_marks_and_a_clear_confirmed_by_an_echo_are_timed(twilio: HandDriven) -> None:
    twilio.room_says(101.0, {"event": "mark", "name": "m1"})
    await twilio.receive_at(101.25, twilio_echo("m1"))
    twilio.room_says(102.0, {"event": "mark", "name": "m2"})
    twilio.room_says(102.1, {"event": "clear"})
    await twilio.receive_at(102.13, twilio_echo("m2"))  # Twilio echoes pending marks on clear
    twilio.room_says(103.0, {"event": "clear"})  # nothing pending: nothing can confirm it
    twilio.room_says(104.0, {"event": "mark", "name": "m3"})
    await twilio.receive_at(104.5, twilio_echo("m3"))
    await twilio.receive_at(104.6, twilio_echo("never-sent"))
    await twilio.end()

    assert [(e["name"], e["status"]) for e in twilio.leg.events] == [
        ("m1", "played"),
        ("m2", "cleared"),
        ("m3", "played"),
        ("never-sent", "played"),
    ]
    assert twilio.timed_events() == [
        ("mark played", {"callbridge.mark.name": "m1", "callbridge.mark.latency_ms": 250.0}),
        ("mark cleared", {"callbridge.mark.name": "m2", "callbridge.mark.latency_ms": 130.0}),
        ("clear confirmed", {"callbridge.clear.latency_ms": 30.0}),
        ("mark played", {"callbridge.mark.name": "m3", "callbridge.mark.latency_ms": 500.0}),
        ("mark played", {"callbridge.mark.name": "never-sent"}),  # not timed
    ]
    figures = twilio.figures()
    assert {key: figures[key] for key in figures if "mark" in key or "clear" in key} == {
        "marks": 3,
        "marks_played": 3,
        "marks_cleared": 1,
        "clears": 2,
        "clears_confirmed": 1,
        "mark_latency_ms_mean": 375,
        "mark_latency_ms_max": 500,
        "clear_latency_ms_mean": 30,
        "clear_latency_ms_max": 30,
    }


async def test_untimed_marks_and_clears_leave_no_latency_figures(twilio: HandDriven) -> None:
    twilio.room_says(101.0, {"event": "clear"})
    figures = twilio.figures()
    assert (figures["clears"], figures["clears_confirmed"]) == (1, 0)
    assert not any("latency" in key for key in figures)


async def test_plivo_cleared_audio_confirms_the_clear(plivo: HandDriven) -> None:
    plivo.room_says(100.5, {"event": "mark", "name": "m0"})
    played = {"event": "playedStream", "sequenceNumber": 2, "streamId": "s1", "name": "m0"}
    await plivo.receive_at(100.9, json.dumps(played))
    plivo.room_says(101.0, {"event": "mark", "name": "m1"})
    plivo.room_says(101.5, {"event": "clear"})
    cleared = {"event": "clearedAudio", "sequenceNumber": 3, "streamId": "s1"}
    await plivo.receive_at(101.56, json.dumps(cleared))
    await plivo.end()

    assert [(e["name"], e["status"]) for e in plivo.leg.events] == [
        ("m0", "played"),
        ("m1", "cleared"),
    ]
    assert plivo.timed_events() == [
        ("mark played", {"callbridge.mark.name": "m0", "callbridge.mark.latency_ms": 400.0}),
        ("mark cleared", {"callbridge.mark.name": "m1", "callbridge.mark.latency_ms": 560.0}),
        ("clear confirmed", {"callbridge.clear.latency_ms": 60.0}),
    ]
    figures = plivo.figures()
    assert (figures["clears_confirmed"], figures["clear_latency_ms_max"]) == (1, 60)
    assert (figures["marks_played"], figures["mark_latency_ms_max"]) == (1, 400)


def test_a_stream_that_observes_its_own_arrivals_is_not_observed_again() -> None:
    stream = TelnyxMediaStream(TextChannel([]), StreamOptions())
    bridge = CallBridge("call_1", stream, StreamStarted("s", None, PCMU), 16000)
    assert bridge.stats.arrivals is stream.arrivals


# --------------------------------------------------------------------------- real calls


@pytest.fixture
def traced() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def server(
    tmp_path: Path,
    fake_provider_api: FakeProviderApi,
    traced: InMemorySpanExporter,
    reader: InMemoryMetricReader,
) -> Iterator[InProcessServer]:
    overrides = provider_api_overrides(["twilio", "telnyx"], "telnyx", fake_provider_api.base_url)
    overrides["webhooks"] = {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}
    with running_in_process(
        tmp_path,
        overrides,
        span_processors=[SimpleSpanProcessor(traced)],
        metric_readers=[reader],
    ) as running:
        yield running


async def media_span(traced: InMemorySpanExporter, call_id: str) -> ReadableSpan:
    for _ in range(250):
        for span in traced.get_finished_spans():
            attributes = span.attributes or {}
            if span.name == "call.media" and attributes.get("callbridge.call.id") == call_id:
                return span
        await asyncio.sleep(0.02)
    raise AssertionError(f"no call.media span for {call_id}")


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def frames_counted(points: dict[str, list[Any]], provider: str, result: str) -> float:
    wanted = {"provider": provider, "direction": "in", "result": result}
    return sum(
        p.value
        for p in points.get("callbridge.media.frames", [])
        if wanted.items() <= dict(p.attributes).items()
    )


async def next_command(socket: ClientConnection, event: str) -> dict[str, Any]:
    """The next message called ``event`` the server sends on the Twilio socket."""
    message: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while message.get("event") != event:
            message = json.loads(await socket.recv())
    return message


async def test_a_twilio_call_reports_lost_reordered_frames_and_timed_marks_and_clears(
    server: InProcessServer, traced: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    room = "quality-" + secrets.token_hex(4)
    connector = create_connector(server.url, server.token(), defaultRoomId=room)
    form = tw.voice_webhook_form()
    async with receiving() as receiver, participant_in(server, room) as participant:
        async with httpx.AsyncClient() as client:
            created = await client.post(
                f"{server.url}/v2/webhooks",
                json={"url": f"{receiver.url}/hook", "events": ["call-hangup"]},
                headers={"Authorization": f"Bearer {server.token()}"},
            )
        assert created.status_code == 201, created.text
        answer = await tw.post_webhook(connector.webhook_url, form)
        assert answer.stream_url is not None
        stream_sid = "MZ" + secrets.token_hex(16)
        async with connect(answer.stream_url, open_timeout=5) as socket:
            await socket.send(tw.connected())
            await socket.send(tw.start(stream_sid, form["CallSid"]))
            call_id = (await participant.next_event("participant-joined"))["participantId"]
            # chunk 4 never comes; 7 comes before 6
            chunks = [1, 2, 3, 5, 7, 6, *range(8, 31)]
            for sequence, chunk in enumerate(chunks, start=2):
                await socket.send(tw.media(stream_sid, SILENCE, sequence, chunk))
                await asyncio.sleep(0.02)

            await participant.send({"event": "mark", "name": "m-played"})
            mark = await next_command(socket, "mark")
            await socket.send(json.dumps({**mark, "sequenceNumber": "40"}))
            assert (await participant.next_event("mark"))["status"] == "played"

            await participant.send({"event": "mark", "name": "m-cleared"})
            mark = await next_command(socket, "mark")
            await participant.send({"event": "clear"})
            await next_command(socket, "clear")
            await socket.send(json.dumps({**mark, "sequenceNumber": "41"}))
            assert (await participant.next_event("mark"))["status"] == "cleared"
            await socket.send(tw.stop(stream_sid, form["CallSid"], 42))

        call = await ended_call(server, connector)
        (hangup,) = await receiver.wait_for(1)

    media = call["media"]
    assert media["frames_in"] == len(chunks)
    assert (media["lost"], media["reordered"], media["duplicates"]) == (1, 1, 0)
    assert (media["marks"], media["marks_played"], media["marks_cleared"]) == (2, 1, 1)
    assert (media["clears"], media["clears_confirmed"]) == (1, 1)
    assert 0 <= media["clear_latency_ms_max"] < 2000
    assert 0 <= media["mark_latency_ms_max"] < 2000
    assert "jitter_us" in media and "late" in media
    assert hangup.json()["data"]["media"] == media, "call-hangup carries the same figures"

    span = await media_span(traced, call_id)
    attributes = dict(span.attributes or {})
    assert (attributes["callbridge.media.lost"], attributes["callbridge.media.reordered"]) == (1, 1)
    names = [event.name for event in span.events]
    assert names.index("mark played") < names.index("mark cleared") < names.index("clear confirmed")
    played = next(dict(e.attributes or {}) for e in span.events if e.name == "mark played")
    assert played["callbridge.mark.name"] == "m-played"
    assert 0 <= played["callbridge.mark.latency_ms"] < 2000
    confirmed = next(dict(e.attributes or {}) for e in span.events if e.name == "clear confirmed")
    assert 0 <= confirmed["callbridge.clear.latency_ms"] < 2000

    points = metric_points(reader)
    assert frames_counted(points, "twilio", "lost") == 1
    assert frames_counted(points, "twilio", "reordered") == 1
    assert frames_counted(points, "twilio", "received") == len(chunks)
    (clear_latency,) = points["callbridge.media.clear_latency"]
    (mark_latency,) = points["callbridge.media.mark_latency"]
    assert (clear_latency.count, mark_latency.count) == (1, 1)
    assert dict(clear_latency.attributes) == {"provider": "twilio"}


async def test_telnyx_frames_delivered_out_of_order_count_as_reordered(
    server: InProcessServer, reader: InMemoryMetricReader
) -> None:
    room = "quality-" + secrets.token_hex(4)
    connector = create_connector(server.url, server.token(), provider="telnyx", defaultRoomId=room)
    summary = await simulate_telnyx_call(
        CallOptions(webhook_url=connector.webhook_url, provider="telnyx", seconds=2.0)
    )
    assert summary.outcome == "completed"
    pairs = next(e for e in summary.events if e["event"] == "reordered")["pairs"]
    assert pairs >= 5

    call = await ended_call(server, connector)
    media = call["media"]
    # Each swapped pair's first frame came after its successor (so might the last one held).
    assert pairs <= media["reordered"] <= pairs + 1
    assert (media["lost"], media["duplicates"]) == (0, 0)
    assert frames_counted(metric_points(reader), "telnyx", "reordered") == media["reordered"]
