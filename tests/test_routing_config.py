"""Routing rules and connectors in YAML: checked like the API's when the server is built, with
errors that name the entry and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callbridge.app import create_app
from callbridge.routing.config import config_rules
from callbridge.settings import ConfigError, load_settings

ROOM = {"type": "room", "roomId": "r"}
KEY = {"apikey": "ak_main", "secret": "s" * 40}


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_settings(
        overrides={"data_dir": str(tmp_path), "auth": {"api_keys": [KEY]}, **overrides},
        environ={},
    )


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ([{"dispatch": ROOM}], r"routing_rules\[0\]\.id: required"),
        (
            [{"id": "a", "dispatch": ROOM}, {"id": "a", "dispatch": ROOM}],
            r"\[1\]\.id: 'a' is used twice",
        ),
        (
            [{"id": "a", "dispatch": ROOM, "transport": "agent"}],
            r"routing_rules\[0\]\.transport: must be one of: local",
        ),
        ([{"id": "a", "dispatch": {"type": "room"}}], r"routing_rules\[0\]: .*roomId"),
        ([{"id": "a", "dispatch": ROOM, "priority": "high"}], r"routing_rules\[0\]: priority"),
        (
            [
                {"id": "a", "match": {"to": ["+14155550100"]}, "dispatch": ROOM},
                {
                    "id": "b",
                    "match": {"to": ["(415) 555-0100"], "defaultCountry": "US"},
                    "dispatch": ROOM,
                },
            ],
            "b has the same match and priority as a",
        ),
    ],
)
def test_bad_yaml_rules_name_the_entry(
    tmp_path: Path, rules: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_rules(_settings(tmp_path, routing_rules=rules))


@pytest.mark.parametrize(
    ("connector", "problem"),
    [
        ({"provider": "twilio", "webhookKey": "whk_" + "a" * 32}, r"connectors\[0\]\.id: required"),
        (
            {"id": "cn_x", "provider": "twilio", "webhookKey": "short"},
            r"connectors\[0\]\.webhookKey",
        ),
        (
            {
                "id": "cn_x",
                "provider": "twilio",
                "apikey": "ak_other",
                "webhookKey": "whk_" + "a" * 32,
            },
            r"\.apikey: must be one of auth\.api_keys",
        ),
        ({"id": "cn_x", "provider": "acme", "webhookKey": "whk_" + "a" * 32}, r"\.provider"),
        (
            {"id": "cn_x", "provider": "twilio", "webhookKey": "whk_" + "a" * 32, "codec": "L16"},
            r"connectors\[0\]\.codec",
        ),
        (
            {
                "id": "cn_x",
                "provider": "twilio",
                "webhookKey": "whk_" + "a" * 32,
                "defaultRuleId": "nope",
            },
            r"\.defaultRuleId: must name a rule",
        ),
        (
            {"id": "cn_x", "provider": "twilio", "webhookKey": "whk_" + "a" * 32, "bogus": 1},
            r"connectors\[0\]: .*bogus",
        ),
    ],
)
def test_bad_yaml_connectors_name_the_entry(
    tmp_path: Path, connector: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        create_app(_settings(tmp_path, connectors=[connector]))


def test_a_config_check_reports_a_bad_rule(tmp_path: Path) -> None:
    from tests.servers import run_cli

    path = tmp_path / "bad.yaml"
    path.write_text(
        "routing_rules:\n  - {id: a, dispatch: {type: room, roomId: r}, region: mars}\n",
        encoding="utf-8",
    )
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert "routing_rules[0].region" in result.stderr
