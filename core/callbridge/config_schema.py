"""The JSON schema of a configuration file, generated from the settings model.

``callbridge config schema`` prints it; ``callbridge config schema --chart DIR`` writes it into
the Helm chart's ``values.schema.json`` as the schema of ``.Values.config`` (the chart's tests
fail when that copy is stale). The schema is draft 2020-12 with its sections inlined rather
than referenced, so it can sit under any key of another schema. Every value that is not a
section also accepts a secret reference (``{$env: NAME}`` or ``{$file: PATH}``), because the
loader resolves references anywhere in the file; that alternative, the one reference left, points
at ``#/$defs/secretRef`` of the enclosing document, which the standalone schema and the chart's
schema both define.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callbridge.settings import Settings

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
CHART_SCHEMA_FILE = "values.schema.json"

SECRET_REF_NAME = "secretRef"
SECRET_REF_DEFINITION: dict[str, Any] = {
    "description": "A secret reference, resolved when the file is loaded: {$env: NAME} or "
    "{$file: PATH}.",
    "type": "object",
    "patternProperties": {"^\\$(env|file)$": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}
SECRET_REF = {"$ref": f"#/$defs/{SECRET_REF_NAME}"}

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not")


def config_schema() -> dict[str, Any]:
    """The JSON schema of one YAML configuration file (without ``$schema``, so that it can be
    embedded; :func:`standalone_config_schema` adds it).

    Example::

        >>> config_schema()["properties"]["server"]["properties"]["port"]["default"]
        8000
    """
    raw = Settings.model_json_schema()
    definitions = raw.pop("$defs", {})
    schema = _inline(raw, definitions, ())
    return _accept_secret_refs(_without_titles(schema))


def standalone_config_schema() -> dict[str, Any]:
    """:func:`config_schema` as a document of its own (editors, ``yaml-language-server``)."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        **config_schema(),
        "$defs": {SECRET_REF_NAME: SECRET_REF_DEFINITION},
    }


def chart_values_schema(chart_dir: Path) -> dict[str, Any]:
    """The chart's ``values.schema.json`` with its generated parts regenerated: ``config``
    (the schema of ``.Values.config``) and ``$defs.secretRef``.

    Raises:
        FileNotFoundError: the chart has no ``values.schema.json`` (its hand-written part).
    """
    schema: dict[str, Any] = json.loads((chart_dir / CHART_SCHEMA_FILE).read_text("utf-8"))
    schema.setdefault("properties", {})["config"] = config_schema()
    schema.setdefault("$defs", {})[SECRET_REF_NAME] = SECRET_REF_DEFINITION
    return schema


def write_chart_schema(chart_dir: Path) -> bool:
    """Regenerate the ``config`` part of ``chart_dir/values.schema.json``; True if it changed."""
    path = chart_dir / CHART_SCHEMA_FILE
    before = path.read_text("utf-8")
    after = dumps(chart_values_schema(chart_dir))
    if after == before:
        return False
    path.write_text(after, "utf-8")
    return True


def dumps(schema: dict[str, Any]) -> str:
    """The file form of a schema: two-space indents, a final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _inline(node: Any, definitions: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:
            raise ValueError(f"the settings model is recursive at {name}; cannot inline it")
        target = _inline(definitions[name], definitions, (*seen, name))
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**target, **_inline(siblings, definitions, seen)}
    return {key: _inline(value, definitions, seen) for key, value in node.items()}


def _without_titles(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles (``"Public Api Url"``): the keys say as much."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _SUBSCHEMA_MAPS:
            out[key] = {name: _without_titles(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [_without_titles(sub) for sub in value]
        elif key in _SUBSCHEMA_ONE and isinstance(value, dict):
            out[key] = _without_titles(value)
        else:
            out[key] = value
    return out


def _is_section(schema: dict[str, Any]) -> bool:
    return "properties" in schema


def _accept_secret_refs(section: dict[str, Any]) -> dict[str, Any]:
    properties = {name: _field(sub) for name, sub in section.get("properties", {}).items()}
    return {**section, "properties": properties}


def _field(schema: dict[str, Any]) -> dict[str, Any]:
    """A section's field: sections (and sections inside lists and maps) are walked; any other
    value may also be a secret reference."""
    if _is_section(schema):
        return _accept_secret_refs(schema)
    items = schema.get("items")
    if schema.get("type") == "array" and isinstance(items, dict) and _is_section(items):
        return {**schema, "items": _accept_secret_refs(items)}
    values = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(values, dict) and _is_section(values):
        return {**schema, "additionalProperties": _accept_secret_refs(values)}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], SECRET_REF]}
    annotations = {k: v for k, v in schema.items() if k in ("description", "default")}
    rest = {k: v for k, v in schema.items() if k not in annotations}
    return {**annotations, "anyOf": [rest, SECRET_REF]}
