"""The ``rsa_sha256`` signer: VideoSDK-compatible ``videosdk-signature`` (RSASSA-PKCS1-v1_5)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, Field, SecretStr

from callbridge import hookimpl
from callbridge.plugin_types import WebhookSignerPlugin
from callbridge.protocols import PluginContext, PluginError

SIGNATURE_HEADER = "videosdk-signature"


class RsaSha256Config(BaseModel):
    """Options of the ``rsa_sha256`` signer."""

    model_config = {"extra": "forbid"}

    private_key: SecretStr | None = Field(
        None,
        description="PEM private key ({$file: path} or {$env: NAME}). Default: a 2048-bit key "
        "generated once and kept in {data_dir}/webhook-signing-key.pem.",
    )
    header: str = Field(SIGNATURE_HEADER, description="Header carrying the base64 signature.")


class RsaSha256Signer:
    """Signs the exact body bytes with RSA PKCS#1 v1.5 over SHA-256, base64 in one header."""

    name = "rsa_sha256"

    def __init__(self, config: RsaSha256Config, context: PluginContext) -> None:
        self._header = config.header
        if config.private_key is not None:
            pem = config.private_key.get_secret_value().encode()
        else:
            pem = _load_or_create_key(context.data_dir / "webhook-signing-key.pem")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise PluginError(
                f"webhooks.config.rsa_sha256.private_key: not a PEM key ({exc})"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise PluginError("webhooks.config.rsa_sha256.private_key: not an RSA key")
        self._key = key

    def sign(self, body: bytes) -> Mapping[str, str]:
        signature = self._key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return {self._header: base64.b64encode(signature).decode("ascii")}

    def verify(self, body: bytes, headers: Mapping[str, str]) -> bool:
        value = {k.lower(): v for k, v in headers.items()}.get(self._header.lower())
        if not value:
            return False
        try:
            signature = base64.b64decode(value, validate=True)
            self._key.public_key().verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def public_key_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
            .decode("ascii")
        )


def _load_or_create_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.replace(path)
    return pem


@hookimpl
def callbridge_webhook_signers():  # type: ignore[no-untyped-def]
    yield WebhookSignerPlugin(
        name="rsa_sha256",
        factory=RsaSha256Signer,
        config_model=RsaSha256Config,
        description="RSA-SHA256 (PKCS#1 v1.5) body signature, VideoSDK-compatible",
    )
