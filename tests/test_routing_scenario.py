"""The issue's whole scenario from ``examples/config/routing.yaml``: `callbridge routes explain`
shows why each sample call lands where it does, and a simulated call in office hours talks to
the example agent (``examples/agents/echo_agent.py``, run as its own process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbridge.api.auth import issue_token
from callbridge.settings import resolve_secret_refs
from tests import twilio_wire as tw
from tests.live_calls import CALLER_HZ, twilio_caller
from tests.servers import FakeClock, InProcessServer, free_port, run_cli, running_in_process

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "config" / "routing.yaml"
AGENT = ROOT / "examples" / "agents" / "echo_agent.py"
SECRET = "s" * 48
WEBHOOK_KEY = "whk_" + "k" * 32
MONDAY_10_LA = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)  # 10:00 in Los Angeles
SATURDAY_10_LA = "2026-12-05T18:00:00Z"
SUPPORT, SALES, OTHER = "+14155550100", "+14155550111", "+14155550199"


@pytest.fixture
def agent_port() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(AGENT), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until it listens
            import socket

            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the example agent did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path, agent_port: int) -> Iterator[InProcessServer]:
    example: dict[str, Any] = resolve_secret_refs(
        yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")),
        {"API_SECRET": SECRET, "MAIN_WEBHOOK_KEY": WEBHOOK_KEY},
    )
    port = free_port()
    agent = example["rooms"]["instances"]["sales_agent"]["config"]
    agent["url"] = agent["url"].replace("127.0.0.1:9000", f"127.0.0.1:{agent_port}")
    for region in example["routing"]["regions"].values():
        region["ingest_url"] = region["ingest_url"].replace("8000", str(port))
    clock = FakeClock(MONDAY_10_LA.timestamp())
    with running_in_process(tmp_path, example, clock=clock, port=port) as running:
        yield running


def _token(server: InProcessServer) -> str:
    return issue_token("ak_main", SECRET, now=server.clock())


def _explain(server: InProcessServer, *args: str) -> str:
    result = run_cli(
        "routes",
        "explain",
        "--server",
        server.url,
        "--token",
        _token(server),
        "--connector",
        "cn_main",
        *args,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_routes_explain_shows_why_each_sample_call_lands_where_it_does(
    server: InProcessServer,
) -> None:
    monday = MONDAY_10_LA.isoformat()
    support = _explain(server, "--from", "+14155550123", "--to", "(415) 555-0100", "--at", monday)
    assert "decision  room support on local (by phone_rules, rule support)" in support
    assert "[+14155550100]" in support  # the national format, normalised

    sales = _explain(server, "--from", "+14155550123", "--to", SALES, "--at", monday)
    assert "decision  room sales on sales_agent (by phone_rules, rule sales-office-hours)" in sales
    assert "within hours Mon-Fri 09:00-17:00 America/Los_Angeles" in sales
    assert "to +14155550111 not in [+14155550100]" in sales  # the support rule, checked first

    weekend = _explain(server, "--from", "+14155550123", "--to", SALES, "--at", SATURDAY_10_LA)
    assert "decision  room voicemail on local (by phone_rules, rule sales-after-hours)" in weekend
    assert "outside hours Mon-Fri 09:00-17:00 America/Los_Angeles" in weekend

    own = _explain(server, "--from", "+14155550123", "--to", OTHER, "--at", monday)
    assert "decision  room caller-14155550123 on local (by phone_rules, rule own-room)" in own
    assert "from +14155550123 starts with +1415" in own

    india = _explain(server, "--from", "+919876543210", "--to", OTHER, "--at", monday)
    assert "decision  room front-desk on local (by default_rule, rule front-desk)" in india
    assert "from +919876543210 not in prefixes [+1415]" in india
    assert "region    in002" in india and "the caller +919876543210 is in IN" in india

    refused = run_cli(
        "routes",
        "explain",
        "--server",
        server.url,
        "--token",
        _token(server),
        "--connector",
        "cn_nope",
    )
    assert refused.returncode == 1 and "404" in refused.stderr


async def test_a_call_to_the_sales_line_in_office_hours_talks_to_the_example_agent(
    server: InProcessServer,
) -> None:
    form = tw.voice_webhook_form(To=SALES, From="+14155550123")
    answer = await tw.post_webhook(f"{server.url}/v2/hooks/twilio/{WEBHOOK_KEY}", form)
    assert answer.stream_url is not None, answer.body
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        start = time.monotonic()
        await asyncio.sleep(2.5)
        caller.heard.assert_tone_since(start + 0.5, CALLER_HZ, min_seconds=1.5)
        # the agent places a mark after each second it echoed
        assert any(text.get("event") == "mark" for text in caller.texts)
