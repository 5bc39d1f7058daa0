"""`make bench --smoke`: both systems run, every call works, and the report has every field.

Never a timing threshold: the bench reports figures, it does not judge them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ROW_FIELDS = {
    "system",
    "calls",
    "load_procs",
    "window_seconds",
    "server_cpu_us_per_frame",
    "server_core_busy_pct",
    "ratio_vs_floor",
    "latency_ms",
    "drift_ms",
    "recovery",
    "frames_lost",
    "bursts",
    "rss_kib_per_call",
    "load_core_busy_pct",
    "failed_calls",
}


@pytest.mark.e2e
def test_bench_smoke_runs_both_systems_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((out / "bench.json").read_text())
    machine = report["machine"]
    assert machine["cores"] and machine["cpu_model"] and machine["python"]
    assert set(machine["versions"]) >= {"numpy", "uvicorn", "websockets", "litestar", "soxr"}

    rows = {row["system"]: row for row in report["rows"]}
    assert set(rows) == {"floor", "callbridge"}
    for system, row in rows.items():
        assert ROW_FIELDS <= set(row), f"{system}: missing {ROW_FIELDS - set(row)}"
        assert row["calls"] == 2
        assert row["failed_calls"] == [], row["failed_calls"]
        assert row["bursts"]["heard"] > 0, row["bursts"]
        assert set(row["latency_ms"]) >= {"p50", "p99", "max"}
        assert row["latency_ms"]["p50"] is not None
        assert set(row["frames_lost"]) >= {"to_participant", "to_caller"}
        assert row["server_cpu_us_per_frame"] is not None
    assert rows["callbridge"]["ratio_vs_floor"] is not None

    markdown = (out / "bench.md").read_text()
    assert "| 2 | floor |" in markdown and "| 2 | callbridge |" in markdown
    assert "| 2 | floor |" in done.stdout
