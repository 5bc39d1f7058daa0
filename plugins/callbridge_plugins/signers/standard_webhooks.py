"""The ``standard_webhooks`` signer: Standard Webhooks v1 headers, HMAC ``v1`` or Ed25519 ``v1a``.

Every delivery carries ``webhook-id`` (the event's id, the same on every attempt),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``, a space-separated
list of ``v1,<base64>`` (HMAC-SHA256) or ``v1a,<base64>`` (Ed25519) entries, each over the bytes
``{id}.{timestamp}.{body}``. A rotation sends one entry per key; a receiver accepts when any
entry verifies with a key it trusts.

- ``hmac``: the secret is the subscription's own (``whsec_`` + base64 of at least 24 bytes),
  handed over in :attr:`SignedMessage.secret`. During an endpoint-secret rotation the caller
  passes the new and the old secret space-separated (``"whsec_new whsec_old"``); each signs.
- ``ed25519``: one key pair for the server (``whsk_`` + base64 of the 32-byte seed), configured
  or made once in the store; retired keys in ``previous_keys`` sign alongside until ``until``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import AwareDatetime, BaseModel, Field, SecretStr, ValidationInfo, field_validator

from callbridge import hookimpl
from callbridge.plugin_types import WebhookSignerPlugin
from callbridge.protocols import KeyStore, PluginContext, PluginError, SignedMessage

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"
PRIVATE_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
MIN_SECRET_BYTES = 24
NEW_SECRET_BYTES = 32
STORE_KEY_NAME = "standard_webhooks_ed25519"
CONFIG_PATH = "webhooks.config.standard_webhooks"

# Visible ASCII without "." (the separator of the signed content) and without whitespace.
_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]+")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")

T = TypeVar("T")


class PreviousEd25519Key(BaseModel):
    """A retired Ed25519 key that still signs, alongside the current one, until ``until``."""

    model_config = {"extra": "forbid"}

    private_key: SecretStr = Field(
        ..., description="The retired key, whsk_ + base64 of its 32-byte seed ({$env}/{$file})."
    )
    until: AwareDatetime = Field(
        ..., description="End of the grace period, with a time zone (2025-07-01T00:00:00Z)."
    )


class StandardWebhooksConfig(BaseModel):
    """Options of the ``standard_webhooks`` signer."""

    model_config = {"extra": "forbid"}

    scheme: Literal["hmac", "ed25519"] = Field(
        "hmac",
        description="hmac: `v1` HMAC-SHA256 with each subscription's own whsec_ secret; "
        "ed25519: `v1a` signatures with the server's key pair (public key as whpk_ and PEM).",
    )
    private_key: SecretStr | None = Field(
        None,
        description="ed25519 only: whsk_ + base64 of the 32-byte seed ({$env} or {$file}). "
        "Default: a key generated once and kept in the store, shared by every replica.",
    )
    previous_keys: list[PreviousEd25519Key] = Field(
        default_factory=list,
        description="ed25519 only: retired keys that keep signing alongside the current one "
        "(one more `v1a` entry each) until their `until`.",
    )

    @field_validator("private_key", "previous_keys")
    @classmethod
    def _keys_need_ed25519(cls, value: T, info: ValidationInfo) -> T:
        if value and info.data.get("scheme") == "hmac":
            raise ValueError(
                "applies to scheme ed25519 only; HMAC secrets belong to each subscription"
            )
        return value


@dataclass(frozen=True)
class _Previous:
    key: Ed25519PrivateKey
    until: float


class StandardWebhooksSigner:
    """Signs ``{id}.{timestamp}.{body}`` per the Standard Webhooks spec (v1.0.0)."""

    name = "standard_webhooks"

    def __init__(self, config: StandardWebhooksConfig, context: PluginContext) -> None:
        self._scheme = config.scheme
        self._clock = context.clock
        self._configured = (
            parse_private_key(config.private_key.get_secret_value(), f"{CONFIG_PATH}.private_key")
            if config.private_key is not None
            else None
        )
        self._previous = [
            _Previous(
                parse_private_key(
                    item.private_key.get_secret_value(),
                    f"{CONFIG_PATH}.previous_keys[{index}].private_key",
                ),
                item.until.timestamp(),
            )
            for index, item in enumerate(config.previous_keys)
        ]
        self._key: Ed25519PrivateKey | None = None
        self._started = False

    async def start(self, keys: KeyStore) -> None:
        """For ``ed25519``: use the configured key, or the one every replica shares in ``keys``
        (made once). ``hmac`` keeps no server key."""
        if self._scheme == "ed25519":
            if self._configured is not None:
                self._key = self._configured
            else:
                value = await keys.get_or_create(STORE_KEY_NAME, new_private_key)
                self._key = parse_private_key(value, f"the stored key {STORE_KEY_NAME!r}")
        self._started = True

    def sign(self, body: bytes, message: SignedMessage) -> Mapping[str, str]:
        if not self._started:
            raise RuntimeError("standard_webhooks signer used before start(keys)")
        if not _ID.fullmatch(message.id):
            raise PluginError(
                f"webhook id must be visible ASCII without '.' or spaces, got {message.id!r}"
            )
        if message.timestamp < 0:
            raise PluginError(f"webhook timestamp must be Unix seconds, got {message.timestamp}")
        timestamp = str(message.timestamp)
        content = signed_content(message.id, timestamp, body)
        if self._scheme == "hmac":
            keys = parse_secrets(message.secret, "the subscription's secret")
            entries = [f"v1,{_b64(_hmac(key, content))}" for key in keys]
        else:
            signing = [self._current(), *self._in_grace(self._clock())]
            entries = [f"v1a,{_b64(key.sign(content))}" for key in signing]
        return {
            ID_HEADER: message.id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: " ".join(entries),
        }

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        secret: str | None = None,
        now: int | None = None,
    ) -> bool:
        """Any one ``v1`` (with ``secret``, several may be space-separated) or ``v1a`` (with the
        current key, or a previous one before its ``until``) entry suffices; a
        ``webhook-timestamp`` more than 300 s from ``now`` (default: the clock) is refused."""
        hmac_keys = parse_secrets(secret, "secret") if self._scheme == "hmac" else []
        lowered = {k.lower(): v for k, v in headers.items()}
        message_id = lowered.get(ID_HEADER, "")
        timestamp = lowered.get(TIMESTAMP_HEADER, "")
        if not _ID.fullmatch(message_id) or not _TIMESTAMP.fullmatch(timestamp):
            return False
        at = self._clock() if now is None else now
        if abs(at - int(timestamp)) > TOLERANCE_SECONDS:
            return False
        content = signed_content(message_id, timestamp, body)
        version = "v1" if self._scheme == "hmac" else "v1a"
        given = _signatures(lowered.get(SIGNATURE_HEADER, ""), version)
        if self._scheme == "hmac":
            expected = [_hmac(key, content) for key in hmac_keys]
            # Every pair is compared, so timing does not tell which entry matched.
            matches = [hmac.compare_digest(e, g) for e in expected for g in given]
            return any(matches)
        for key in [self._current(), *self._in_grace(at)]:
            public = key.public_key()
            for signature in given:
                try:
                    public.verify(signature, content)
                except InvalidSignature:
                    continue
                return True
        return False

    def new_endpoint_secret(self) -> str | None:
        """``whsec_`` + base64 of 32 random bytes for ``hmac``; ``None`` for ``ed25519``."""
        if self._scheme != "hmac":
            return None
        return SECRET_PREFIX + _b64(secrets.token_bytes(NEW_SECRET_BYTES))

    def public_key_pem(self) -> str | None:
        """The Ed25519 public key as SubjectPublicKeyInfo PEM; ``None`` for ``hmac``."""
        if self._scheme == "hmac":
            return None
        return (
            self._current()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def public_key_whpk(self) -> str | None:
        """The Ed25519 public key as ``whpk_`` + base64 of its 32 raw bytes; ``None`` for
        ``hmac``."""
        if self._scheme == "hmac":
            return None
        raw = (
            self._current()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return PUBLIC_KEY_PREFIX + _b64(raw)

    def _current(self) -> Ed25519PrivateKey:
        if self._key is None:
            raise RuntimeError("standard_webhooks signer used before start(keys) loaded its key")
        return self._key

    def _in_grace(self, now: float) -> list[Ed25519PrivateKey]:
        return [item.key for item in self._previous if now < item.until]


def signed_content(message_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes every signature covers: ``{id}.{timestamp}.{body}``."""
    return f"{message_id}.{timestamp}.".encode() + body


def parse_secrets(value: str | None, where: str) -> list[bytes]:
    """The keys of one or more space-separated ``whsec_`` secrets; :class:`PluginError` (that
    never quotes a secret) when one is malformed."""
    items = (value or "").split()
    if not items:
        raise PluginError(f"{where}: a {SECRET_PREFIX}… secret is needed for scheme hmac")
    keys = []
    for position, item in enumerate(items, start=1):
        if not item.startswith(SECRET_PREFIX):
            raise PluginError(f"{where}: secret {position} does not start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(item.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise PluginError(f"{where}: secret {position} is not valid base64") from None
        if len(key) < MIN_SECRET_BYTES:
            raise PluginError(
                f"{where}: secret {position} holds {len(key)} bytes, at least "
                f"{MIN_SECRET_BYTES} are needed"
            )
        keys.append(key)
    return keys


def parse_private_key(value: str, where: str) -> Ed25519PrivateKey:
    """An Ed25519 key from ``whsk_`` + base64 of its 32-byte seed (or of seed and public key,
    64 bytes, as Svix writes them)."""
    if not value.startswith(PRIVATE_KEY_PREFIX):
        raise PluginError(f"{where}: an Ed25519 key must start with {PRIVATE_KEY_PREFIX}")
    try:
        raw = base64.b64decode(value.removeprefix(PRIVATE_KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise PluginError(f"{where}: not valid base64") from None
    if len(raw) not in (32, 64):
        raise PluginError(f"{where}: expected a 32-byte Ed25519 seed, got {len(raw)} bytes")
    key = Ed25519PrivateKey.from_private_bytes(raw[:32])
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    if len(raw) == 64 and raw[32:] != public:
        raise PluginError(f"{where}: the public half does not belong to the seed")
    return key


def new_private_key() -> str:
    """A fresh Ed25519 key as ``whsk_`` + base64 of its 32-byte seed."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return PRIVATE_KEY_PREFIX + _b64(raw)


def _signatures(header: str, version: str) -> list[bytes]:
    found = []
    for entry in header.split():
        tag, _, value = entry.partition(",")
        if tag != version:
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _hmac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@hookimpl
def callbridge_webhook_signers():  # type: ignore[no-untyped-def]
    yield WebhookSignerPlugin(
        name="standard_webhooks",
        factory=StandardWebhooksSigner,
        config_model=StandardWebhooksConfig,
        description="Standard Webhooks v1: webhook-id/-timestamp/-signature, HMAC or Ed25519",
    )
