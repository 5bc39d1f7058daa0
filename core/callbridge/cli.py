"""The ``callbridge`` command: serve, token, config check and schema, call (provider simulator),
room join, routes explain, webhooks verify."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from callbridge.settings import ConfigError, Settings, load_settings


def _settings(config: str | None) -> Settings:
    return load_settings(config or os.environ.get("CALLBRIDGE_CONFIG") or None)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from callbridge.app import create_app
    from callbridge.logging import configure_logging
    from callbridge.serving import DrainingServer, proxy_options

    settings = _settings(args.config)
    configure_logging(settings.telemetry.log_format, settings.telemetry.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        ws="websockets-sansio",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=settings.server.access_log,
        log_config=None,
        ws_max_size=settings.server.max_socket_message_bytes,
        timeout_graceful_shutdown=10,
        **proxy_options(settings.server),
    )
    DrainingServer(config, app.state.drain).run()
    return 0


async def _token(
    settings: Settings, apikey: str | None, ttl: int, room_id: str | None = None
) -> str:
    from callbridge.api.auth import issue_token
    from callbridge.store.db import Database
    from callbridge.store.repository import transaction

    db = Database(settings.database_url)
    try:
        await db.migrate()
        async with transaction(db) as repo:
            key = await repo.get_api_key(apikey) if apikey else await repo.first_api_key()
    finally:
        await db.dispose()
    if key is None:
        raise ConfigError(
            f"API key {apikey!r} not found"
            if apikey
            else "no API key yet: start the server once (`make serve`) to create a development key"
        )
    return issue_token(key.apikey, key.secret, expires_in=ttl, room_id=room_id)


_DURATION = re.compile(r"^([0-9]{1,9})([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds from ``3600``, ``90s``, ``15m``, ``1h`` or ``7d`` (argparse type)."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 15m, 1h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def cmd_token(args: argparse.Namespace) -> int:
    from callbridge.store.ids import is_room_id

    settings = _settings(args.config)
    if args.room is not None and not is_room_id(args.room):
        raise ConfigError(f"--room {args.room!r} is not a room id")
    ttl = args.ttl or settings.auth.token_ttl_seconds
    print(asyncio.run(_token(settings, args.apikey, ttl, args.room)))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import time

    from callbridge.api.config_connectors import check_config_connectors
    from callbridge.protocols import PluginContext
    from callbridge.registry import Registry
    from callbridge.routing.config import config_rules
    from callbridge.runtime import plugin_manager_for, select_plugins

    settings = load_settings(args.file)
    selections = select_plugins(settings, Registry(plugin_manager_for(settings)))
    context = PluginContext(
        data_dir=settings.data_dir,
        clock=time.time,
        public_api_url=settings.server.api_url,
        public_ingest_url=settings.server.ingest_url,
    )
    providers = {  # provider objects are plain values: building them touches nothing
        s.name: s.record.factory(s.config, context) for s in selections if s.kind == "provider"
    }
    rules = config_rules(settings)
    connectors = check_config_connectors(settings, providers, rules)
    print(f"{args.file}: OK ({len(rules)} routing rules, {len(connectors)} connectors)")
    for selection in selections:
        record = selection.record
        source = f"[{record.distribution}]"
        print(f"  {selection.kind:<17} {selection.name:<14} {record.description} {source}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from callbridge.config_schema import (
        chart_values_schema,
        dumps,
        standalone_config_schema,
        write_chart_schema,
    )

    if args.chart is None:
        print(dumps(standalone_config_schema()), end="")
        return 0
    path = Path(args.chart) / "values.schema.json"
    try:
        if args.check:
            if path.read_text(encoding="utf-8") != dumps(chart_values_schema(path.parent)):
                print(
                    f"{path} is stale: run callbridge config schema --chart {args.chart}",
                    file=sys.stderr,
                )
                return 1
            print(f"{path} is up to date")
            return 0
        changed = write_chart_schema(path.parent)
    except (OSError, ValueError) as exc:
        print(f"callbridge: cannot update {path}: {exc}", file=sys.stderr)
        return 2
    print(f"{path} {'updated' if changed else 'already up to date'}")
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from callbridge.clients.call import CallOptions
    from callbridge.plugins import build_plugin_manager
    from callbridge.registry import Registry

    registry = Registry(build_plugin_manager())
    record = registry.get("provider", args.provider, "--provider")
    simulator = getattr(record, "simulator", None)
    if simulator is None:
        raise ConfigError(f"--provider: provider {args.provider!r} ships no simulator")
    options = CallOptions(
        webhook_url=args.webhook_url,
        provider=args.provider,
        from_number=args.from_number,
        to_number=args.to_number,
        tone_hz=args.tone,
        play_path=args.play,
        record_path=args.record,
        seconds=args.seconds,
        dtmf=args.dtmf or "",
        method=args.method,
        credentials=dict(args.credential or []),
    )
    summary = asyncio.run(simulator(options))
    _print_summary(summary, args.json)
    return 0 if summary.outcome.startswith("completed") else 1


def cmd_room_join(args: argparse.Namespace) -> int:
    from callbridge.clients.room import RoomJoinOptions, join_room

    settings = _settings(args.config)
    token = args.token or os.environ.get("CALLBRIDGE_TOKEN")
    if not token:
        token = asyncio.run(_token(settings, None, 3600))
    options = RoomJoinOptions(
        server_url=args.server or settings.server.api_url,
        room_id=args.room,
        token=token,
        tone_hz=args.tone,
        play_path=args.play,
        record_path=args.record,
        seconds=args.seconds,
    )
    summary = asyncio.run(join_room(options))
    _print_summary(summary, args.json)
    return 0 if summary.outcome.startswith("completed") else 1


def cmd_routes_explain(args: argparse.Namespace) -> int:
    from callbridge.clients.routes import ExplainFailed, ExplainOptions, explain, render

    settings = _settings(args.config)
    token = args.token or os.environ.get("CALLBRIDGE_TOKEN")
    if not token:
        token = asyncio.run(_token(settings, None, 3600))
    options = ExplainOptions(
        server_url=args.server or settings.server.api_url,
        token=token,
        connector_id=args.connector,
        from_number=args.from_number,
        to_number=args.to_number,
        room_id=args.room_id,
        at=args.at,
    )
    try:
        data = explain(options)
    except ExplainFailed as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0


def cmd_webhooks_verify(args: argparse.Namespace) -> int:
    import httpx

    from callbridge.webhooks.verify import VerifyError, verify_standard, verify_videosdk

    body = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
    headers = dict(args.header or [])
    try:
        if args.secret or (args.public_key and args.public_key.startswith("whpk_")):
            valid = verify_standard(body, headers, secret=args.secret, public_key=args.public_key)
        else:
            pem = args.public_key
            if pem is None:
                server = args.server or _settings(args.config).server.api_url
                response = httpx.get(f"{server.rstrip('/')}/v2/public/rsa-public-key", timeout=10)
                pem = response.json()["data"]["publicKey"]
            elif not pem.startswith("-----"):
                pem = Path(pem).read_text(encoding="utf-8")
            valid = verify_videosdk(body, headers, pem)
    except (VerifyError, OSError, httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"callbridge: cannot verify: {exc}", file=sys.stderr)
        return 2
    print("valid" if valid else "INVALID")
    return 0 if valid else 1


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME: VALUE")
    return name.strip().lower(), value.strip()


def _print_summary(summary: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict()))  # type: ignore[attr-defined]
    else:
        print(summary.format())  # type: ignore[attr-defined]


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def _add_audio_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tone", type=float, metavar="HZ", help="send a sine tone")
    source.add_argument("--play", metavar="WAV", help="send a WAV file")
    parser.add_argument("--record", metavar="WAV", help="write what is heard to a WAV file")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to stay (default 5)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: embedded defaults)")
    serve.set_defaults(handler=cmd_serve)

    token = commands.add_parser("token", help="print an API token the server accepts")
    token.add_argument("--config", metavar="FILE")
    token.add_argument("--apikey", help="API key id (default: the first key, e.g. the dev key)")
    token.add_argument(
        "--ttl", type=duration, help="lifetime: seconds, or with a unit (15m, 1h, 7d)"
    )
    token.add_argument(
        "--room",
        metavar="ROOM",
        help="a room token: it may only join ROOM (participant and WebRTC sockets), no API",
    )
    token.set_defaults(handler=cmd_token)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a YAML file, list its plugins")
    check.add_argument("file")
    check.set_defaults(handler=cmd_config_check)
    schema = config_commands.add_parser(
        "schema", help="print the config file's JSON schema, or write it into the Helm chart"
    )
    schema.add_argument(
        "--chart",
        metavar="DIR",
        help="update the config part of DIR/values.schema.json (e.g. deploy/helm/callbridge)",
    )
    schema.add_argument(
        "--check", action="store_true", help="with --chart: fail if it is stale, write nothing"
    )
    schema.set_defaults(handler=cmd_config_schema)

    call = commands.add_parser("call", help="simulate a provider call against a webhook URL")
    call.add_argument("--webhook-url", required=True)
    call.add_argument("--provider", default="twilio")
    call.add_argument("--from", dest="from_number", default="+14155550100")
    call.add_argument("--to", dest="to_number", default="+14155550199")
    call.add_argument("--dtmf", metavar="DIGITS", help="key presses to send after 1 s")
    call.add_argument(
        "--method", choices=["POST", "GET"], default="POST", help="voice webhook HTTP method"
    )
    call.add_argument(
        "--credential",
        action="append",
        type=_key_value,
        metavar="NAME=VALUE",
        help="provider credential to sign requests with, e.g. authToken=… (repeatable)",
    )
    _add_audio_options(call)
    call.set_defaults(handler=cmd_call)

    room = commands.add_parser("room", help="room tools")
    room_commands = room.add_subparsers(dest="room_command", required=True)
    join = room_commands.add_parser("join", help="join a local room as a participant")
    join.add_argument("room")
    join.add_argument("--server", help="server URL (default: the configured public API URL)")
    join.add_argument("--token", help="API token (default: $CALLBRIDGE_TOKEN or the local dev key)")
    join.add_argument("--config", metavar="FILE")
    _add_audio_options(join)
    join.set_defaults(handler=cmd_room_join)

    routes = commands.add_parser("routes", help="routing tools")
    routes_commands = routes.add_subparsers(dest="routes_command", required=True)
    why = routes_commands.add_parser("explain", help="why a call would go where it goes")
    why.add_argument("--connector", required=True, metavar="ID", help="connector id")
    why.add_argument("--from", dest="from_number", metavar="NUMBER", help="caller")
    why.add_argument("--to", dest="to_number", metavar="NUMBER", help="called number")
    why.add_argument("--room-id", help="the webhook URL's roomId parameter, if any")
    why.add_argument("--at", metavar="ISO8601", help="when the call happens (default: now)")
    why.add_argument("--server", help="server URL (default: the configured public API URL)")
    why.add_argument("--token", help="API token (default: $CALLBRIDGE_TOKEN or the local dev key)")
    why.add_argument("--config", metavar="FILE")
    why.add_argument("--json", action="store_true", help="print the server's JSON")
    why.set_defaults(handler=cmd_routes_explain)

    webhooks = commands.add_parser("webhooks", help="webhook tools")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    verify = webhook_commands.add_parser("verify", help="verify a received webhook's signature")
    verify.add_argument("--body", required=True, metavar="FILE", help="the raw body (- = stdin)")
    verify.add_argument(
        "--header", action="append", type=_header, metavar="'NAME: VALUE'", help="repeatable"
    )
    verify.add_argument(
        "--public-key",
        metavar="PEM|FILE|whpk_…",
        help="RSA public key (PEM text or file) or a Standard Webhooks whpk_ key "
        "(default: fetched from the server's /v2/public/rsa-public-key)",
    )
    verify.add_argument("--secret", metavar="whsec_…", help="the endpoint secret (HMAC)")
    verify.add_argument("--server", help="server URL to fetch the public key from")
    verify.add_argument("--config", metavar="FILE")
    verify.set_defaults(handler=cmd_webhooks_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"callbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
