"""Selecting plugins by name, validating their config sections and building them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy
from pydantic import ValidationError

from callbridge.plugin_types import RECORD_TYPES, PluginKind, PluginRecord
from callbridge.protocols import PluginContext
from callbridge.settings import ConfigError

_HOOKS: dict[PluginKind, str] = {
    "provider": "callbridge_providers",
    "routing_strategy": "callbridge_routing_strategies",
    "room_transport": "callbridge_room_transports",
    "webhook_signer": "callbridge_webhook_signers",
    "ref_store": "callbridge_ref_stores",
}

KIND_LABELS: dict[PluginKind, str] = {
    "provider": "provider",
    "routing_strategy": "routing strategy",
    "room_transport": "room transport",
    "webhook_signer": "webhook signer",
    "ref_store": "ref store",
}


class Registry:
    """Every plugin record the plugin manager's hooks yielded, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._records: dict[PluginKind, dict[str, PluginRecord[Any]]] = {}
        for kind, hook_name in _HOOKS.items():
            by_name: dict[str, PluginRecord[Any]] = {}
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                distribution = impl.plugin_name
                for record in impl.function() or ():
                    if not isinstance(record, RECORD_TYPES[kind]):
                        raise ConfigError(
                            f"plugin {distribution} yielded {type(record).__name__} from "
                            f"{hook_name}; expected {RECORD_TYPES[kind].__name__}"
                        )
                    if record.name in by_name:
                        raise ConfigError(
                            f"{KIND_LABELS[kind]} {record.name!r} is registered twice "
                            f"(by {by_name[record.name].distribution} and {distribution})"
                        )
                    object.__setattr__(record, "distribution", distribution)
                    by_name[record.name] = record
            self._records[kind] = by_name

    def names(self, kind: PluginKind) -> list[str]:
        return sorted(self._records[kind])

    def records(self, kind: PluginKind) -> list[PluginRecord[Any]]:
        return [self._records[kind][name] for name in self.names(kind)]

    def get(self, kind: PluginKind, name: str, key_path: str) -> PluginRecord[Any]:
        """The record called ``name``; raises :class:`ConfigError` listing valid choices."""
        record = self._records[kind].get(name)
        if record is None:
            choices = ", ".join(self.names(kind)) or "none registered"
            raise ConfigError(
                f"{key_path}: unknown {KIND_LABELS[kind]} {name!r}; choose one of: {choices}"
            )
        return record

    def build(
        self,
        kind: PluginKind,
        name: str,
        *,
        key_path: str,
        configs: Mapping[str, Mapping[str, Any]],
        config_path: str,
        context: PluginContext,
    ) -> Any:
        """Validate the plugin's own config section (``configs[name]``) and build the plugin."""
        record = self.get(kind, name, key_path)
        config = self.validate_config(record, configs.get(name) or {}, f"{config_path}.{name}")
        return record.factory(config, context)

    @staticmethod
    def validate_config(record: PluginRecord[Any], raw: Mapping[str, Any], key_path: str) -> Any:
        try:
            return record.config_model.model_validate(dict(raw))
        except ValidationError as exc:
            problems = []
            for item in exc.errors():
                location = ".".join(str(part) for part in item["loc"])
                message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
                problems.append(f"{key_path}.{location}: {message}" if location else message)
            raise ConfigError("; ".join(problems)) from None

    def check_unused_configs(
        self, kind: PluginKind, configs: Mapping[str, Any], key_path: str
    ) -> None:
        """A config section for a plugin that does not exist is a typo worth reporting."""
        for name in configs:
            self.get(kind, name, f"{key_path}.{name}")
