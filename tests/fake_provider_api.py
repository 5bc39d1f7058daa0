"""A local stand-in for the providers' REST APIs: records every request, answers as configured.

Provider plugins reach it through their configurable ``api_base_url``. Default answers are the
providers' success answers to a hang-up; :meth:`FakeProviderApi.answer` changes them (e.g. a
404 with Twilio's ``20404`` body to test "already ended").
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.servers import free_port


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any


DEFAULT_RULES = [
    ("POST", r"/2010-04-01/Accounts/[^/]+/Calls/[^/]+\.json", 200, {"status": "completed"}),
    ("DELETE", r"/v1/Account/[^/]+/Call/[^/]+/", 204, None),
    ("POST", r"/v2/calls/[^/]+/actions/hangup", 200, {"data": {"result": "ok"}}),
    ("POST", r"/v2/texml/Accounts/[^/]+/Calls/[^/]+", 200, {"status": "completed"}),
]


@dataclass
class FakeProviderApi:
    """The fake API's state; use :func:`running_fake_provider_api` to serve it."""

    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, method: str, path_regex: str, status: int, body: Any = None) -> None:
        """Answer requests matching ``method`` and ``path_regex`` with ``status`` and ``body``."""
        with self._lock:
            self.rules.insert(0, _Rule(method, re.compile(path_regex), status, body))

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        with self._lock:
            return list(self.requests)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
            rules = list(self.rules) + [
                _Rule(m, re.compile(p), s, b) for m, p, s, b in DEFAULT_RULES
            ]
        status, payload = 404, {"message": "no such route in the fake API"}
        for rule in rules:
            if rule.method == request.method and rule.pattern.fullmatch(request.path):
                status, payload = rule.status, rule.body
                break
        data = b"" if payload is None else json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json")] if data else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


@contextmanager
def running_fake_provider_api() -> Iterator[FakeProviderApi]:
    api = FakeProviderApi(port=free_port())
    config = uvicorn.Config(api, host="127.0.0.1", port=api.port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake provider API did not start")
        time.sleep(0.02)
    try:
        yield api
    finally:
        server.should_exit = True
        thread.join(timeout=10)
