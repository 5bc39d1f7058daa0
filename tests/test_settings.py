"""Settings: YAML, env overrides, secret references, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbridge.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cb.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_need_no_file() -> None:
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.ingest_url == "ws://127.0.0.1:8000/ingest"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.refs.store == "memory"
    assert settings.refs.ttl_seconds == 90
    assert settings.rooms.default == "local"


def test_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n")
    settings = load_settings(path, environ={"CALLBRIDGE_SERVER__PORT": "9100"})
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"


def test_env_override_of_a_list(tmp_path: Path) -> None:
    settings = load_settings(environ={"CALLBRIDGE_ROUTING__CHAIN": '["default_room"]'})
    assert settings.routing.chain == ["default_room"]


def test_secret_references(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("f" * 40 + "\n")
    path = write(
        tmp_path,
        f"""
auth:
  api_keys:
    - apikey: ak_env
      secret: {{$env: MY_SECRET}}
    - apikey: ak_file
      secret: {{$file: {secret_file}}}
""",
    )
    settings = load_settings(path, environ={"MY_SECRET": "e" * 40})
    secrets = [key.secret.get_secret_value() for key in settings.auth.api_keys]
    assert secrets == ["e" * 40, "f" * 40]
    assert "e" * 40 not in repr(settings)


def test_missing_env_secret_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "auth:\n  api_keys:\n    - apikey: ak\n      secret: {$env: NOPE}\n")
    with pytest.raises(
        ConfigError, match=r"auth\.api_keys\[0\]\.secret: environment variable 'NOPE'"
    ):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: 99999\n", r"server\.port"),
        ("server:\n  prot: 1\n", r"server\.prot: unknown key"),
        ("bogus: 1\n", r"bogus: unknown key"),
        ("server:\n  public_ingest_url: http://x\n", r"server\.public_ingest_url"),
        ("rooms:\n  default: sfu\n", r"rooms\.default: 'sfu' must be one of rooms\.enabled"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("server: [\n", r"not valid YAML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})
