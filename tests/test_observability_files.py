"""deploy/observability/: the Grafana dashboard is valid JSON and every panel queries metrics
the server really exports; the collector, Prometheus and compose files parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from opentelemetry.metrics import Counter, Histogram, UpDownCounter

from callbridge.metrics import Metrics

ROOT = Path(__file__).parent.parent / "deploy" / "observability"
DASHBOARD = ROOT / "grafana" / "dashboards" / "callbridge.json"
_SERIES_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def exported_names() -> set[str]:
    """Every metric family the server's instruments produce, named by the real exporter: each
    instrument is fed once, and the observable ones are registered as the runtime does."""
    metrics = Metrics()
    for instrument in vars(metrics).values():
        if isinstance(instrument, Counter | UpDownCounter):
            instrument.add(1, {"x": "y"})
        elif isinstance(instrument, Histogram):
            instrument.record(1, {"x": "y"})
    metrics.observe_counter(
        "callbridge.media_clock.ticks", "d", "{tick}", lambda: {"late": 0}, "kind"
    )
    metrics.observe("callbridge.room.members", "d", "{member}", lambda: {"caller": 0}, "kind")
    metrics.observe("callbridge.events.clients", "d", "{socket}", lambda: {"ws": 0}, "transport")
    text = metrics.prometheus_text().decode()
    metrics.shutdown()
    names = set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))
    assert any(name.startswith("callbridge_") for name in names)
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "callbridge" and dashboard["panels"]
    names = exported_names()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            tokens = re.findall(r"callbridge_\w+", target["expr"])
            assert tokens, f"panel {panel['title']!r} queries no callbridge metric"
            for token in tokens:
                family = _SERIES_SUFFIX.sub("", token)
                assert family in names or token in names, f"{token} is not exported"
                used.add(family)
    # the dashboard covers what the issue names: calls, failures, webhooks, media, clock
    for needed in (
        "callbridge_calls_active",
        "callbridge_calls_total",
        "callbridge_webhook_deliveries_total",
        "callbridge_media_frames_total",
        "callbridge_media_clock_ticks_total",
    ):
        assert needed in used


def test_the_collector_prometheus_and_compose_files_parse() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    assert {"otel-collector", "prometheus", "grafana", "tempo"} <= set(compose["services"])
    collector = yaml.safe_load((ROOT / "otel-collector.yaml").read_text(encoding="utf-8"))
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    prometheus = yaml.safe_load((ROOT / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    for path in (ROOT / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["apiVersion"] == 1
