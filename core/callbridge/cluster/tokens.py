"""Tokens one replica gives another to relay a room member: short-lived HS256 JWTs signed
with a key every replica derives from the shared credentials key (``security.credentials_key``),
so no extra secret needs configuring."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_SECONDS: Final = 30
AUDIENCE: Final = "callbridge-relay"


def relay_key(credentials_key: bytes) -> bytes:
    """The relay signing key: HKDF-SHA256 of the credentials key (never the key itself)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"callbridge cluster relay v1"
    ).derive(credentials_key)


def issue(key: bytes, claims: Mapping[str, Any], now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    payload = {**claims, "aud": AUDIENCE, "iat": issued, "exp": issued + TOKEN_SECONDS}
    return jwt.encode(payload, key, algorithm="HS256")


def verify(key: bytes, token: str) -> dict[str, Any] | None:
    """The claims of a valid, unexpired relay token; ``None`` otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["HS256"], audience=AUDIENCE, leeway=5
        )
    except jwt.PyJWTError:
        return None
    return claims
