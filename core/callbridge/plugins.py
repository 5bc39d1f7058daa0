"""The plugin manager: built-in plugins by dotted name, external ones only when named in YAML."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import pluggy

from callbridge import hookspecs
from callbridge.settings import ConfigError

ENTRY_POINT_GROUP = "callbridge"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "callbridge_plugins.providers.twilio",
    "callbridge_plugins.providers.plivo",
    "callbridge_plugins.providers.telnyx",
    "callbridge_plugins.providers.custom",
    "callbridge_plugins.routing.room_query",
    "callbridge_plugins.routing.phone_rules",
    "callbridge_plugins.routing.default_rule",
    "callbridge_plugins.routing.default_room",
    "callbridge_plugins.rooms.local",
    "callbridge_plugins.rooms.websocket",
    "callbridge_plugins.signers.rsa_sha256",
    "callbridge_plugins.signers.standard_webhooks",
    "callbridge_plugins.refstores.memory",
    "callbridge_plugins.refstores.redis",
)


def external_entry_points() -> list[EntryPoint]:
    """Installed entry points of the ``callbridge`` group (not loaded)."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


def build_plugin_manager(
    load: Iterable[str] = (),
    *,
    disable_external: bool = False,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and the named external plugins registered.

    Raises:
        ConfigError: a name in ``load`` matches no installed entry point, or externals are
            disabled while some are named.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for dotted in builtins:
        pm.register(importlib.import_module(dotted), name=dotted)
    wanted = list(load)
    if wanted and disable_external:
        raise ConfigError("plugins.load: external plugins are disabled (plugins.disable_external)")
    available = {ep.name: ep for ep in external_entry_points()}
    for name in wanted:
        entry_point = available.get(name)
        if entry_point is None:
            choices = ", ".join(sorted(available)) or "none installed"
            raise ConfigError(
                f"plugins.load: no installed plugin named {name!r} (entry points: {choices})"
            )
        module = entry_point.load()
        pm.register(module, name=f"{ENTRY_POINT_GROUP}:{name}")
    pm.check_pending()
    return pm
