"""Turning the load processes' raw per-call results into the bench report (pure functions)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FRAMES_PER_SECOND = 50
LOST_AFTER_SECONDS = 2.0
RECOVERY_MARGIN_MS = 10.0
_EARLY_TOLERANCE = 0.001
_STALL_GUARD = 0.5
"""Bursts sent this long before the stall may still be held by it: not part of the baseline."""
"""An onset may be estimated up to 1 ms before its burst's send time (rounding)."""


@dataclass
class BurstOutcome:
    """One sent burst: when it left, and how long until it was heard (``None``: lost)."""

    call: int
    sent: float
    heard_ms: float | None
    arrival_ms: float | None


def match_bursts(
    call: int, bursts: Sequence[Sequence[float]], onsets: Sequence[Sequence[float]]
) -> tuple[list[BurstOutcome], int]:
    """Pair each sent burst ``(sent, tag)`` with the first unused onset ``(heard, arrival,
    tag)`` of the same tag heard within :data:`LOST_AFTER_SECONDS`; returns the outcomes and
    the number of onsets no burst claimed."""
    ordered = sorted(onsets, key=lambda onset: onset[0])
    heard_times = [onset[0] for onset in ordered]
    used = [False] * len(ordered)
    outcomes = []
    for sent, tag in sorted(bursts, key=lambda burst: burst[0]):
        match = None
        index = bisect.bisect_left(heard_times, sent - _EARLY_TOLERANCE)
        while index < len(ordered) and ordered[index][0] <= sent + LOST_AFTER_SECONDS:
            if not used[index] and int(ordered[index][2]) == int(tag):
                match = index
                break
            index += 1
        if match is None:
            outcomes.append(BurstOutcome(call, sent, None, None))
        else:
            used[match] = True
            heard, arrival = ordered[match][0], ordered[match][1]
            outcomes.append(
                BurstOutcome(call, sent, (heard - sent) * 1000, max(0.0, arrival - sent) * 1000)
            )
    return outcomes, used.count(False)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def _median(values: Iterable[float]) -> float | None:
    listed = list(values)
    return _percentile(listed, 50)


def drift_ms(outcomes: Sequence[BurstOutcome]) -> float | None:
    """p50 of the last quarter of heard bursts (by send time) minus p50 of the first."""
    heard = sorted((o for o in outcomes if o.heard_ms is not None), key=lambda o: o.sent)
    quarter = len(heard) // 4
    if quarter == 0:
        return None
    first = _median(o.heard_ms for o in heard[:quarter] if o.heard_ms is not None)
    last = _median(o.heard_ms for o in heard[-quarter:] if o.heard_ms is not None)
    if first is None or last is None:
        return None
    return round(last - first, 2)


def recovery(
    outcomes: Sequence[BurstOutcome], stall_start: float, stall_end: float, baseline_ms: float
) -> dict[str, Any]:
    """How long after ``stall_end`` the stalled call's bursts (those sent from ``stall_start``
    on) are back within ``baseline_ms +`` :data:`RECOVERY_MARGIN_MS` for good: the send time of
    the first burst of that final good run, minus ``stall_end`` (0 when none was bad);
    ``recovered: false`` when the last burst of the window is still bad or lost."""
    limit = baseline_ms + RECOVERY_MARGIN_MS
    after = sorted((o for o in outcomes if o.sent >= stall_start), key=lambda o: o.sent)

    def good(o: BurstOutcome) -> bool:
        return o.heard_ms is not None and o.heard_ms <= limit

    last_bad = max((i for i, o in enumerate(after) if not good(o)), default=-1)
    worst = [o.heard_ms for o in after if o.heard_ms is not None]
    summary: dict[str, Any] = {
        "baseline_ms": round(baseline_ms, 2),
        "limit_ms": round(limit, 2),
        "bursts_after_stall": len(after),
        "lost_after_stall": sum(1 for o in after if o.heard_ms is None),
        "worst_after_stall_ms": round(max(worst), 2) if worst else None,
        "last_quarter_p50_ms": _median(worst[-max(1, len(worst) // 4) :]) if worst else None,
    }
    if last_bad == len(after) - 1:
        summary.update(recovered=False, recovery_ms=None)
    elif last_bad < 0:
        summary.update(recovered=True, recovery_ms=0.0)
    else:
        first_good = after[last_bad + 1]
        summary.update(
            recovered=True, recovery_ms=round(max(0.0, first_good.sent - stall_end) * 1000, 1)
        )
    return summary


@dataclass
class StepMeasurements:
    """What the orchestrator measured around one step (besides the load processes' results)."""

    system: str
    calls: int
    load_procs: int
    seconds: float
    warmup: float
    members: int
    stall: bool
    stall_at: float
    stall_seconds: float
    server_cpu_seconds: float
    rss_before_kib: int
    rss_load_kib: int
    load_cpu_seconds: float
    load_lateness_ms: dict[str, float]
    failures: list[str]
    cores_usage_pct: dict[str, dict[str, float]]
    """Per core over the window: ``busy`` % (everything on the machine) and ``steal`` % (time
    the hypervisor ran something else)."""
    server_core: str | None
    """The core the server was pinned to (``None``: not pinned)."""
    load_core: str | None


def summarize_step(m: StepMeasurements, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row of the report: the per-N, per-system numbers."""
    window = m.seconds - m.warmup
    stalled_call = 0 if m.stall else None
    pooled: list[BurstOutcome] = []
    stalled: list[BurstOutcome] = []
    spurious = 0
    expected = FRAMES_PER_SECOND * window
    # Net over calls: a call may receive one frame more or less than expected only because
    # of where its frames fall against the window's edges; summing before clamping cancels it.
    short_to_participant = short_to_caller = 0.0
    worst_call_deficit = 0.0
    for result in results:
        outcomes, extra = match_bursts(result["index"], result["bursts"], result["onsets"])
        spurious += extra
        in_window = [o for o in outcomes if m.warmup <= o.sent < m.seconds]
        (stalled if result["index"] == stalled_call else pooled).extend(in_window)
        short_to_caller += expected - result["rx_caller_units"]
        short_to_participant += expected - result["rx_participant_units"]
        worst_call_deficit = max(
            worst_call_deficit,
            expected - result["rx_caller_units"],
            expected - result["rx_participant_units"],
        )
    everything = pooled + stalled
    heard = [o.heard_ms for o in pooled if o.heard_ms is not None]
    arrival = [o.arrival_ms for o in pooled if o.arrival_ms is not None]
    frames = m.calls * FRAMES_PER_SECOND * window
    row: dict[str, Any] = {
        "system": m.system,
        "calls": m.calls,
        "load_procs": m.load_procs,
        "window_seconds": round(window, 3),
        "server_cpu_us_per_frame": round(m.server_cpu_seconds / frames * 1e6, 2)
        if frames
        else None,
        "server_core_busy_pct": round(m.server_cpu_seconds / window * 100, 1),
        "ratio_vs_floor": None,
        "latency_ms": {
            "p50": _percentile(heard, 50),
            "p99": _percentile(heard, 99),
            "max": round(max(heard), 2) if heard else None,
            "arrival_p50": _percentile(arrival, 50),
            "arrival_p99": _percentile(arrival, 99),
        },
        "drift_ms": drift_ms(pooled),
        "recovery": None,
        "frames_lost": {
            "expected_each_way": round(expected * len(results)),
            "to_participant": max(0, round(short_to_participant)),
            "to_caller": max(0, round(short_to_caller)),
            "worst_call_deficit": round(worst_call_deficit, 1),
        },
        "bursts": {
            "sent": len(everything),
            "heard": sum(1 for o in everything if o.heard_ms is not None),
            "lost": sum(1 for o in everything if o.heard_ms is None),
            "spurious_onsets": spurious,
        },
        "rss_before_kib": m.rss_before_kib,
        "rss_load_kib": m.rss_load_kib,
        "rss_kib_per_call": round((m.rss_load_kib - m.rss_before_kib) / m.calls, 1),
        "load_core_busy_pct": round(m.load_cpu_seconds / window * 100, 1),
        "server_core": m.server_core,
        "load_core": m.load_core,
        "cores_usage_pct": m.cores_usage_pct,
        "other_on_server_core_pct": None,
        "other_on_load_core_pct": None,
        "load_send_lateness_ms": m.load_lateness_ms,
        "caller_max_queue_ms": max(
            (r["caller_max_queue_ms"] or 0.0 for r in results if r["index"] != stalled_call),
            default=None,
        ),
        "server_messages": {
            "clears": sum(r["clears"] for r in results),
            "marks": sum(r["marks"] for r in results),
            "unexpected": sum(r["bad_messages"] for r in results),
        },
        "failed_calls": list(m.failures),
    }
    # Everything else that ran on the server's / the load's core during the window (other
    # processes, interrupts).
    if m.server_core in m.cores_usage_pct:
        other = m.cores_usage_pct[m.server_core]["busy"] - row["server_core_busy_pct"]
        row["other_on_server_core_pct"] = round(max(0.0, other), 1)
    if m.load_core in m.cores_usage_pct:
        other = m.cores_usage_pct[m.load_core]["busy"] - row["load_core_busy_pct"]
        row["other_on_load_core_pct"] = round(max(0.0, other), 1)
    if m.stall:
        stall_result = next((r for r in results if r["index"] == stalled_call), None)
        stall_end = stall_result["stall_end"] if stall_result else None
        if stall_end is None:
            row["recovery"] = {"recovered": False, "recovery_ms": None, "note": "no stall ran"}
        else:
            # The baseline is the system's p50 at this N (the other calls, whole window): one
            # call's few bursts before the stall are too few and may still be drifting.
            before = [
                o.heard_ms
                for o in stalled
                if o.heard_ms is not None and o.sent < m.stall_at - _STALL_GUARD
            ]
            baseline = row["latency_ms"]["p50"]
            if baseline is None:
                baseline = _median(before) or 0.0
            row["recovery"] = recovery(
                stalled, m.stall_at - _STALL_GUARD, float(stall_end), float(baseline)
            ) | {"stall_end_s": round(float(stall_end), 3), "call_p50_before_ms": _median(before)}
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``ratio_vs_floor``: each row's CPU per frame over the floor's at the same N."""
    floor = {
        r["calls"]: r["server_cpu_us_per_frame"]
        for r in rows
        if r["system"] == "floor" and r.get("server_cpu_us_per_frame")
    }
    for row in rows:
        base = floor.get(row["calls"])
        value = row.get("server_cpu_us_per_frame")
        if base and value is not None:
            row["ratio_vs_floor"] = round(value / base, 2)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], stall: bool) -> str:
    """The report table, one row per (N, system)."""
    header = [
        "N",
        "system",
        "µs/caller frame",
        "vs floor",
        "server core %",
        "other on server core %",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p50 arrival ms",
        "drift ms",
    ]
    if stall:
        header.append("stall recovery ms")
    header += [
        "lost → participant",
        "lost → caller",
        "bursts lost / sent",
        "RSS KiB/call",
        "load core %",
        "other on load core %",
        "failed calls",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i != 1 else "---" for i in range(len(header))) + "|",
    ]
    for row in sorted(rows, key=lambda r: (r["calls"], r["system"] != "floor", r["system"])):
        if row.get("skipped"):
            reason = str(row["skipped"]).replace("|", "\\|")
            cells = [str(row["calls"]), row["system"], f"not measured: {reason}"]
            cells += [""] * (len(header) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        latency = row["latency_ms"]
        cells = [
            str(row["calls"]),
            row["system"],
            _fmt(row["server_cpu_us_per_frame"]),
            _fmt(row["ratio_vs_floor"], 2),
            _fmt(row["server_core_busy_pct"], 0),
            _fmt(row["other_on_server_core_pct"], 0),
            _fmt(latency["p50"]),
            _fmt(latency["p99"]),
            _fmt(latency["max"]),
            _fmt(latency["arrival_p50"]),
            _fmt(row["drift_ms"]),
        ]
        if stall:
            rec = row.get("recovery") or {}
            cells.append(
                _fmt(rec.get("recovery_ms"), 0) if rec.get("recovered") else "not recovered"
            )
        frames, bursts = row["frames_lost"], row["bursts"]
        cells += [
            str(frames["to_participant"]),
            str(frames["to_caller"]),
            f"{bursts['lost']} / {bursts['sent']}",
            _fmt(row["rss_kib_per_call"], 0),
            _fmt(row["load_core_busy_pct"], 0),
            _fmt(row["other_on_load_core_pct"], 0),
            str(len(row["failed_calls"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
