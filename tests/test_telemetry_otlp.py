"""OTLP over gRPC (a real gRPC collector on loopback), the protocol choice, one resource for
traces and metrics, and spans dropped by a full export queue counted."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from callbridge.settings import ConfigError, TelemetrySettings
from callbridge.telemetry import CountingBatchSpanProcessor, otlp_protocol
from tests import twilio_wire as tw
from tests.servers import create_connector, start_process


def test_the_otlp_protocol_comes_from_settings_else_the_standard_variables() -> None:
    assert otlp_protocol(None, {}, "TRACES") == "http/protobuf"
    assert otlp_protocol(None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "TRACES") == "grpc"
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "HTTP/protobuf",
    }
    assert otlp_protocol(None, env, "METRICS") == "http/protobuf", "the signal's own wins"
    assert otlp_protocol(None, env, "TRACES") == "grpc"
    assert otlp_protocol("http/protobuf", env, "TRACES") == "http/protobuf", "settings win"
    with pytest.raises(ConfigError, match="'http/json' is not supported"):
        otlp_protocol(None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "TRACES")
    assert TelemetrySettings(otlp_protocol="grpc").otlp_protocol == "grpc"


@dataclass
class Collected:
    spans: list[tuple[str, str]] = field(default_factory=list)  # (service.name, span name)
    metrics: list[tuple[str, str]] = field(default_factory=list)  # (service.name, metric)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _service(resource: object) -> str:
    for attribute in resource.attributes:  # type: ignore[attr-defined]
        if attribute.key == "service.name":
            return str(attribute.value.string_value)
    return ""


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request: object, context: object) -> object:
        with self.collected.lock:
            for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
                service = _service(resource_spans.resource)
                for scope in resource_spans.scope_spans:
                    self.collected.spans.extend((service, span.name) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request: object, context: object) -> object:
        with self.collected.lock:
            for resource_metrics in request.resource_metrics:  # type: ignore[attr-defined]
                service = _service(resource_metrics.resource)
                for scope in resource_metrics.scope_metrics:
                    self.collected.metrics.extend((service, m.name) for m in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[int, Collected]]:
    """An OTLP/gRPC collector (the real protocol, grpcio's server) keeping what it receives."""
    collected = Collected()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(collected), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(collected), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, collected
    finally:
        server.stop(grace=None)


async def test_spans_and_metrics_reach_a_grpc_collector_under_one_service_name(
    tmp_path: Path, grpc_collector: tuple[int, Collected]
) -> None:
    port, collected = grpc_collector
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_SERVICE_NAME": "cb-grpc",
    }
    server = start_process(tmp_path, env=env)
    try:
        connector = create_connector(server.url, server.token(), defaultRoomId="lobby")
        answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
        assert answer.stream_url is not None
        for _ in range(100):
            with collected.lock:
                names = {name for _, name in collected.spans}
                metrics = {name for _, name in collected.metrics}
            if "call.webhook" in names and "callbridge.calls" in metrics:
                break
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(server.stop)
    with collected.lock:
        assert ("cb-grpc", "call.webhook") in collected.spans
        assert ("cb-grpc", "ref_store.issue") in collected.spans
        assert ("cb-grpc", "callbridge.calls") in collected.metrics, "metrics share the resource"
        assert {service for service, _ in collected.metrics} == {"cb-grpc"}


class _BlockedExporter(SpanExporter):
    """An exporter stuck until released, like a collector that does not answer."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: object) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        self.exported += len(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def test_spans_beyond_a_full_export_queue_are_dropped_and_counted() -> None:
    exporter = _BlockedExporter()
    processor = CountingBatchSpanProcessor(
        exporter, max_queue_size=4, max_export_batch_size=2, schedule_delay_millis=10
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for n in range(2):  # a whole batch: the export thread takes it and hangs
        tracer.start_span(f"s{n}").end()
    assert exporter.entered.wait(5)
    for n in range(2, 50):
        tracer.start_span(f"s{n}").end()
    assert processor.dropped == 48 - 4, "all but the queue's four"
    exporter.release.set()
    provider.force_flush()
    provider.shutdown()
    assert exporter.exported + processor.dropped == 50, "every span exported or counted"


async def test_metrics_count_the_spans_a_silent_collector_made_us_drop(tmp_path: Path) -> None:
    import socket

    listener = socket.socket()  # accepts (in its backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{listener.getsockname()[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
    }
    server = start_process(tmp_path, env=env)
    try:
        connector = create_connector(server.url, server.token(), defaultRoomId="lobby")
        for _ in range(5):
            answer = await tw.post_webhook(connector.webhook_url, tw.voice_webhook_form())
            assert answer.stream_url is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{server.url}/metrics")).text
    finally:
        server.process.kill()
        await asyncio.to_thread(server.process.wait, 10)
        listener.close()
    found = re.search(
        r'callbridge_telemetry_dropped_total\{[^}]*signal="traces"[^}]*\} (\S+)', text
    )
    assert found is not None, "the drop counter is exported"
    assert float(found.group(1)) > 0
