"""The server's metrics: OpenTelemetry instruments, read by a Prometheus reader that
``GET /metrics`` renders (one registry per app), and by any extra reader (OTLP, tests).

Label sets are bounded: providers, end reasons, directions and outcomes — never call ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from callbridge.calls.state import CallStatus, EndReason, Transition

PROMETHEUS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# The media figures a call ends with (CallBridge.stats + playout) that become counters.
_FRAME_FIGURES: Final = {
    "frames_in": ("in", "received"),
    "lost": ("in", "lost"),
    "late": ("in", "late"),
    "reordered": ("in", "reordered"),
    "duplicates": ("in", "duplicate"),
    "frames_out": ("out", "sent"),
    "far_end_dropped": ("out", "dropped"),
    "playout_frames_in": ("room", "received"),
    "playout_frames_out": ("room", "played"),
}
_PLAYOUT_FIGURES: Final = {
    "playout_drained": "drained",
    "playout_underruns": "underrun",
    "playout_overflowed": "overflowed",
}


class Metrics:
    """Every instrument of one server (see the README's Observability section).

    Args:
        resource: the process' resource (``service.name`` and the rest, as traces have it).
        readers: extra metric readers (e.g. an OTLP exporter's, or a test's in-memory one).
    """

    def __init__(
        self, resource: Resource | None = None, readers: Iterable[MetricReader] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._prometheus = PrometheusMetricReader(registry=self.registry)
        self.provider = MeterProvider(
            resource=resource or Resource({"service.name": "callbridge"}),
            metric_readers=[self._prometheus, *readers],
        )
        meter = self.provider.get_meter("callbridge")
        self.calls = meter.create_counter(
            "callbridge.calls",
            unit="{call}",
            description="Call transitions: started, answered, ended and failed (by reason).",
        )
        self.active_calls = meter.create_up_down_counter(
            "callbridge.calls.active", unit="{call}", description="Calls bridged now, by provider."
        )
        self.claim_delay = meter.create_histogram(
            "callbridge.call.claim_delay",
            unit="s",
            description="From the voice webhook's answer to the media socket's claim.",
        )
        self.frames = meter.create_counter(
            "callbridge.media.frames",
            unit="{frame}",
            description="20 ms frames by direction (in: from the caller, out: to the caller, "
            "room: through the room's playout buffer) and what became of them (in: received, "
            "and lost, late, reordered or duplicate as they arrived).",
        )
        self.playout_events = meter.create_counter(
            "callbridge.media.playout",
            unit="{frame}",
            description="Playout buffer events: frames drained (standing delay), underruns "
            "(silence played), overflowed (oldest dropped).",
        )
        self.playout_depth = meter.create_histogram(
            "callbridge.media.playout_max_depth",
            unit="{frame}",
            description="The deepest a call's playout buffer got.",
        )
        self.jitter = meter.create_histogram(
            "callbridge.media.jitter",
            unit="ms",
            description="A call's inter-arrival jitter of the caller's frames (RFC 3550 style).",
        )
        self.mark_latency = meter.create_histogram(
            "callbridge.media.mark_latency",
            unit="ms",
            description="A call's longest mark round trip: from sending a mark to the provider "
            "to its echo as played (calls with a played mark).",
        )
        self.clear_latency = meter.create_histogram(
            "callbridge.media.clear_latency",
            unit="ms",
            description="A call's slowest clear: from the room's clear to the provider's "
            "confirmation (calls with a confirmed clear).",
        )
        self.deliveries = meter.create_counter(
            "callbridge.webhook.deliveries",
            unit="{attempt}",
            description="Webhook delivery attempts by outcome (delivered, retry, failed).",
        )
        self.delivery_latency = meter.create_histogram(
            "callbridge.webhook.delivery.duration",
            unit="ms",
            description="How long a receiver took to answer an attempt.",
        )
        self.socket_drops = meter.create_counter(
            "callbridge.events.dropped",
            unit="{socket}",
            description="Event-socket clients disconnected for falling behind.",
        )
        self._meter = meter

    def observe(
        self,
        name: str,
        description: str,
        unit: str,
        read: Callable[[], Mapping[str, int]],
        label: str,
    ) -> None:
        """A gauge read when metrics are collected: ``read()`` gives a value per label value."""
        self._meter.create_observable_gauge(
            name, [_observations(read, label)], unit=unit, description=description
        )

    def observe_counter(
        self,
        name: str,
        description: str,
        unit: str,
        read: Callable[[], Mapping[str, int]],
        label: str,
    ) -> None:
        """A monotonic counter read when metrics are collected (e.g. the clock's late ticks)."""
        self._meter.create_observable_counter(
            name, [_observations(read, label)], unit=unit, description=description
        )

    def prometheus_text(self) -> bytes:
        """The current figures in Prometheus' text format."""
        return generate_latest(self.registry)

    def call_media(self, provider: str, figures: Mapping[str, int]) -> None:
        """Count a finished call's media figures."""
        labels = {"provider": provider}
        for key, (direction, result) in _FRAME_FIGURES.items():
            if figures.get(key):
                self.frames.add(figures[key], {**labels, "direction": direction, "result": result})
        for key, event in _PLAYOUT_FIGURES.items():
            if figures.get(key):
                self.playout_events.add(figures[key], {**labels, "event": event})
        if "playout_max_depth" in figures:
            self.playout_depth.record(figures["playout_max_depth"], labels)
        if "jitter_us" in figures:
            self.jitter.record(figures["jitter_us"] / 1000, labels)
        if "mark_latency_ms_max" in figures:
            self.mark_latency.record(figures["mark_latency_ms_max"], labels)
        if "clear_latency_ms_max" in figures:
            self.clear_latency.record(figures["clear_latency_ms_max"], labels)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def on_transition(self, transition: Transition) -> None:
        """A committed-transition listener: counts transitions."""
        provider = transition.call.provider
        after = transition.after
        if transition.before is None and after is CallStatus.ROUTED:
            self.calls.add(1, {"provider": provider, "outcome": "started"})
        elif after is CallStatus.ANSWERED:
            self.calls.add(1, {"provider": provider, "outcome": "answered"})
        elif after in (CallStatus.ENDED, CallStatus.FAILED):
            reason = (transition.reason or EndReason.ERROR).value
            outcome = "ended" if after is CallStatus.ENDED else "failed"
            self.calls.add(1, {"provider": provider, "outcome": outcome, "reason": reason})


def _observations(
    read: Callable[[], Mapping[str, int]], label: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable instrument's callback: one observation per value ``read()`` gives."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {label: key}) for key, value in read().items()]

    return callback
