"""OpenTelemetry setup and the traced proxy that wraps every plugin object."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Tracer

from callbridge.settings import TelemetrySettings

TRACER_NAME = "callbridge"


def build_tracer_provider(
    settings: TelemetrySettings, extra_processors: list[SpanProcessor] | None = None
) -> TracerProvider:
    """A tracer provider exporting where ``telemetry.traces`` says (spans get ids either way)."""
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.traces == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif settings.traces == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = (
            OTLPSpanExporter(endpoint=settings.otlp_endpoint)
            if settings.otlp_endpoint
            else OTLPSpanExporter()
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in extra_processors or ():
        provider.add_span_processor(processor)
    return provider


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
        plugin_name = getattr(self._target, "name", type(self._target).__name__)
        tracer = self._tracer
        if inspect.iscoroutinefunction(value):

            @functools.wraps(value)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                if not trace.get_current_span().get_span_context().is_valid:
                    return await value(*args, **kwargs)
                with tracer.start_as_current_span(span_name) as span:
                    span.set_attribute("callbridge.plugin", str(plugin_name))
                    return await value(*args, **kwargs)

            return traced_async

        @functools.wraps(value)
        def traced_sync(*args: Any, **kwargs: Any) -> Any:
            if not trace.get_current_span().get_span_context().is_valid:
                return value(*args, **kwargs)
            with tracer.start_as_current_span(span_name) as span:
                span.set_attribute("callbridge.plugin", str(plugin_name))
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
