"""The config file's JSON schema (callbridge.config_schema): generated from the settings model,
it accepts every example configuration, refuses what the loader refuses for shape, and
``callbridge config schema`` prints it and keeps the Helm chart's copy fresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from callbridge.cli import main
from callbridge.config_schema import (
    CHART_SCHEMA_FILE,
    SECRET_REF_NAME,
    chart_values_schema,
    config_schema,
    standalone_config_schema,
)
from callbridge.settings import Settings

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples" / "config").glob("*.yaml"))
CHART = ROOT / "deploy" / "helm" / "callbridge"


def validator() -> jsonschema.Draft202012Validator:
    schema = standalone_config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_has_every_section_with_its_descriptions() -> None:
    schema = config_schema()
    assert set(schema["properties"]) == set(Settings.model_fields)
    assert schema["additionalProperties"] is False
    cluster = schema["properties"]["cluster"]
    assert cluster["additionalProperties"] is False
    drain = cluster["properties"]["drain_seconds"]
    assert drain["default"] == 30 and "SIGTERM" in drain["description"]
    # sections are inlined: the only reference left is the secret reference's
    assert set(refs(schema)) == {f"#/$defs/{SECRET_REF_NAME}"}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_matches_the_schema(path: Path) -> None:
    validator().validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    "config",
    [
        {"server": {"prot": 8000}},
        {"sever": {}},
        {"server": {"port": 70000}},
        {"cluster": {"room_mode": "mesh"}},
        {"cluster": {"internal_url": "http://10.0.0.1:8000/path"}},
        {"auth": {"api_keys": [{"apikey": "ak"}]}},  # no secret, id too short
        {"storage": {"url": {"$vault": "db"}}},  # not a secret reference
        {"storage": {"url": {"$env": "A", "$file": "/b"}}},
    ],
)
def test_the_schema_refuses_what_cannot_load(config: dict[str, Any]) -> None:
    assert list(validator().iter_errors(config))


def test_secret_references_are_accepted_for_any_value() -> None:
    validator().validate(
        {
            "server": {"port": {"$env": "PORT"}, "public_api_url": {"$file": "/run/url"}},
            "cluster": {"redis_url": {"$env": "REDIS_URL"}, "drain_seconds": {"$env": "DRAIN"}},
            "auth": {"api_keys": [{"apikey": "ak_prod", "secret": {"$env": "API_SECRET"}}]},
            "routing": {"regions": {"us": {"ingest_url": {"$env": "US_INGEST"}}}},
        }
    )


def test_config_schema_prints_a_standalone_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == standalone_config_schema()
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_config_schema_updates_a_stale_chart_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    shutil.copy(CHART / CHART_SCHEMA_FILE, chart / CHART_SCHEMA_FILE)
    stale = json.loads((chart / CHART_SCHEMA_FILE).read_text(encoding="utf-8"))
    del stale["properties"]["config"]["properties"]["cluster"]
    (chart / CHART_SCHEMA_FILE).write_text(json.dumps(stale), encoding="utf-8")

    assert main(["config", "schema", "--chart", str(chart), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["config", "schema", "--chart", str(chart)]) == 0
    assert "updated" in capsys.readouterr().out
    assert main(["config", "schema", "--chart", str(chart), "--check"]) == 0
    written = json.loads((chart / CHART_SCHEMA_FILE).read_text(encoding="utf-8"))
    assert written == chart_values_schema(CHART)
    # the hand-written part of the chart's schema is kept
    assert written["properties"]["image"] == stale["properties"]["image"]


def test_config_schema_without_a_chart_schema_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "schema", "--chart", str(tmp_path)]) == 2
    assert "cannot update" in capsys.readouterr().err
