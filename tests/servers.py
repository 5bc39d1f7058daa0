"""Real servers for tests: in-process (thread, injected clock) and `callbridge serve` processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from callbridge.api.auth import issue_token
from callbridge.app import create_app
from callbridge.serving import proxy_options
from callbridge.settings import load_settings

TEST_KEYS = {
    "ak_test_one": "s1-" + "a" * 40,
    "ak_test_two": "s2-" + "b" * 40,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """Wall clock that tests move forward by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def base_config(tmp_path: Path, port: int) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "data"),
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"create_dev_key": False},
        "telemetry": {"log_format": "json"},
    }


@dataclass
class InProcessServer:
    """callbridge running in a background thread with its own event loop."""

    app: Any
    port: int
    clock: Any
    thread: threading.Thread | None = None
    server: uvicorn.Server | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def token(self, apikey: str = "ak_test_one", **kwargs: Any) -> str:
        return issue_token(apikey, TEST_KEYS[apikey], now=self.clock(), **kwargs)

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            ws="websockets-sansio",
            lifespan="on",
            access_log=False,
            log_config=None,
            loop="asyncio",
            **proxy_options(self.runtime.settings.server),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=15)


def start_in_process(
    tmp_path: Path,
    overrides: dict[str, Any] | None = None,
    clock: Any = None,
    port: int | None = None,
    **kwargs: Any,
) -> InProcessServer:
    port = port or free_port()
    data = base_config(tmp_path, port)
    data["auth"]["api_keys"] = [{"apikey": k, "secret": s} for k, s in TEST_KEYS.items()]
    settings = load_settings(overrides=_merge(data, overrides or {}))
    clock = clock or time.time
    server = InProcessServer(create_app(settings, clock=clock, **kwargs), port, clock)
    server.start()
    return server


@contextmanager
def running_in_process(
    tmp_path: Path, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> Iterator[InProcessServer]:
    """:func:`start_in_process`, stopped on exit."""
    running = start_in_process(tmp_path, overrides=overrides, **kwargs)
    try:
        yield running
    finally:
        running.stop()


def provider_api_overrides(enabled: list[str], provider: str, api_base_url: str) -> dict[str, Any]:
    """Settings overrides enabling ``enabled`` providers, with ``provider``'s REST API (its
    hang-ups) at ``api_base_url``, e.g. a :class:`~tests.fake_provider_api.FakeProviderApi`."""
    return {
        "providers": {
            "enabled": enabled,
            "config": {provider: {"api_base_url": api_base_url}},
        }
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


@dataclass
class ServerProcess:
    """`callbridge serve --config FILE` as a child process."""

    config_path: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, timeout=timeout)

    def token(self) -> str:
        done = run_cli("token", "--config", str(self.config_path))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "callbridge.cli", *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, timeout=timeout, env=_child_env()
    )


def popen_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )


def _child_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CALLBRIDGE_") or k == "CALLBRIDGE_REQUIRE_SERVICES"
    }


def start_process(
    tmp_path: Path, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    port = free_port()
    data = base_config(tmp_path, port)
    data["auth"]["create_dev_key"] = True
    data = _merge(data, extra or {})
    config_path = tmp_path / "callbridge.yaml"
    config_path.write_text(yaml.safe_dump(data))
    log_path = tmp_path / "server.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        cli_command("serve", "--config", str(config_path)),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**_child_env(), **(env or {})},
    )
    server = ServerProcess(config_path, port, process, log_path)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError("server exited early:\n" + server.logs())
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("server did not become healthy:\n" + server.logs())
        time.sleep(0.1)
    return server


@dataclass
class Connector:
    id: str
    webhook_url: str


def create_connector(base_url: str, token: str, **fields: Any) -> Connector:
    body = {"provider": "twilio", **fields}
    response = httpx.post(
        f"{base_url}/v2/connectors", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return Connector(data["id"], data["webhookUrl"])


def iter_lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())
