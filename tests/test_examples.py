"""Every file in examples/config/ loads and selects only registered plugins."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from callbridge.registry import Registry
from callbridge.runtime import plugin_manager_for, select_plugins
from callbridge.settings import load_settings

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "config").glob("*.yaml"))


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


ENVIRON = {
    "API_SECRET": "x" * 48,
    "DATABASE_URL": "postgresql+asyncpg://callbridge@db/callbridge",
    "WEBHOOK_SIGNING_KEY_PEM": _pem(),
    "MAIN_WEBHOOK_KEY": "whk_" + "m" * 32,
}


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    settings = load_settings(path, environ=ENVIRON)
    selections = select_plugins(settings, Registry(plugin_manager_for(settings)))
    assert {s.kind for s in selections} == {
        "provider",
        "routing_strategy",
        "room_transport",
        "webhook_signer",
        "ref_store",
    }
