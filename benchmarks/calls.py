"""Server CPU per bridged call: a real `callbridge serve` process and simulated Twilio callers.

Starts the server on loopback, creates a connector, runs N concurrent simulated calls (each
sending and receiving 50 frames a second) for a few seconds, and reads the server process's
CPU time from /proc before and after. Reports CPU milliseconds per call-second, i.e. the share
of one core a call costs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from tests.servers import create_connector, start_process

from callbridge.clients.call import CallOptions
from callbridge_plugins.simulators.twilio import simulate_twilio_call

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _calls(webhook_url: str, count: int, seconds: float) -> list[str]:
    options = CallOptions(webhook_url=webhook_url, tone_hz=440, seconds=seconds)
    summaries = await asyncio.gather(*(simulate_twilio_call(options) for _ in range(count)))
    return [summary.outcome for summary in summaries]


def measure(concurrent_calls: list[int], seconds: float = 4.0) -> list[tuple[int, float]]:
    """``(calls, CPU ms per call-second)`` for each concurrency level."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        server = start_process(Path(folder), {"telemetry": {"log_level": "warning"}})
        try:
            token = server.token()
            connector = create_connector(server.url, token, defaultRoomId="bench")
            for count in concurrent_calls:
                before = _cpu_seconds(server.process.pid)
                outcomes = asyncio.run(_calls(connector.webhook_url, count, seconds))
                used = _cpu_seconds(server.process.pid) - before
                if any(not outcome.startswith("completed") for outcome in outcomes):
                    raise RuntimeError(f"calls failed: {sorted(set(outcomes))}")
                results.append((count, used * 1000 / (count * seconds)))
        finally:
            server.stop()
    return results


def main() -> None:
    """Print server CPU per call-second at a few concurrency levels."""
    print()
    print(f"{'concurrent Twilio calls':<24}  {'server CPU ms per call-second':>30}")
    for count, cost in measure([1, 10, 25]):
        print(f"{count:<24}  {cost:>30.1f}")


if __name__ == "__main__":
    main()
