"""The Dockerfile and deploy/compose: the image is multi-stage, slim and unprivileged; the compose
file runs three replicas that share one Redis and one PostgreSQL behind a proxy that knows all
three; the configurations they mount load. (Docker itself does not run here: structure only.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from callbridge.settings import load_settings

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose"
CONFIG_IN_IMAGE = "/etc/callbridge/config.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_the_image_is_built_in_stages_and_runs_unprivileged() -> None:
    build, runtime = stages()
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\} AS build", build[0][1])
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim\b", DOCKERFILE.read_text(), re.M)
    final = dict(runtime)  # the last of each instruction
    copies = [args for name, args in runtime if name == "COPY"]
    assert any(args.startswith("--from=build /opt/callbridge ") for args in copies)
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so runAsNonRoot can check it
    assert final["EXPOSE"] == "8000"
    assert final["ENTRYPOINT"] == '["callbridge"]'
    assert final["CMD"] == f'["serve", "--config", "{CONFIG_IN_IMAGE}"]'
    assert "/healthz" in final["HEALTHCHECK"]
    # the runtime stage installs nothing: no compilers, no pip runs
    assert not [args for name, args in runtime if name == "RUN" and "pip " in args]


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    for name, args in instructions():
        if name != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), source


def test_the_images_default_config_loads() -> None:
    settings = load_settings(ROOT / "deploy" / "docker" / "config.yaml", environ={})
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8000
    assert str(settings.data_dir) == "/var/lib/callbridge"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (COMPOSE / "docker-compose.yaml").read_text(encoding="utf-8")
    )
    return loaded


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message}."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = match[1], match[2], match[3]
        if name in variables:
            return variables[name]
        assert operator == ":-", f"{name} must be set: {rest}"
        return rest

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def replicas() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {
        name: service
        for name, service in services.items()
        if service.get("image") == "callbridge:local"
    }


def test_three_replicas_share_one_redis_and_one_postgresql() -> None:
    services = compose()["services"]
    found = replicas()
    assert sorted(found) == ["callbridge-1", "callbridge-2", "callbridge-3"]
    shared = {"DATABASE_URL", "REDIS_URL", "CREDENTIALS_KEY"}
    first = next(iter(found.values()))["environment"]
    for name, service in found.items():
        environment = service["environment"]
        assert environment["CALLBRIDGE_CLUSTER__INTERNAL_URL"] == f"http://{name}:8000"
        assert {k: environment[k] for k in shared} == {k: first[k] for k in shared}
        assert set(service["depends_on"]) == {"postgres", "redis"}
        assert service["build"]["context"] == "../.." and service["read_only"] is True
        (mount,) = service["volumes"]
        assert mount == f"./callbridge.yaml:{CONFIG_IN_IMAGE}:ro"
    assert "@postgres:5432/" in first["DATABASE_URL"]
    assert first["REDIS_URL"].startswith("redis://redis:6379/")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_each_replica_loads_the_shared_config_with_its_own_address() -> None:
    variables = {"CREDENTIALS_KEY": "A" * 43 + "=", "API_SECRET": "s" * 40}
    for name, service in replicas().items():
        environ = {k: interpolate(str(v), variables) for k, v in service["environment"].items()}
        settings = load_settings(COMPOSE / "callbridge.yaml", environ=environ)
        assert settings.cluster.internal_url == f"http://{name}:8000"
        assert settings.refs.store == "redis"
        assert settings.refs.config["redis"]["url"] == environ["REDIS_URL"]
        assert settings.cluster.redis_url is not None
        assert settings.cluster.redis_url.get_secret_value() == environ["REDIS_URL"]
        assert settings.storage.url == environ["DATABASE_URL"]
        assert settings.server.public_api_url == "http://127.0.0.1:8080"  # the proxy
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace >= settings.cluster.drain_seconds + 25


def test_the_proxy_balances_over_all_three_and_keeps_sockets_open() -> None:
    services = compose()["services"]
    proxy = services["proxy"]
    assert proxy["image"].startswith("haproxy:")
    assert set(proxy["depends_on"]) == set(replicas())
    config = (COMPOSE / "haproxy.cfg").read_text(encoding="utf-8")
    servers = dict(re.findall(r"^\s*server (\S+) (\S+)", config, re.M))
    assert servers == {name: f"{name}:8000" for name in replicas()}
    assert re.search(r"^\s*http-check send meth GET uri /readyz$", config, re.M)
    assert re.search(r"^\s*default-server check\b", config, re.M)
    assert re.search(r"^\s*timeout tunnel 1h$", config, re.M)
    (port,) = proxy["ports"]
    assert re.search(rf"^\s*bind :{port.split(':')[-1]}$", config, re.M)
