"""Trace export chosen by settings or by the standard OTEL_* variables; a collector that never
answers delays no call."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callbridge.settings import ConfigError, TelemetrySettings
from callbridge.telemetry import telemetry_resource, trace_exporter_choice
from tests import twilio_wire as tw
from tests.servers import create_connector, start_process


def test_the_exporter_comes_from_settings_else_otel_traces_exporter() -> None:
    none = TelemetrySettings()
    assert trace_exporter_choice(none, {}) == "none"
    assert trace_exporter_choice(none, {"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert trace_exporter_choice(none, {"OTEL_TRACES_EXPORTER": "OTLP"}) == "otlp"
    assert (
        trace_exporter_choice(TelemetrySettings(traces="console"), {"OTEL_TRACES_EXPORTER": "otlp"})
        == "console"
    )
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: 'zipkin'"):
        trace_exporter_choice(none, {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_service_name_and_resource_attributes_from_the_environment() -> None:
    settings = TelemetrySettings(service_name="from-settings")
    assert telemetry_resource(settings, {}).attributes["service.name"] == "from-settings"
    resource = telemetry_resource(
        settings,
        {
            "OTEL_SERVICE_NAME": "cb-eu",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test, team=voice",
        },
    )
    assert dict(resource.attributes) == {
        "service.name": "cb-eu",
        "deployment.environment": "test",
        "team": "voice",
    }


async def test_otel_traces_exporter_console_prints_the_calls_spans(tmp_path: Path) -> None:
    server = start_process(
        tmp_path, env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "cb-test"}
    )
    try:
        connector = create_connector(server.url, server.token(), defaultRoomId="lobby")
        answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        assert answer.stream_url is not None
    finally:
        await asyncio.to_thread(server.stop)  # the batch is flushed at shutdown
    logs = server.logs()
    assert '"name": "call.webhook"' in logs
    assert '"service.name": "cb-test"' in logs
    assert "whk_" not in logs.split('"name": "call.webhook"', 1)[1][:4000], (
        "no webhook key in spans"
    )


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


async def test_a_collector_that_never_answers_delays_no_call(
    tmp_path: Path, silent_collector: int
) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent_collector}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export at once: the export then hangs
    }
    server = start_process(tmp_path, env=env)
    try:
        token = server.token()
        connector = create_connector(server.url, token, defaultRoomId="lobby")
        await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        await asyncio.sleep(0.3)  # the first export is now stuck on the collector
        started = time.monotonic()
        for _ in range(5):
            answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            assert answer.stream_url is not None
        took = time.monotonic() - started
    finally:
        server.process.kill()
        await asyncio.to_thread(server.process.wait, 10)
    # an export blocks for its 10 s timeout; the webhooks never wait for it
    assert took < 5.0, f"five webhooks took {took:.1f} s while the collector hung"


def test_the_metrics_exporter_comes_from_settings_else_otel_metrics_exporter() -> None:
    from callbridge.telemetry import build_metric_readers, metrics_exporter_choice

    none = TelemetrySettings()
    assert metrics_exporter_choice(none, {}) == "none"
    assert metrics_exporter_choice(none, {"OTEL_METRICS_EXPORTER": "prometheus"}) == "none"
    assert metrics_exporter_choice(none, {"OTEL_METRICS_EXPORTER": "otlp"}) == "otlp"
    assert metrics_exporter_choice(TelemetrySettings(metrics="console"), {}) == "console"
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER: 'statsd'"):
        metrics_exporter_choice(none, {"OTEL_METRICS_EXPORTER": "statsd"})
    assert build_metric_readers(none, {}) == []
    (reader,) = build_metric_readers(none, {"OTEL_METRICS_EXPORTER": "otlp"})
    reader.shutdown()


async def test_otel_metrics_exporter_console_pushes_the_call_counts(tmp_path: Path) -> None:
    env = {"OTEL_METRICS_EXPORTER": "console", "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    server = start_process(tmp_path, env=env)
    try:
        connector = create_connector(server.url, server.token(), defaultRoomId="lobby")
        await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        await asyncio.sleep(0.6)
    finally:
        await asyncio.to_thread(server.stop)
    logs = server.logs()
    assert '"name": "callbridge.calls"' in logs
    assert '"outcome": "started"' in logs
