"""Plugin manager and registry: built-ins by name, externals only when named, clear errors."""

from __future__ import annotations

import inspect
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from callbridge import hookimpl, hookspecs
from callbridge.plugin_types import ProviderPlugin, RefStorePlugin
from callbridge.plugins import BUILTIN_PLUGINS, build_plugin_manager
from callbridge.registry import Registry
from callbridge.runtime import plugin_manager_for, select_plugins
from callbridge.settings import ConfigError, load_settings
from tests.servers import run_cli

HOOK_NAMES = [name for name in dir(hookspecs) if name.startswith("callbridge_")]


def test_every_hookspec_is_documented_with_an_example() -> None:
    assert len(HOOK_NAMES) == 5
    for name in HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Example::" in doc and ":return:" in doc, name


def test_builtins_register_one_implementation_of_each_kind_at_least() -> None:
    registry = Registry(build_plugin_manager())
    assert "twilio" in registry.names("provider")
    assert {"room_query", "phone_rules", "default_rule", "default_room"} <= set(
        registry.names("routing_strategy")
    )
    assert {"local", "websocket"} <= set(registry.names("room_transport"))
    assert "rsa_sha256" in registry.names("webhook_signer")
    assert "memory" in registry.names("ref_store")


def test_unknown_plugin_name_lists_choices() -> None:
    settings = load_settings(overrides={"providers": {"enabled": ["twilio", "acme"]}}, environ={})
    with pytest.raises(ConfigError) as caught:
        select_plugins(settings, Registry(plugin_manager_for(settings)))
    message = str(caught.value)
    assert "providers.enabled[1]: unknown provider 'acme'" in message
    assert "choose one of: " in message and "twilio" in message.split("choose one of: ")[1]


def test_a_plugin_listed_twice_is_refused() -> None:
    settings = load_settings(overrides={"providers": {"enabled": ["twilio", "twilio"]}}, environ={})
    with pytest.raises(ConfigError, match=r"providers\.enabled\[1\]: 'twilio' is listed twice"):
        select_plugins(settings, Registry(plugin_manager_for(settings)))


def test_bad_plugin_config_names_the_key() -> None:
    settings = load_settings(
        overrides={"rooms": {"config": {"local": {"sample_rate": 11025}}}}, environ={}
    )
    with pytest.raises(ConfigError, match=r"rooms\.config\.local\.sample_rate"):
        select_plugins(settings, Registry(plugin_manager_for(settings)))


def test_config_for_unknown_plugin_is_reported() -> None:
    settings = load_settings(overrides={"refs": {"config": {"memcache": {}}}}, environ={})
    with pytest.raises(ConfigError, match=r"refs\.config\.memcache: unknown ref store 'memcache'"):
        select_plugins(settings, Registry(plugin_manager_for(settings)))


def test_room_transport_instances_are_selected_by_name_and_checked() -> None:
    instance = {"plugin": "websocket", "config": {"url": "wss://agent.example/{callId}"}}
    settings = load_settings(
        overrides={"rooms": {"enabled": ["local", "agent"], "instances": {"agent": instance}}},
        environ={},
    )
    selections = select_plugins(settings, Registry(plugin_manager_for(settings)))
    agent = next(s for s in selections if s.name == "agent")
    assert agent.record.name == "websocket" and agent.config.url == "wss://agent.example/{callId}"
    for instances, problem in (
        ({"agent": {"plugin": "carrier-pigeon"}}, r"rooms\.instances\.agent\.plugin: unknown"),
        (
            {"agent": {"plugin": "websocket", "config": {"url": "http://x"}}},
            r"rooms\.instances\.agent\.config",
        ),
        # an instance that is not enabled is checked all the same
        ({"spare": {"plugin": "websocket", "config": {}}}, r"rooms\.instances\.spare\.config"),
    ):
        enabled = ["local", "agent"] if "agent" in instances else ["local"]
        settings = load_settings(
            overrides={"rooms": {"enabled": enabled, "instances": instances}}, environ={}
        )
        with pytest.raises(ConfigError, match=problem):
            select_plugins(settings, Registry(plugin_manager_for(settings)))


def _fake_plugin_module() -> types.ModuleType:
    module = types.ModuleType("acme_plugin")

    class AcmeStore:
        name = "acme"

    @hookimpl
    def callbridge_ref_stores():  # type: ignore[no-untyped-def]
        yield RefStorePlugin(name="acme", factory=lambda config, context: AcmeStore())

    module.callbridge_ref_stores = callbridge_ref_stores  # type: ignore[attr-defined]
    return module


def test_external_plugins_load_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _fake_plugin_module()
    entry_point = EntryPoint(name="acme", value="acme_plugin", group="callbridge")
    monkeypatch.setattr("callbridge.plugins.external_entry_points", lambda: [entry_point])
    monkeypatch.setitem(__import__("sys").modules, "acme_plugin", module)

    assert "acme" not in Registry(build_plugin_manager()).names("ref_store")
    assert "acme" in Registry(build_plugin_manager(["acme"])).names("ref_store")
    with pytest.raises(ConfigError, match="external plugins are disabled"):
        build_plugin_manager(["acme"], disable_external=True)
    with pytest.raises(
        ConfigError, match=r"no installed plugin named 'nope' \(entry points: acme\)"
    ):
        build_plugin_manager(["nope"])


def test_duplicate_names_fail_naming_both_sources() -> None:
    module = types.ModuleType("dupe")

    @hookimpl
    def callbridge_providers():  # type: ignore[no-untyped-def]
        yield ProviderPlugin(name="twilio", factory=lambda config, context: None)

    module.callbridge_providers = callbridge_providers  # type: ignore[attr-defined]
    pm = build_plugin_manager()
    pm.register(module, name="dupe-dist")
    with pytest.raises(
        ConfigError, match=r"provider 'twilio' is registered twice \(by .*twilio and dupe-dist\)"
    ):
        Registry(pm)


def test_builtin_list_is_importable_and_explicit() -> None:
    assert all(name.startswith("callbridge_plugins.") for name in BUILTIN_PLUGINS)


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "providers:\n  enabled: [twilio]\nrouting:\n  chain: [room_query, default_room]\n"
    )
    done = run_cli("config", "check", str(good))
    assert done.returncode == 0, done.stderr
    assert "provider" in done.stdout and "twilio" in done.stdout
    assert "room_transport" in done.stdout and "local" in done.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  chain: [room_query, by_moon_phase]\n")
    done = run_cli("config", "check", str(bad))
    assert done.returncode == 2
    assert "routing.chain[1]: unknown routing strategy 'by_moon_phase'" in done.stderr
    assert "default_room" in done.stderr and "Traceback" not in done.stderr
