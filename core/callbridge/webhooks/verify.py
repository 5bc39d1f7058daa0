"""Verifying a received webhook, as a receiver does it (``callbridge webhooks verify``).

Two schemes:

- ``videosdk-signature``: base64 RSASSA-PKCS1-v1_5 / SHA-256 over the exact body, checked
  with the public key of ``GET /v2/public/rsa-public-key`` (during a key rotation the old key's
  signature travels in ``videosdk-signature-previous``);
- Standard Webhooks: ``webhook-signature`` entries over ``{webhook-id}.{webhook-timestamp}.
  {body}``, ``v1`` (HMAC-SHA256 with the endpoint's ``whsec_`` secret) or ``v1a`` (Ed25519
  with a ``whpk_`` or PEM public key); a timestamp more than 300 s away is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE_SECONDS = 300


class VerifyError(ValueError):
    """The key, secret or headers given cannot be used (not: the signature is wrong)."""


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError("not base64") from None


def verify_videosdk(body: bytes, headers: Mapping[str, str], public_key_pem: str) -> bool:
    """Whether ``videosdk-signature`` (or ``videosdk-signature-previous``) is a valid
    signature of ``body`` by the key ``public_key_pem`` (PKCS#1 or SPKI PEM)."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise VerifyError("the public key is not a PEM key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerifyError("the public key is not an RSA key")
    lowered = {name.lower(): value for name, value in headers.items()}
    for header in ("videosdk-signature", "videosdk-signature-previous"):
        for value in lowered.get(header, "").split():
            try:
                key.verify(_b64(value), body, padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, VerifyError):
                continue
            return True
    return False


def verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
    public_key: str | None = None,
    now: float | None = None,
) -> bool:
    """Whether a Standard Webhooks delivery is valid: with ``secret`` (``whsec_…``) the
    ``v1`` entries, with ``public_key`` (``whpk_…`` or PEM) the ``v1a`` ones."""
    if (secret is None) == (public_key is None):
        raise VerifyError("give either the endpoint secret or the public key")
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "")
    if not message_id or "." in message_id or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    content = f"{message_id}.{timestamp}.".encode() + body
    entries = [entry.split(",", 1) for entry in lowered.get("webhook-signature", "").split()]
    if secret is not None:
        if not secret.startswith("whsec_"):
            raise VerifyError("the secret must start with whsec_")
        expected = hmac.new(_b64(secret.removeprefix("whsec_")), content, hashlib.sha256).digest()
        return any(
            len(entry) == 2
            and entry[0] == "v1"
            and hmac.compare_digest(_safe_b64(entry[1]), expected)
            for entry in entries
        )
    key = _ed25519_key(public_key or "")
    for entry in entries:
        if len(entry) == 2 and entry[0] == "v1a":
            try:
                key.verify(_safe_b64(entry[1]), content)
            except InvalidSignature:
                continue
            return True
    return False


def _safe_b64(text: str) -> bytes:
    try:
        return _b64(text)
    except VerifyError:
        return b""


def _ed25519_key(text: str) -> Ed25519PublicKey:
    if text.startswith("whpk_"):
        raw = _b64(text.removeprefix("whpk_"))
        if len(raw) != 32:
            raise VerifyError("a whpk_ key holds 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        raise VerifyError("the public key is neither whpk_ nor PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError("the public key is not an Ed25519 key")
    return key
