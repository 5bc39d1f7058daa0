"""The ``rsa_sha256`` signer: VideoSDK-compatible ``videosdk-signature`` (RSASSA-PKCS1-v1_5).

The signature covers the exact body bytes only; VideoSDK's header holds one value, so during a
key rotation's grace period the previous key's signature travels in a second header,
``{header}-previous`` (``videosdk-signature-previous``), while the main header and the
published public key are the current key's. A receiver that pinned the old key verifies that
header until the rotation's ``until``; one that fetched the new key verifies the main header.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import AwareDatetime, BaseModel, Field, SecretStr

from callbridge import hookimpl
from callbridge.plugin_types import WebhookSignerPlugin
from callbridge.protocols import KeyStore, PluginContext, PluginError, SignedMessage

SIGNATURE_HEADER = "videosdk-signature"
STORE_KEY_NAME = "rsa_sha256"
CONFIG_PATH = "webhooks.config.rsa_sha256"


class PreviousRsaKey(BaseModel):
    """A retired signing key that still signs, in the ``-previous`` header, until ``until``."""

    model_config = {"extra": "forbid"}

    private_key: SecretStr = Field(
        ..., description="PEM private key of the retired key ({$file: path} or {$env: NAME})."
    )
    until: AwareDatetime = Field(
        ..., description="End of the grace period, with a time zone (2025-07-01T00:00:00Z)."
    )


class RsaSha256Config(BaseModel):
    """Options of the ``rsa_sha256`` signer."""

    model_config = {"extra": "forbid"}

    private_key: SecretStr | None = Field(
        None,
        description="PEM private key ({$file: path} or {$env: NAME}). Default: a 2048-bit key "
        "generated once and kept in the store, shared by every replica.",
    )
    header: str = Field(SIGNATURE_HEADER, description="Header carrying the base64 signature.")
    previous_keys: list[PreviousRsaKey] = Field(
        default_factory=list,
        description="Retired keys still signing during a rotation's grace period: until each "
        "one's `until`, its signature is sent in the header `{header}-previous` (several are "
        "space-separated, in this order).",
    )


@dataclass(frozen=True)
class _Previous:
    key: rsa.RSAPrivateKey
    until: float


class RsaSha256Signer:
    """Signs the exact body bytes with RSA PKCS#1 v1.5 over SHA-256, base64 in one header."""

    name = "rsa_sha256"

    def __init__(self, config: RsaSha256Config, context: PluginContext) -> None:
        self._header = config.header.lower()
        self._previous_header = f"{self._header}-previous"
        self._clock = context.clock
        self._configured = (
            _load_rsa_key(config.private_key.get_secret_value(), f"{CONFIG_PATH}.private_key")
            if config.private_key is not None
            else None
        )
        self._previous = [
            _Previous(
                _load_rsa_key(
                    item.private_key.get_secret_value(),
                    f"{CONFIG_PATH}.previous_keys[{index}].private_key",
                ),
                item.until.timestamp(),
            )
            for index, item in enumerate(config.previous_keys)
        ]
        self._key: rsa.RSAPrivateKey | None = None

    async def start(self, keys: KeyStore) -> None:
        """Use the configured key, or the one every replica shares in ``keys`` (made once)."""
        if self._configured is not None:
            self._key = self._configured
            return
        pem = await keys.get_or_create(STORE_KEY_NAME, _new_private_key_pem)
        self._key = _load_rsa_key(pem, f"the stored key {STORE_KEY_NAME!r}")

    def sign(self, body: bytes, message: SignedMessage) -> Mapping[str, str]:
        headers = {self._header: _sign(self._current(), body)}
        previous = self._in_grace(self._clock())
        if previous:
            headers[self._previous_header] = " ".join(_sign(key, body) for key in previous)
        return headers

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        secret: str | None = None,
        now: int | None = None,
    ) -> bool:
        current = self._current()
        lowered = {k.lower(): v for k, v in headers.items()}
        if _verifies(current, lowered.get(self._header), body):
            return True
        previous = self._in_grace(self._clock() if now is None else now)
        return any(_verifies(key, lowered.get(self._previous_header), body) for key in previous)

    def new_endpoint_secret(self) -> str | None:
        return None

    def public_key_pem(self) -> str:
        """The current key's public half, PKCS#1 PEM (``BEGIN RSA PUBLIC KEY``) like VideoSDK's."""
        return (
            self._current()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
            .decode("ascii")
        )

    def _current(self) -> rsa.RSAPrivateKey:
        if self._key is None:
            raise RuntimeError("rsa_sha256 signer used before start(keys) loaded its key")
        return self._key

    def _in_grace(self, now: float) -> list[rsa.RSAPrivateKey]:
        return [item.key for item in self._previous if now < item.until]


def _sign(key: rsa.RSAPrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _verifies(key: rsa.RSAPrivateKey, value: str | None, body: bytes) -> bool:
    public = key.public_key()
    for item in (value or "").split():
        try:
            signature = base64.b64decode(item, validate=True)
            public.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        return True
    return False


def _load_rsa_key(pem: str, where: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise PluginError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PluginError(f"{where}: not an RSA key")
    return key


def _new_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


@hookimpl
def callbridge_webhook_signers():  # type: ignore[no-untyped-def]
    yield WebhookSignerPlugin(
        name="rsa_sha256",
        factory=RsaSha256Signer,
        config_model=RsaSha256Config,
        description="RSA-SHA256 (PKCS#1 v1.5) body signature, VideoSDK-compatible",
    )
