"""OpenTelemetry setup and the traced proxy that wraps every plugin object."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer

from callbridge.settings import ConfigError, TelemetrySettings

TRACER_NAME = "callbridge"


TRACE_EXPORTERS: Final = ("none", "console", "otlp")
OTLP_PROTOCOLS: Final = ("http/protobuf", "grpc")


def otlp_protocol(configured: str | None, environ: Mapping[str, str], signal: str) -> str:
    """The OTLP transport of ``signal`` (``TRACES`` or ``METRICS``): ``configured``, else
    ``OTEL_EXPORTER_OTLP_<signal>_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
    ``http/protobuf``.

    Raises:
        ConfigError: another protocol (e.g. ``http/json``, which the exporters lack).
    """
    chosen = (
        (
            configured
            or environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        .strip()
        .lower()
    )
    if chosen not in OTLP_PROTOCOLS:
        raise ConfigError(
            f"OTLP protocol {chosen!r} is not supported; choose one of: "
            + ", ".join(OTLP_PROTOCOLS)
        )
    return chosen


def trace_exporter_choice(settings: TelemetrySettings, environ: Mapping[str, str]) -> str:
    """Where spans go: ``telemetry.traces``, or, while that is ``none``, the standard
    ``OTEL_TRACES_EXPORTER`` (``console``, ``otlp`` or ``none``).

    Raises:
        ConfigError: ``OTEL_TRACES_EXPORTER`` names another exporter.
    """
    if settings.traces != "none":
        return settings.traces
    chosen = environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() or "none"
    if chosen not in TRACE_EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {chosen!r} is not supported; choose one of: "
            + ", ".join(TRACE_EXPORTERS)
        )
    return chosen


def metrics_exporter_choice(settings: TelemetrySettings, environ: Mapping[str, str]) -> str:
    """Where metrics are pushed: ``telemetry.metrics``, or, while that is ``none``, the standard
    ``OTEL_METRICS_EXPORTER`` (``console``, ``otlp``, ``prometheus`` or ``none``; prometheus
    means only ``GET /metrics``, which is always served).

    Raises:
        ConfigError: ``OTEL_METRICS_EXPORTER`` names another exporter.
    """
    if settings.metrics != "none":
        return settings.metrics
    chosen = environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower() or "none"
    if chosen == "prometheus":
        return "none"
    if chosen not in TRACE_EXPORTERS:
        raise ConfigError(
            f"OTEL_METRICS_EXPORTER: {chosen!r} is not supported; choose one of: "
            + ", ".join((*TRACE_EXPORTERS, "prometheus"))
        )
    return chosen


def build_metric_readers(
    settings: TelemetrySettings, environ: Mapping[str, str] | None = None
) -> list[MetricReader]:
    """The readers that push metrics where ``telemetry.metrics`` (or
    ``OTEL_METRICS_EXPORTER``) says, every ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60 000)."""
    environ = os.environ if environ is None else environ
    choice = metrics_exporter_choice(settings, environ)
    if choice == "none":
        return []
    if choice == "console":
        exporter: MetricExporter = ConsoleMetricExporter()
    elif otlp_protocol(settings.otlp_protocol, environ, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        exporter = GrpcMetricExporter(endpoint=settings.otlp_metrics_endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=settings.otlp_metrics_endpoint)
    return [PeriodicExportingMetricReader(exporter)]


def telemetry_resource(settings: TelemetrySettings, environ: Mapping[str, str]) -> Resource:
    """``service.name`` from ``OTEL_SERVICE_NAME`` (else ``telemetry.service_name``), plus the
    attributes of ``OTEL_RESOURCE_ATTRIBUTES``."""
    attributes: dict[str, str] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    attributes["service.name"] = environ.get("OTEL_SERVICE_NAME") or attributes.get(
        "service.name", settings.service_name
    )
    return Resource(attributes)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batching span processor (a bounded queue drained by its own thread, so a slow
    or absent collector never delays a call), counting the spans it drops because its queue
    (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048) is full; the SDK itself only logs them."""

    dropped = 0
    """Spans dropped so far."""

    def on_end(self, span: ReadableSpan) -> None:
        # The SDK keeps the queue private; if that changes, drops go uncounted, never wrong.
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self.dropped += 1
        super().on_end(span)


def build_tracer_provider(
    settings: TelemetrySettings,
    extra_processors: list[SpanProcessor] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[TracerProvider, CountingBatchSpanProcessor | None]:
    """A tracer provider exporting where ``telemetry.traces`` (or ``OTEL_TRACES_EXPORTER``)
    says, and its exporting processor (``None`` when spans go nowhere); spans get ids either
    way. OTLP goes over HTTP/protobuf or gRPC (:func:`otlp_protocol`) to
    ``telemetry.otlp_endpoint``, else the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_ENDPOINT``. Export is batched from a bounded queue: a slow or absent
    collector never delays a call (spans beyond the queue are dropped and counted)."""
    environ = os.environ if environ is None else environ
    provider = TracerProvider(resource=telemetry_resource(settings, environ))
    choice = trace_exporter_choice(settings, environ)
    exporting: CountingBatchSpanProcessor | None = None
    if choice != "none":
        exporter: SpanExporter = (
            ConsoleSpanExporter() if choice == "console" else _otlp_span_exporter(settings, environ)
        )
        exporting = CountingBatchSpanProcessor(exporter)
        provider.add_span_processor(exporting)
    for processor in extra_processors or ():
        provider.add_span_processor(processor)
    return provider, exporting


def _otlp_span_exporter(settings: TelemetrySettings, environ: Mapping[str, str]) -> SpanExporter:
    if otlp_protocol(settings.otlp_protocol, environ, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=settings.otlp_endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.otlp_endpoint)


def current_trace_parent() -> str | None:
    """W3C ``traceparent`` of the current span, to carry a trace across requests."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def context_from_trace_parent(trace_parent: str | None) -> Any:
    """An OTel context continuing ``trace_parent`` (or a fresh one)."""
    return extract({"traceparent": trace_parent} if trace_parent else {})


class TracedPlugin:
    """Proxy over a plugin object: each public method call runs in a ``<kind>.<method>`` span.

    Only plugin objects themselves are wrapped; per-frame objects they return (room legs,
    media streams) are not, so the media path carries no tracing overhead. Spans are made only
    inside a trace (a call), so work outside calls never starts stray root traces.
    """

    def __init__(self, target: Any, kind: str, tracer: Tracer) -> None:
        self._target = target
        self._kind = kind
        self._tracer = tracer

    @property
    def wrapped(self) -> Any:
        return self._target

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._target, attribute)
        if attribute.startswith("_") or not callable(value):
            return value
        span_name = f"{self._kind}.{attribute}"
        attributes = {
            "callbridge.plugin.kind": self._kind,
            "callbridge.plugin.name": str(
                getattr(self._target, "name", type(self._target).__name__)
            ),
        }
        tracer = self._tracer
        if inspect.iscoroutinefunction(value):

            @functools.wraps(value)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                if not trace.get_current_span().get_span_context().is_valid:
                    return await value(*args, **kwargs)
                with tracer.start_as_current_span(span_name, attributes=attributes):
                    return await value(*args, **kwargs)

            return traced_async

        @functools.wraps(value)
        def traced_sync(*args: Any, **kwargs: Any) -> Any:
            if not trace.get_current_span().get_span_context().is_valid:
                return value(*args, **kwargs)
            with tracer.start_as_current_span(span_name, attributes=attributes):
                return value(*args, **kwargs)

        return traced_sync


def get_tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer(TRACER_NAME)


__all__ = [
    "TracedPlugin",
    "build_tracer_provider",
    "context_from_trace_parent",
    "current_trace_parent",
    "get_tracer",
    "trace",
]
