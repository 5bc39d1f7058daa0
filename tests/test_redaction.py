"""Secrets never reach a log line: the one redactor, structlog, the standard logging module, an
app embedded in a host's uvicorn, and `callbridge serve`.

The end-to-end tests drive every error path over loopback (unknown and malformed webhooks, bad
and expired tokens, participant and media sockets with bad tokens and refs, a real Twilio call
whose ref is then reused, and a routing plugin that raises with secrets in its message and its
local variables), capture everything the process prints and look for every secret used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from uvicorn.logging import AccessFormatter
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callbridge.api.auth import issue_token
from callbridge.app import create_app
from callbridge.logging import configure_logging
from callbridge.plugins import build_plugin_manager
from callbridge.redaction import (
    MAX_REMEMBERED_SECRETS,
    REDACTED,
    exception_from_record,
    install_redaction,
    redact,
    redact_value,
    remember_secrets,
)
from callbridge.settings import load_settings
from callbridge_plugins.simulators.twilio import twilio_signature
from tests import twilio_wire as tw
from tests.servers import TEST_KEYS, base_config, free_port, start_process

JWT = issue_token("ak_redaction_unit", "u" * 40, now=1_700_000_000)
WEBHOOK_KEY = "whk_" + "Q7" * 16
CREDENTIAL = "cred-" + "9f" * 14
ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "redaction_test_auth_token_0f3c9a"
CREDENTIALS = {"accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN}
ROOM = "redaction-room"
LOCAL_MARKER = "LOCAL-VARIABLES-ARE-RENDERED"
TRIGGER_NUMBER = "+15550006666"

PROBE_MODULE = "callbridge_redaction_probe"
PROBE_SOURCE = f'''
"""A routing strategy that fails on purpose, with secrets in its message and its locals."""

import json
from pathlib import Path

from pydantic import BaseModel

from callbridge import hookimpl
from callbridge.plugin_types import RoutingStrategyPlugin


class ProbeConfig(BaseModel):
    secrets_file: str


class ProbeFailure(RuntimeError):
    pass


class RaisingStrategy:
    name = "raising"

    def __init__(self, config, context):
        self.secrets_file = Path(config.secrets_file)

    async def route(self, context):
        if context.call.from_number != "{TRIGGER_NUMBER}":
            return None
        held = json.loads(self.secrets_file.read_text())
        webhook_key, jwt, credential = held["webhook_key"], held["jwt"], held["credential"]
        marker = "{LOCAL_MARKER}"
        raise ProbeFailure(f"routing failed for {{webhook_key}} with {{jwt}} and {{credential}}")


@hookimpl
def callbridge_routing_strategies():
    yield RoutingStrategyPlugin(
        name="raising",
        factory=RaisingStrategy,
        config_model=ProbeConfig,
        description="fails on purpose",
    )
'''


# --------------------------------------------------------------------------- the redactor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"POST /v2/hooks/twilio/{WEBHOOK_KEY} 404", f"POST /v2/hooks/twilio/{REDACTED} 404"),
        ("POST /v2/hooks/plivo/not-even-a-key?x=1", f"POST /v2/hooks/plivo/{REDACTED}?x=1"),
        (f"KeyError: '{WEBHOOK_KEY}'", f"KeyError: 'whk_{REDACTED}'"),
        (f"key={WEBHOOK_KEY[:12]}", f"key=whk_{REDACTED}"),
    ],
)
def test_webhook_keys_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '127.0.0.1:1 - "WebSocket /ingest/twilio/Xy_9-abcDEF123" 403',
            f'127.0.0.1:1 - "WebSocket /ingest/twilio/{REDACTED}" 403',
        ),
        ("wss://cb.example/ingest/telnyx/Xy_9-abc/", f"wss://cb.example/ingest/telnyx/{REDACTED}/"),
        ("/ingest/twilio?ref=Xy_9-abc&x=1", f"/ingest/twilio?ref={REDACTED}&x=1"),
        ("/v2/rooms/r/participants?token=abc.def", f"/v2/rooms/r/participants?token={REDACTED}"),
        ("/x?a=1&access_token=abc", f"/x?a=1&access_token={REDACTED}"),
        ("claim refused ref=Xy_9-abc", f"claim refused ref={REDACTED}"),
        (
            "{'ref': 'Xy_9-abc', \"token\": \"t\"}",
            f"{{'ref': '{REDACTED}', \"token\": \"{REDACTED}\"}}",
        ),
    ],
)
def test_refs_and_tokens_in_paths_and_queries_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_jwts_and_fragments_of_them_are_redacted() -> None:
    header, payload, signature = JWT.split(".")
    assert redact(f"token {JWT} expired") == f"token {REDACTED} expired"
    assert redact(f"│ jwt = '{JWT[:14]}…' │") == f"│ jwt = '{REDACTED}…' │"
    assert redact(f"payload {payload}") == f"payload {REDACTED}"
    for text in (redact(JWT), redact(f"x{JWT}y")):
        assert header not in text and payload not in text and signature not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: {JWT}", f"Authorization: {REDACTED}"),
        ("authorization: opaque-value-1", f"authorization: {REDACTED}"),
        (
            "{'authorization': 'Bearer sk_live_12345678', 'host': 'x'}",
            f"{{'authorization': 'Bearer {REDACTED}', 'host': 'x'}}",
        ),
        (
            "[(b'host', b'x'), (b'authorization', b'Basic dXNlcjpwYXNz')]",
            f"[(b'host', b'x'), (b'authorization', b'Basic {REDACTED}')]",
        ),
        (
            '{"Proxy-Authorization": "Digest abc"}',
            f'{{"Proxy-Authorization": "Digest {REDACTED}"}}',
        ),
        ("sent Bearer sk_live_12345678 to it", f"sent Bearer {REDACTED} to it"),
    ],
)
def test_authorization_and_bearer_values_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_remembered_secrets_are_redacted_wherever_they_appear() -> None:
    secret = "sEcReT" + secrets.token_hex(8)
    longer = secret + "-and-more"
    remember_secrets([secret, longer, "short"])
    assert redact(f"boom: {secret}!") == f"boom: {REDACTED}!"
    assert redact(f"x{longer}y") == f"x{REDACTED}y", "the longest match goes as a whole"
    assert redact("short values like short are ignored") == "short values like short are ignored"


def test_remembered_secrets_keep_the_most_recent() -> None:
    oldest = "oldest-" + secrets.token_hex(8)
    remember_secrets([oldest])
    remember_secrets("filler-" + secrets.token_hex(8) for _ in range(MAX_REMEMBERED_SECRETS))
    newest = "newest-" + secrets.token_hex(8)
    remember_secrets([newest])
    assert redact(oldest) == oldest
    assert redact(newest) == REDACTED


def test_remembering_and_redacting_from_many_threads() -> None:
    values = [[f"thread{t}-" + secrets.token_hex(8) for _ in range(200)] for t in range(4)]
    failures: list[str] = []

    def work(mine: list[str]) -> None:
        for value in mine:
            remember_secrets([value])
            if redact(f"<{value}>") != f"<{REDACTED}>":
                failures.append(value)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


ORDINARY_LINES = [
    "call routed call_id=call_abcdefghij0123456789 connector_id=cn_abcdefghij012345",
    "room_id=support-room.eu:1 provider=twilio strategy=room_query codec=pcmu",
    "callbridge ready api_url=https://cb.example.test ingest_url=wss://cb.example.test/ingest",
    "GET /v2/connectors?limit=10&offset=20 HTTP/1.1 200",
    "route /v2/hooks/{provider:str}/{webhook_key:str} and /ingest/{provider:str}/{ref:str}",
    "Missing Authorization header; expected a bearer token (Bearer authentication)",
    "max_token=5 preferred=3 tokens=7 refs=2 trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    "database schema is up to date (sqlite) at /var/lib/callbridge/data/callbridge.db",
    "webhook rejected reason='X-Twilio-Signature is missing' status=403",
    "participant joined participant_id=p_0a1b2c3d4e5f",
]


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_log_text_is_left_alone(line: str) -> None:
    assert redact(line) == line


def test_redact_is_idempotent() -> None:
    texts = [
        f"Authorization: Bearer {JWT}",
        f"(b'authorization', b'{JWT}')",
        f"/v2/hooks/twilio/{WEBHOOK_KEY}?token={JWT}&ref=abc",
        f"/ingest/twilio/abc {WEBHOOK_KEY}",
    ]
    for text in texts:
        once = redact(text)
        assert redact(once) == once


def test_redact_value_walks_containers_and_keeps_other_values() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    opaque = Opaque()
    value = {
        "path": f"/v2/hooks/twilio/{WEBHOOK_KEY}",
        WEBHOOK_KEY: [JWT, ("ok", 3, None)],
        "n": 1.5,
        "flag": True,
        "object": opaque,
        "error": ValueError(f"bad key {WEBHOOK_KEY}"),
    }
    cleaned = redact_value(value)
    assert cleaned == {
        "path": f"/v2/hooks/twilio/{REDACTED}",
        f"whk_{REDACTED}": [REDACTED, ("ok", 3, None)],
        "n": 1.5,
        "flag": True,
        "object": opaque,
        "error": f"ValueError('bad key whk_{REDACTED}')",
    }


# --------------------------------------------------------------------------- log paths


def _fail_with_secrets() -> None:
    webhook_key, jwt, credential = WEBHOOK_KEY, JWT, CREDENTIAL
    marker = LOCAL_MARKER
    assert marker
    raise RuntimeError(f"cannot route {webhook_key} for {jwt} with {credential}")


def _assert_clean(output: str) -> None:
    for secret in (WEBHOOK_KEY, WEBHOOK_KEY[4:], JWT, *JWT.split("."), CREDENTIAL):
        assert secret not in output
    assert LOCAL_MARKER not in output, "local variables were rendered"
    assert "Traceback (most recent call last)" in output
    assert f"RuntimeError: cannot route whk_{REDACTED} for {REDACTED} with {REDACTED}" in output


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The process's logging and structlog configuration, restored after the test: handlers a
    test binds to its captured streams must not outlive it."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in names
        for logger in [logging.getLogger(name)]
    }
    configured, config = structlog.is_configured(), structlog.get_config()
    try:
        yield
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        install_redaction()  # as the apps of other tests left it


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_configured_structlog_and_stdlib_lines_hold_no_secret(
    log_format: str, restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    remember_secrets([CREDENTIAL])
    configure_logging(log_format, "info")
    try:
        _fail_with_secrets()
    except RuntimeError:
        structlog.get_logger("callbridge.test").exception(
            "structlog failure", path=f"/ingest/twilio/abcRef123?token={JWT}", n=3
        )
        logging.getLogger("callbridge.test").exception(
            "stdlib failure on %s %s", "POST", f"/v2/hooks/twilio/{WEBHOOK_KEY}"
        )
    output = capsys.readouterr().err
    _assert_clean(output)
    assert output.count("Traceback (most recent call last)") == 2
    assert "structlog failure" in output and "stdlib failure on POST" in output
    assert f"/ingest/twilio/{REDACTED}" in output and f"/v2/hooks/twilio/{REDACTED}" in output
    if log_format == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert {line["event"] for line in lines} >= {
            "structlog failure",
            f"stdlib failure on POST /v2/hooks/twilio/{REDACTED}",
        }
        assert all("exception" in line for line in lines)


def test_structlog_defaults_get_plain_redacted_tracebacks(restored_logging: None) -> None:
    structlog.reset_defaults()
    install_redaction()
    install_redaction()
    assert not structlog.is_configured(), "the defaults stay the defaults, redaction added"
    chain = structlog.get_config()["processors"]
    assert sum(isinstance(p, structlog.processors.ExceptionRenderer) for p in chain) == 1
    assert isinstance(chain[-1], structlog.dev.ConsoleRenderer)
    remember_secrets([CREDENTIAL])
    out = io.StringIO()
    log = structlog.wrap_logger(structlog.PrintLogger(out), processors=chain)
    try:
        _fail_with_secrets()
    except RuntimeError:
        log.exception("default chain failure", url=f"/v2/hooks/twilio/{WEBHOOK_KEY}")
    _assert_clean(out.getvalue())
    assert "default chain failure" in out.getvalue()


def test_a_host_chain_with_structured_tracebacks_is_patched(restored_logging: None) -> None:
    """A host's JSON chain whose ``dict_tracebacks`` would render locals gets plain ones."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    )
    install_redaction()
    remember_secrets([CREDENTIAL])
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out), processors=structlog.get_config()["processors"]
    )
    try:
        _fail_with_secrets()
    except RuntimeError:
        log.exception("host chain failure")
    _assert_clean(out.getvalue())
    line = json.loads(out.getvalue())
    assert line["event"] == "host chain failure" and isinstance(line["exception"], str)


def test_stdlib_records_are_redacted_for_any_formatter() -> None:
    install_redaction()
    remember_secrets([CREDENTIAL])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("callbridge.test.stdlib")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            _fail_with_secrets()
        except RuntimeError:
            logger.exception("failed on %s %s", "POST", f"/v2/hooks/twilio/{WEBHOOK_KEY}")
        logger.warning("sent %s", httpx.URL(f"http://h/v2/rooms/r/participants?token={JWT}"))
        logger.warning("%(who)s used %(what)s", {"who": "someone", "what": CREDENTIAL})
        logger.warning(ValueError(f"key {WEBHOOK_KEY}"))
        logger.warning("stack", stack_info=True, extra={"x": 1})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    output = out.getvalue()
    _assert_clean(output)
    assert f"ERROR callbridge.test.stdlib failed on POST /v2/hooks/twilio/{REDACTED}" in output
    assert f"sent http://h/v2/rooms/r/participants?token={REDACTED}" in output
    assert f"someone used {REDACTED}" in output
    assert f"key whk_{REDACTED}" in output
    assert "Stack (most recent call last)" in output


def test_uvicorn_access_lines_keep_their_fields() -> None:
    install_redaction()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    logger = logging.getLogger("callbridge.test.access")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for path in (f"/v2/hooks/twilio/{WEBHOOK_KEY}", f"/x?authorization=abc&token={JWT}"):
            logger.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", path, "1.1", 404)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert out.getvalue().splitlines() == [
        f'127.0.0.1:5 - "GET /v2/hooks/twilio/{REDACTED} HTTP/1.1" 404 Not Found',
        f'127.0.0.1:5 - "GET /x?authorization={REDACTED}&token={REDACTED} HTTP/1.1" 404 Not Found',
    ]


def test_a_host_processor_formatter_gets_the_redacted_traceback_without_locals() -> None:
    install_redaction()
    remember_secrets([CREDENTIAL])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),  # Rich, locals shown if it could
            ],
            foreign_pre_chain=[exception_from_record],
        )
    )
    logger = logging.getLogger("callbridge.test.processor_formatter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            _fail_with_secrets()
        except RuntimeError:
            logger.exception("host formatter failure")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    _assert_clean(out.getvalue())


def test_the_record_factory_is_chained_once() -> None:
    seen: list[str] = []
    previous = logging.getLogRecordFactory()

    def host_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = logging.LogRecord(*args, **kwargs)
        seen.append(record.getMessage())
        return record

    logging.setLogRecordFactory(host_factory)
    try:
        install_redaction()
        installed = logging.getLogRecordFactory()
        install_redaction()
        assert logging.getLogRecordFactory() is installed
        record = logging.getLogger("callbridge.test").makeRecord(
            "x", logging.INFO, "f", 1, "key %s", (WEBHOOK_KEY,), None
        )
        assert record.getMessage() == f"key whk_{REDACTED}"
        assert seen == [f"key {WEBHOOK_KEY}"], "the host's factory still runs, first"
    finally:
        logging.setLogRecordFactory(previous)


# --------------------------------------------------------------------------- over loopback


@dataclass
class Run:
    """What an error-path run used: every secret, and facts the log lines must show."""

    secrets: list[str]
    room: str = ROOM


def _key_of(webhook_url: str) -> str:
    return webhook_url.rsplit("/", 1)[1]


async def _signed_post(client: httpx.AsyncClient, url: str, form: dict[str, str]) -> httpx.Response:
    headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, form)}
    return await client.post(url, data=form, headers=headers)


async def _refused(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=5, **kwargs):
            pass
    return caught.value.response.status_code


async def drive_error_paths(base_url: str, apikey: str, api_secret: str, secrets_file: Path) -> Run:
    """Every error path, plus one real call, against a running server at ``base_url``."""
    ws_base = "ws" + base_url.removeprefix("http")
    token = issue_token(apikey, api_secret)
    expired = issue_token(apikey, api_secret, expires_in=60, now=time.time() - 3600)
    bad_token = "not-a-jwt-" + secrets.token_urlsafe(16)
    unknown_key = "whk_" + secrets.token_hex(16)
    unknown_refs = [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]
    auth = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        created = await client.post(
            "/v2/connectors",
            json={
                "provider": "twilio",
                "defaultRoomId": ROOM,
                "verifySignatures": True,
                "credentials": CREDENTIALS,
            },
            headers=auth,
        )
        assert created.status_code == 201, created.text
        signed_url = created.json()["data"]["webhookUrl"]
        plain = await client.post(
            "/v2/connectors", json={"provider": "twilio", "defaultRoomId": ROOM}, headers=auth
        )
        assert plain.status_code == 201, plain.text
        plain_url = plain.json()["data"]["webhookUrl"]
        held = {"webhook_key": _key_of(signed_url), "jwt": token, "credential": AUTH_TOKEN}
        await asyncio.to_thread(secrets_file.write_text, json.dumps(held))

        assert (await client.get("/v2/connectors")).status_code == 401
        for header in (f"Bearer {bad_token}", expired, f"Bearer {expired}"):
            listed = await client.get("/v2/connectors", headers={"Authorization": header})
            assert listed.status_code == 401
        assert (await client.get(f"/v2/connectors?token={token}")).status_code == 401

        form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
        unknown = await client.post(f"/v2/hooks/twilio/{unknown_key}?token={token}", data=form)
        assert unknown.status_code == 404
        for body, content_type in (
            (b"\xff\xfe%%%&CallSid", "application/x-www-form-urlencoded"),
            (b'{"CallSid": ', "application/json"),
            (b"CallSid=&From=", "application/x-www-form-urlencoded"),
        ):
            malformed = await client.post(
                plain_url, content=body, headers={"content-type": content_type}
            )
            assert 400 <= malformed.status_code < 500, malformed.text
        assert (await client.post(signed_url, data=form)).status_code == 403

        deep = b'{"a":' + b"[" * 20000 + b"]" * 20000 + b"}"
        json_type = {**auth, "content-type": "application/json"}
        assert (
            await client.post("/v2/connectors", content=deep, headers=json_type)
        ).status_code == 400

        rooms = f"{ws_base}/v2/rooms/{ROOM}/participants"
        assert await _refused(f"{rooms}?token={bad_token}") == 403
        async with connect(f"{rooms}?token={token}", open_timeout=5) as participant:
            assert json.loads(await participant.recv())["event"] == "joined"

        assert await _refused(f"{ws_base}/ingest/twilio/{unknown_refs[0]}") == 403
        assert await _refused(f"{ws_base}/ingest/twilio?ref={unknown_refs[1]}") == 403

        answer = await _signed_post(client, signed_url, form)
        assert answer.status_code == 200 and "<Stream" in answer.text, answer.text
        start = answer.text.index('url="') + len('url="')
        stream_url = answer.text[start : answer.text.index('"', start)]
        ref = stream_url.rsplit("/", 1)[1]
        handshake = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, stream_url)}
        foreign = stream_url.replace("/ingest/twilio/", "/ingest/plivo/")
        assert await _refused(foreign, additional_headers=handshake) == 403
        stream_sid = "MZ" + secrets.token_hex(16)
        async with connect(stream_url, additional_headers=handshake, open_timeout=5) as media:
            await media.send(tw.connected())
            await media.send(tw.start(stream_sid, form["CallSid"]))
            await media.send(deep.decode())
            await media.send(tw.stop(stream_sid, form["CallSid"], 2))
        assert await _refused(stream_url, additional_headers=handshake) == 403
        assert (await _signed_post(client, signed_url, form)).status_code == 409

        unsigned_form = tw.voice_webhook_form(AccountSid=ACCOUNT_SID)
        unsigned = await _signed_post(client, signed_url, unsigned_form)
        start = unsigned.text.index('url="') + len('url="')
        unsigned_url = unsigned.text[start : unsigned.text.index('"', start)]
        assert await _refused(unsigned_url) == 403, "the handshake's signature is missing"

        failing = tw.voice_webhook_form(AccountSid=ACCOUNT_SID, From=TRIGGER_NUMBER)
        crashed = await _signed_post(client, signed_url, failing)
        assert crashed.status_code == 500
        assert crashed.json() == {"message": "Internal server error"}

    used = [
        unknown_key,
        _key_of(signed_url),
        _key_of(plain_url),
        token,
        expired,
        bad_token,
        *unknown_refs,
        ref,
        unsigned_url.rsplit("/", 1)[1],
        *CREDENTIALS.values(),
        api_secret,
    ]
    return Run(secrets=[*used, *(part for jwt in (token, expired) for part in jwt.split("."))])


def assert_no_secret_and_expected_lines(output: str, run: Run) -> None:
    leaked = [secret for secret in run.secrets if secret in output]
    assert leaked == [], f"secrets in the logs: {leaked}"
    assert LOCAL_MARKER not in output, "local variables were rendered"
    expected = [
        # access log: HTTP requests, then WebSocket handshakes
        f'"GET /v2/connectors?token={REDACTED} HTTP/1.1" 401',
        f'"POST /v2/hooks/twilio/{REDACTED}?token={REDACTED} HTTP/1.1" 404',
        f'"POST /v2/hooks/twilio/{REDACTED} HTTP/1.1" 400',
        f'"POST /v2/hooks/twilio/{REDACTED} HTTP/1.1" 500',
        f'"WebSocket /v2/rooms/{run.room}/participants?token={REDACTED}" 403',
        f'"WebSocket /v2/rooms/{run.room}/participants?token={REDACTED}" [accepted]',
        f'"WebSocket /ingest/twilio/{REDACTED}" 403',
        f'"WebSocket /ingest/twilio?ref={REDACTED}" 403',
        f'"WebSocket /ingest/twilio/{REDACTED}" [accepted]',
        # the 500, with its plain traceback
        f"unhandled ProbeFailure on POST /v2/hooks/twilio/{REDACTED}",
        "Traceback (most recent call last)",
        f"ProbeFailure: routing failed for whk_{REDACTED} with {REDACTED} and {REDACTED}",
        # structlog lines
        "webhook rejected",
        "media claim refused",
        "call routed",
    ]
    missing = [line for line in expected if line not in output]
    assert missing == [], f"expected log lines missing: {missing}\n{output}"


def _load_probe(tmp_path: Path) -> types.ModuleType:
    path = tmp_path / f"{PROBE_MODULE}.py"
    path.write_text(PROBE_SOURCE)
    spec = importlib.util.spec_from_file_location(PROBE_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def served_with_uvicorn_defaults(app: Any, port: int) -> Iterator[str]:
    """``app`` in uvicorn as a host would run it: its default logging config, access log on."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        lifespan="on",
        access_log=True,
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def test_an_embedded_app_logs_no_secret_on_any_error_path(
    tmp_path: Path, restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    # A host's usual set-up: a root handler for its own records. structlog's default
    # PrintLogger writes to the sys.stdout of its import (pytest's session capture here).
    root_handler = logging.StreamHandler(sys.stderr)
    root_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(root_handler)
    logging.getLogger().setLevel(logging.INFO)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))

    pm = build_plugin_manager()
    pm.register(_load_probe(tmp_path), name=PROBE_MODULE)
    secrets_file = tmp_path / "probe-secrets.json"
    port = free_port()
    data = base_config(tmp_path, port)
    data["auth"]["api_keys"] = [{"apikey": k, "secret": s} for k, s in TEST_KEYS.items()]
    data["providers"] = {
        "enabled": ["twilio"],
        "config": {"twilio": {"api_base_url": "http://127.0.0.1:9"}},
    }
    data["routing"] = {
        "chain": ["raising", "room_query", "default_room"],
        "config": {"raising": {"secrets_file": str(secrets_file)}},
    }
    app = create_app(load_settings(overrides=data, environ={}), pm=pm)
    with served_with_uvicorn_defaults(app, port) as base_url:
        run = await drive_error_paths(
            base_url, "ak_test_one", TEST_KEYS["ak_test_one"], secrets_file
        )
    out, err = capfd.readouterr()
    assert_no_secret_and_expected_lines(out + err, run)


@pytest.mark.e2e
async def test_callbridge_serve_logs_no_secret_on_any_error_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_dir = tmp_path / "probe"
    dist_info = probe_dir / "callbridge_redaction_probe-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (probe_dir / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: callbridge-redaction-probe\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[callbridge]\nredaction_probe = {PROBE_MODULE}\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))
    )
    api_secret = "s-" + secrets.token_urlsafe(32)
    secret_path = tmp_path / "api-secret"
    secret_path.write_text(api_secret)
    secrets_file = tmp_path / "probe-secrets.json"
    server = start_process(
        tmp_path,
        {
            "telemetry": {"log_format": "console"},
            "server": {"access_log": True},
            "auth": {
                "api_keys": [{"apikey": "ak_redaction", "secret": {"$file": str(secret_path)}}]
            },
            "providers": {
                "enabled": ["twilio"],
                "config": {"twilio": {"api_base_url": "http://127.0.0.1:9"}},
            },
            "plugins": {"load": ["redaction_probe"]},
            "routing": {
                "chain": ["raising", "room_query", "default_room"],
                "config": {"raising": {"secrets_file": str(secrets_file)}},
            },
        },
    )
    try:
        run = await drive_error_paths(server.url, "ak_redaction", api_secret, secrets_file)
    finally:
        server.stop()
    assert_no_secret_and_expected_lines(server.logs(), run)
