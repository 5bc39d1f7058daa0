"""``make bench``: callbridge against a physical floor, under the same load, in one invocation.

For each N of the ladder and each system (``floor``: :mod:`benchmarks.floor`, a raw ASGI app
doing only the codec and rate conversion; ``callbridge``: a real ``callbridge serve`` process),
a fresh server is started pinned to core 0 (``taskset -c 0``) and N simulated Twilio calls,
each echoed back by a room participant, run from load processes pinned to core 1
(:mod:`benchmarks.load`; with a restricted CPU set, the first two usable cores; with fewer than
two, nothing is pinned and the report says so). The orchestrator (on the load core) reads the
server's CPU time and RSS and the load processes' CPU time from ``/proc`` around the
measurement window (the run minus a warm-up), then prints a Markdown table and writes
``<out>/bench.json`` and ``<out>/bench.md``; server and load logs go to ``<out>/logs/``, the
load processes' raw per-call results to ``<out>/raw/``. ``--out`` defaults to
``bench-results`` in the current directory.

It exits non-zero when any call failed (setup refused, a socket closed early, a load process
died); slow results are reported, never judged.

    python -m benchmarks.run                            # ladder 25,50,100,200,300, 20 s each
    python -m benchmarks.run --ladder 10,50 --seconds 10 --members 3 --stall
    python -m benchmarks.run --smoke                    # N=2, 3 s, both systems
    python -m benchmarks.micro                          # the per-frame micro-benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from benchmarks.analysis import StepMeasurements, add_ratios, markdown_table, summarize_step
from benchmarks.load import LoadSpec, spec_json

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("floor", "callbridge")
BENCH_API_KEY = "ak_bench"
DISTURBED_OTHER_PCT = 10.0
SATURATED_LOAD_PCT = 90.0
LATE_SEND_MS = 5.0
LOAD_PAUSE_MS = 20.0
"""A caller frame sent this late means the generator itself stalled for about that long."""
CALLS_PER_LOAD_PROC = 100
TAIL_SECONDS = 2.0
"""Callers keep sending silence this long after the window so that bursts sent at its end
can still be heard before they count as lost (``--smoke`` shortens it to 1 s)."""
SETUP_WARM_UP_SECONDS = 30.0
"""How long the warm-up call may take to set up, and then to report."""
_TICKS = os.sysconf("SC_CLK_TCK")
_VERSIONS = ("numpy", "uvicorn", "websockets", "litestar", "soxr", "uvloop")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def core_jiffies() -> dict[int, dict[str, int]]:
    """Per core, jiffies from ``/proc/stat``: ``busy`` (user, system, interrupts, softirqs),
    ``softirq`` alone (network delivery on loopback is mostly softirq work, which the kernel
    may not charge to the process that caused it), ``steal`` (the hypervisor ran someone
    else) and ``total``."""
    cores = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
            busy = user + nice + system + irq + softirq
            cores[int(name[3:])] = {
                "busy": busy,
                "softirq": softirq,
                "steal": steal,
                "total": busy + steal + idle + iowait,
            }
    return cores


def core_usage_pct(
    start: dict[int, dict[str, int]], end: dict[int, dict[str, int]]
) -> dict[str, dict[str, float]]:
    """``{core: {"busy": %, "softirq": %, "steal": %}}`` between two :func:`core_jiffies`."""
    usage = {}
    for core, after in end.items():
        before = start.get(core, dict.fromkeys(after, 0))
        total = after["total"] - before["total"] or 1
        usage[str(core)] = {
            key: round((after[key] - before[key]) / total * 100, 1)
            for key in ("busy", "softirq", "steal")
        }
    return usage


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_info(options: Options) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for name in _VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "pinning": (
            f"server on core {options.server_core} (taskset -c {options.server_core}), "
            f"load on core {options.load_core} (taskset -c {options.load_core})"
            if options.pinned
            else "not pinned (fewer than 2 usable cores, or no taskset): server and load "
            "share the cores, so CPU and latency figures are less reliable"
        ),
        "git": _git_state(),
    }


def _git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", "core", "plugins")
        return {"commit": git("rev-parse", "HEAD"), "server_code_modified": bool(changed)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "server_code_modified": None}


# --- servers --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@dataclass
class Server:
    system: str
    process: asyncio.subprocess.Process
    url: str
    log_path: Path
    webhook_url: str = ""
    token: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_server(system: str, workdir: Path, log_path: Path, prefix: list[str]) -> Server:
    """Start ``system`` on a free port and wait until it is healthy (and, for callbridge, has
    a token and a Twilio connector)."""
    port = _free_port()
    if system == "floor":
        command = [sys.executable, "-m", "benchmarks.floor", "--port", str(port)]
    else:
        secret_path = workdir / "api-secret"
        secret_path.write_text(secrets.token_hex(24))
        config = {
            "data_dir": str(workdir / "data"),
            "server": {"host": "127.0.0.1", "port": port},
            "auth": {
                "create_dev_key": False,
                "api_keys": [{"apikey": BENCH_API_KEY, "secret": {"$file": str(secret_path)}}],
            },
            "telemetry": {"log_format": "json", "log_level": "warning"},
        }
        config_path = workdir / "callbridge.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "callbridge.cli", "serve", "--config", str(config_path)]
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *prefix, *command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, env=_child_env()
        )
    server = Server(system, process, f"http://127.0.0.1:{port}", log_path)
    try:
        await _wait_healthy(server)
        if system == "callbridge":
            auth = await asyncio.to_thread(importlib.import_module, "callbridge.api.auth")
            server.token = auth.issue_token(BENCH_API_KEY, (workdir / "api-secret").read_text())
            server.webhook_url = await _connector(server)
    except BaseException:
        await server.stop()
        raise
    return server


async def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            if server.process.returncode is not None:
                raise RuntimeError(f"{server.system} exited early:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{server.url}/healthz", timeout=1)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.system} did not become healthy:\n{server.log_tail()}")
            await asyncio.sleep(0.1)


async def _connector(server: Server) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.url}/v2/connectors",
            json={"provider": "twilio"},
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )
    if response.status_code != 201:
        raise RuntimeError(f"creating a connector: HTTP {response.status_code} {response.text}")
    return str(response.json()["data"]["webhookUrl"])


# --- load processes -------------------------------------------------------------------------


@dataclass
class LoadProc:
    process: asyncio.subprocess.Process
    log_path: Path

    async def send(self, data: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        line = data if isinstance(data, str) else json.dumps(data)
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def receive(self, wait_seconds: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), wait_seconds)
        if not line:
            await self.process.wait()
            raise RuntimeError(
                f"load process exited ({self.process.returncode}) without reporting:\n"
                + self.log_tail()
            )
        data: dict[str, Any] = json.loads(line)
        return data

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 3)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def start_load(spec: LoadSpec, prefix: list[str], log_path: Path) -> LoadProc:
    log_file: IO[bytes]
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "benchmarks.load",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=REPO,
            env=_child_env(),
            limit=64 * 1024 * 1024,
        )
    proc = LoadProc(process, log_path)
    await proc.send(spec_json(spec))
    return proc


# --- one step -------------------------------------------------------------------------------


@dataclass
class Options:
    ladder: list[int]
    seconds: float
    warmup: float
    members: int
    stall: bool
    systems: list[str]
    out: Path
    load_procs: int | None
    pinned: bool
    server_core: int = 0
    load_core: int = 1
    tail: float = TAIL_SECONDS


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _warm_up(server: Server, prefix: list[str], log_path: Path) -> None:
    """One short call through ``server`` before its RSS is taken as the baseline, so what the
    first call costs once (modules imported on first use, the first database pages, caches)
    is not counted as every call's."""
    spec = LoadSpec(
        system=server.system,
        base_url=server.url,
        calls=[0],
        total_calls=1,
        seconds=1.0,
        warmup=0.2,
        tail=0.2,
        webhook_url=server.webhook_url,
        token=server.token,
    )
    proc = await start_load(spec, prefix, log_path)
    try:
        ready = await proc.receive(SETUP_WARM_UP_SECONDS)
        if not ready.get("ready"):
            raise RuntimeError(f"warm-up call failed: {ready.get('failures')}")
        await proc.send({"t0": time.time() + 0.1})
        await proc.receive(SETUP_WARM_UP_SECONDS)
    finally:
        await proc.stop()
    await asyncio.sleep(0.5)


async def run_step(system: str, calls: int, options: Options) -> dict[str, Any]:
    """Start a fresh server, run ``calls`` calls against it, return the report row."""
    logs = options.out / "logs"
    server_prefix = ["taskset", "-c", str(options.server_core)] if options.pinned else []
    load_prefix = ["taskset", "-c", str(options.load_core)] if options.pinned else []
    procs_wanted = options.load_procs or math.ceil(calls / CALLS_PER_LOAD_PROC)
    procs_count = max(1, min(procs_wanted, calls))
    seconds, warmup = options.seconds, options.warmup
    stall_at = seconds / 2
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-") as folder:
        log(f"{system} N={calls}: starting the server")
        try:
            server = await start_server(
                system, Path(folder), logs / f"{system}-N{calls}-server.log", server_prefix
            )
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            log(f"{system} N={calls}: FAILED to start: {exc}")
            return _failed_row(system, calls, [f"server did not start: {exc}"], None)
        procs: list[LoadProc] = []
        phase = "setting up calls"
        try:
            await _warm_up(server, load_prefix, logs / f"{system}-N{calls}-warmup.log")
            rss_before = rss_kib(server.pid)
            for p in range(procs_count):
                spec = LoadSpec(
                    system=system,
                    base_url=server.url,
                    calls=list(range(p, calls, procs_count)),
                    total_calls=calls,
                    seconds=seconds,
                    warmup=warmup,
                    tail=options.tail,
                    members=options.members,
                    stall=options.stall,
                    stall_at=stall_at,
                    webhook_url=server.webhook_url,
                    token=server.token,
                )
                log_path = logs / f"{system}-N{calls}-load{p}.log"
                procs.append(await start_load(spec, load_prefix, log_path))
            log(f"{system} N={calls}: setting up calls in {procs_count} load process(es)")
            setup_timeout = 30 + calls * 0.5
            readies = await asyncio.gather(*(proc.receive(setup_timeout) for proc in procs))
            for ready in readies:
                failures += ready.get("failures", [])
            if failures:
                for proc in procs:
                    await proc.send({"abort": True})
                return _failed_row(system, calls, failures, server)
            phase = "running"
            t0 = time.time() + 0.5
            for proc in procs:
                await proc.send({"t0": t0})
            log(f"{system} N={calls}: running {seconds:g} s (+{options.tail:g} s tail)")
            await _sleep_until(t0 + warmup)
            cpu_start = cpu_seconds(server.pid)
            load_start = sum(cpu_seconds(proc.process.pid) for proc in procs)
            cores_start = core_jiffies()
            rss_samples = []
            for fraction in (0.5, 0.95):
                await _sleep_until(t0 + warmup + (seconds - warmup) * fraction)
                rss_samples.append(rss_kib(server.pid))
            await _sleep_until(t0 + seconds)
            cpu_used = cpu_seconds(server.pid) - cpu_start
            load_used = sum(cpu_seconds(proc.process.pid) for proc in procs) - load_start
            cores_usage = core_usage_pct(cores_start, core_jiffies())
            phase = "collecting results"
            reports = await asyncio.gather(
                *(proc.receive(options.tail + 30 + calls * 0.1) for proc in procs)
            )
            if server.process.returncode is not None:
                failures.append(f"server exited with {server.process.returncode} during the run")
        except (RuntimeError, TimeoutError, OSError) as exc:
            reason = f"{phase}: " + ("timed out" if isinstance(exc, TimeoutError) else str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.process.wait(), 1)
            if server.process.returncode is not None:
                reason = f"{phase}: the server exited with code {server.process.returncode}"
            log(f"{system} N={calls}: FAILED: {reason}")
            return _failed_row(system, calls, [reason], server)
        finally:
            for proc in procs:
                await proc.stop()
            await server.stop()
    results = [result for report in reports for result in report["results"]]
    raw_path = options.out / "raw" / f"{system}-N{calls}.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({"t0": t0, "reports": reports}))
    failures += [f"call {r['index']}: {r['failure']}" for r in results if r["failure"]]
    lateness = {
        key: round(max(report["lateness_ms"][key] for report in reports), 3)
        for key in ("p50", "p99", "max")
    }
    measurements = StepMeasurements(
        system=system,
        calls=calls,
        load_procs=procs_count,
        seconds=seconds,
        warmup=warmup,
        members=options.members,
        stall=options.stall,
        stall_at=stall_at,
        stall_seconds=0.2,
        server_cpu_seconds=cpu_used,
        rss_before_kib=rss_before,
        rss_load_kib=max(rss_samples),
        load_cpu_seconds=load_used,
        load_lateness_ms=lateness,
        failures=failures,
        cores_usage_pct=cores_usage,
        server_core=str(options.server_core) if options.pinned else None,
        load_core=str(options.load_core) if options.pinned else None,
    )
    row = summarize_step(measurements, sorted(results, key=lambda r: int(r["index"])))
    latency = row["latency_ms"]
    log(
        f"{system} N={calls}: {row['server_cpu_us_per_frame']} µs/frame, "
        f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"bursts lost {row['bursts']['lost']}/{row['bursts']['sent']}, "
        f"load core {row['load_core_busy_pct']} %"
        + (f", {len(failures)} FAILED call(s)" if failures else "")
    )
    return row


def _failed_row(
    system: str, calls: int, failures: list[str], server: Server | None
) -> dict[str, Any]:
    tail = server.log_tail(10) if server is not None else ""
    return {
        "system": system,
        "calls": calls,
        "skipped": f"failed ({failures[0][:80]}{'…' if len(failures) > 1 else ''})",
        "failed_calls": failures,
        "server_log_tail": tail,
    }


# --- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="callbridge against a physical floor, under the same load.",
    )
    parser.add_argument("--ladder", default="25,50,100,200,300", help="concurrent calls per step")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each step")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds excluded at the start (≤ seconds/4)"
    )
    parser.add_argument("--members", type=int, choices=(2, 3), default=2, help="room members")
    parser.add_argument(
        "--stall",
        action="store_true",
        help="call 0's participant holds what it hears for 200 ms mid-run, then sends it at once",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="floor,callbridge")
    parser.add_argument("--out", default="bench-results", help="report directory")
    parser.add_argument(
        "--load-procs",
        type=int,
        help=f"load processes per step (default: one per {CALLS_PER_LOAD_PROC} calls)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run: N=2, 3 s, both systems")
    args = parser.parse_args(argv)
    if args.smoke:
        args.ladder, args.seconds, args.systems = "2", 3.0, ",".join(SYSTEMS)
    try:
        ladder = [int(n) for n in args.ladder.split(",") if n.strip()]
    except ValueError:
        parser.error("--ladder: comma-separated integers, e.g. 25,50,100")
    if not ladder or min(ladder) < 1:
        parser.error("--ladder: at least one step, each ≥ 1 call")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        parser.error(f"--systems: choose from {','.join(SYSTEMS)}")
    if args.seconds < 2:
        parser.error("--seconds: at least 2")
    if args.load_procs is not None and args.load_procs < 1:
        parser.error("--load-procs: at least 1")
    usable = sorted(os.sched_getaffinity(0))
    pinned = len(usable) >= 2 and shutil.which("taskset") is not None
    return Options(
        ladder=ladder,
        seconds=args.seconds,
        # Whole 20 ms frames, so the window's expected frame count is whole too.
        warmup=round(min(args.warmup, args.seconds / 4) / 0.02) * 0.02,
        members=args.members,
        stall=args.stall,
        systems=systems,
        out=Path(args.out),
        load_procs=args.load_procs,
        pinned=pinned,
        server_core=usable[0],
        load_core=usable[1] if pinned else usable[0],
        tail=1.0 if args.smoke else TAIL_SECONDS,
    )


LEGEND = [
    "- **µs/caller frame**: the server's utime+stime over the window / (N * 50 * window s); "
    "**vs floor**: divided by the floor's at the same N.",
    "- **server core %**: the same CPU as % of one core. **other on server / load core %**: "
    "busy time of core 0 / core 1 not spent by the server / the load processes (other "
    "processes, interrupts); when high, the step was disturbed (so is it when the hypervisor "
    "steals time: `cores_usage_pct` in bench.json).",
    "- **p50 / p99 / max**: burst round trip caller → room → echo participant → room → caller "
    "as the caller hears it: received frames play back to back at max(arrival, end of the "
    "previous frame), so queued audio counts. **p50 arrival**: the same up to the arrival of "
    "the echo's first frame, without the playout queue.",
    "- **drift**: p50 of the last quarter of the window's bursts minus p50 of the first "
    "quarter. **stall recovery**: from the end of the stall to the send time of the first "
    "of call 0's bursts that are all, to the end of the window, heard within the row's p50 + "
    '10 ms ("not recovered": the last ones are still slower, or lost). Under the playout '
    "rule a server that only forwards (the floor) keeps the stall's 200 ms for good.",
    "- **lost → participant / caller**: 20 ms frames expected in the window minus frames "
    "received, summed over calls. **bursts lost**: not heard within 2 s.",
    "- **RSS KiB/call**: (server RSS under load - RSS before the calls, after one warm-up "
    "call) / N. **load core %**: the load processes' CPU over the window, as % of one core.",
]


def disturbances(row: dict[str, Any]) -> list[str]:
    """Why a step's figures may not be the systems' own (a note, never a verdict)."""
    if row.get("skipped"):
        return []
    reasons = []
    usage: dict[str, dict[str, float]] = row.get("cores_usage_pct", {})
    for role in ("server", "load"):
        other = row.get(f"other_on_{role}_core_pct")
        if other is not None and other > DISTURBED_OTHER_PCT:
            reasons.append(f"{other:.0f} % of the {role} core used by other processes")
        steal = usage.get(str(row.get(f"{role}_core")), {}).get("steal", 0.0)
        if steal > DISTURBED_OTHER_PCT:
            reasons.append(f"{steal:.0f} % of the {role} core stolen by the hypervisor")
    if row["load_core_busy_pct"] > SATURATED_LOAD_PCT:
        reasons.append(f"load core {row['load_core_busy_pct']:.0f} % busy (generator saturated)")
    late = row["load_send_lateness_ms"]["p99"]
    if late > LATE_SEND_MS:
        reasons.append(f"callers sent late (p99 {late:.1f} ms behind their clock)")
    paused = row["load_send_lateness_ms"]["max"]
    if paused > LOAD_PAUSE_MS:
        reasons.append(
            f"the load generator paused {paused:.0f} ms at least once (it read the server's "
            "frames that much late, and its callers' playout queues kept it as delay)"
        )
    return reasons


def render_markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        "# callbridge bench",
        "",
        f"- {report['started']}; {machine['cores']} cores ({machine['cpu_model']}); "
        f"Python {machine['python']}; {versions}",
        f"- git {machine['git'].get('commit')}"
        + (" (core/ or plugins/ modified)" if machine["git"].get("server_code_modified") else ""),
        f"- pinning: {machine['pinning']}",
        f"- {settings['seconds']:g} s per step, measured over the last "
        f"{settings['seconds'] - settings['warmup']:g} s; {settings['members']} room members"
        + ("; call 0's participant stalls 200 ms mid-run" if settings["stall"] else ""),
        "",
        markdown_table(report["rows"], settings["stall"]),
        "",
        *LEGEND,
        *(
            ["- The stalled call (call 0) is left out of the latency and drift columns."]
            if settings["stall"]
            else []
        ),
    ]
    disturbed = [
        f"{row['system']} N={row['calls']}: " + ", ".join(reasons)
        for row in report["rows"]
        if (reasons := disturbances(row))
    ]
    if disturbed:
        lines += ["", "## Steps to read with care", ""]
        lines += [f"- {line}" for line in disturbed]
    failed = [r for r in report["rows"] if r.get("failed_calls")]
    if failed:
        lines += ["", "## Failed calls", ""]
        for row in failed:
            lines.append(f"- {row['system']} N={row['calls']}:")
            lines += [f"  - {reason}" for reason in row["failed_calls"][:10]]
            if len(row["failed_calls"]) > 10:
                lines.append(f"  - … and {len(row['failed_calls']) - 10} more")
    return "\n".join(lines) + "\n"


async def run(options: Options) -> int:
    if options.pinned:
        # Keep this process off the server's core too.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {options.load_core})
    else:
        log("fewer than 2 cores (or no taskset): running unpinned; figures are less reliable")
    (options.out / "logs").mkdir(parents=True, exist_ok=True)
    # Every call holds 2-3 sockets in the server and in the load processes (inherited limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(options),
        "settings": {
            "ladder": options.ladder,
            "seconds": options.seconds,
            "warmup": options.warmup,
            "tail": options.tail,
            "members": options.members,
            "stall": options.stall,
            "systems": options.systems,
            "load_procs": options.load_procs or f"1 per {CALLS_PER_LOAD_PROC} calls",
        },
        "rows": [],
    }
    for calls in options.ladder:
        for system in options.systems:
            report["rows"].append(await run_step(system, calls, options))
    add_ratios(report["rows"])
    markdown = render_markdown(report)
    (options.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (options.out / "bench.md").write_text(markdown)
    print(markdown)
    failed = [
        f"{row['system']} N={row['calls']}: {reason}"
        for row in report["rows"]
        for reason in row.get("failed_calls", [])
    ]
    if failed:
        print(f"bench: FAILED ({len(failed)} failed call(s) or step(s)):", file=sys.stderr)
        for line in failed[:20]:
            print(f"  {line}", file=sys.stderr)
        print(f"(logs in {options.out / 'logs'})", file=sys.stderr)
        return 1
    log(f"wrote {options.out / 'bench.json'} and {options.out / 'bench.md'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``make bench``."""
    sys.exit(asyncio.run(run(parse_args(argv))))


if __name__ == "__main__":
    main()
