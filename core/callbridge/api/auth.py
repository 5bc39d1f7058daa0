"""API authentication: VideoSDK-style JWTs (HS256, signed with an API key's secret).

A token carries the claims ``apikey``, ``permissions``, ``version`` (2), ``iat`` and ``exp``,
and a room token also ``roomId``. Permissions are enforced: the REST API and the event socket
need ``allow_mod`` (an API token: the default of ``callbridge token``); a room's sockets
(participants, WebRTC) need ``allow_join``, and a token with a ``roomId`` opens only that room
(a room token: ``callbridge token --room R``, or ``POST /v2/rooms/{roomId}/tokens``).
It is accepted as ``Authorization: <jwt>`` (VideoSDK's form, no prefix) or
``Authorization: Bearer <jwt>``. Expiry is checked against the app's injected clock, not the
system time. Failures raise :class:`~callbridge.api.errors.ApiError` 401 with a reason that
never contains the token.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import jwt
from jwt.utils import base64url_decode
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme

from callbridge import safe_json
from callbridge.api.errors import ApiError
from callbridge.redaction import remember_secrets
from callbridge.safe_json import TOKEN_LIMITS
from callbridge.store.db import Database
from callbridge.store.ids import is_room_id
from callbridge.store.repository import Repository

logger = logging.getLogger(__name__)

ALGORITHM: Final = "HS256"
ALLOW_JOIN: Final = "allow_join"
ALLOW_MOD: Final = "allow_mod"
DEFAULT_PERMISSIONS: Final = (ALLOW_JOIN, ALLOW_MOD)
ROOM_PERMISSIONS: Final = (ALLOW_JOIN,)
LEEWAY_SECONDS: Final = 10
MAX_TOKEN_LENGTH: Final = 8192
SECURITY_SCHEME_NAME: Final = "apiToken"
SECURITY_REQUIREMENT: Final[list[dict[str, list[str]]]] = [{SECURITY_SCHEME_NAME: []}]

_CHALLENGE: Final = {"WWW-Authenticate": "Bearer"}
_STATE_KEY: Final = "callbridge_principal"
# Signature only: exp and nbf are checked here against the injected clock.
_DECODE_OPTIONS: Final[Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": ["exp"],
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key every resource is scoped to, the token's permissions, and
    the one room a room token may join (``None``: any)."""

    apikey: str
    permissions: tuple[str, ...]
    room_id: str | None = None

    @property
    def may_moderate(self) -> bool:
        """The REST API and the event socket: an API token (``allow_mod``)."""
        return ALLOW_MOD in self.permissions

    def may_join(self, room_id: str) -> bool:
        """A room's sockets: ``allow_join``, and the token's room if it names one."""
        return ALLOW_JOIN in self.permissions and self.room_id in (None, room_id)


def security_components() -> Components:
    """OpenAPI components declaring the token scheme that :data:`SECURITY_REQUIREMENT` names."""
    return Components(
        security_schemes={
            SECURITY_SCHEME_NAME: SecurityScheme(
                type="http",
                scheme="bearer",
                bearer_format="JWT",
                description=(
                    "An HS256 JWT signed with the API key's secret (claims `apikey`, "
                    "`permissions`, `exp`). Sent as `Authorization: Bearer <jwt>` or, as "
                    "VideoSDK does, `Authorization: <jwt>`."
                ),
            )
        }
    )


def issue_token(
    apikey: str,
    secret: str,
    *,
    permissions: Sequence[str] = DEFAULT_PERMISSIONS,
    expires_in: int = 86400,
    now: float | None = None,
    room_id: str | None = None,
) -> str:
    """Sign an API token (HS256) for ``apikey`` valid for ``expires_in`` seconds from ``now``;
    with ``room_id``, a room token (only ``allow_join``, only that room)."""
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "apikey": apikey,
        "permissions": list(ROOM_PERMISSIONS if room_id is not None else permissions),
        "version": 2,
        "iat": issued_at,
        "exp": issued_at + int(expires_in),
    }
    if room_id is not None:
        claims["roomId"] = room_id
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _fail(reason: str) -> ApiError:
    logger.info("API authentication failed: %s", reason)
    return ApiError(401, reason, _CHALLENGE)


def _is_number(value: object) -> TypeGuard[float]:
    # Python's json accepts NaN and Infinity; a NaN exp would never compare as expired.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def token_from_header(value: str | None) -> str:
    """The JWT from an ``Authorization`` header value (raw or ``Bearer``).

    Raises:
        ApiError: 401 when the header is missing or malformed.
    """
    if value is None or not value.strip():
        raise _fail("Missing Authorization header")
    parts = value.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1 and parts[0].lower() != "bearer":
        return parts[0]
    raise _fail("Malformed Authorization header; expected '<jwt>' or 'Bearer <jwt>'")


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # Decoded with safe_json before PyJWT sees the token: its json.loads raises RecursionError
    # on deeply nested claims, which must be a 401, not a 500 or a dropped socket.
    parts = token.split(".") if 0 < len(token) <= MAX_TOKEN_LENGTH else []
    if len(parts) != 3:
        raise _fail("Malformed token")
    try:
        header = safe_json.decode(base64url_decode(parts[0]), TOKEN_LIMITS)
        claims = safe_json.decode(base64url_decode(parts[1]), TOKEN_LIMITS)
    except ValueError:  # JsonInputError, binascii.Error, a non-ASCII token
        raise _fail("Malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _fail("Malformed token")
    return header, claims


async def authenticate_token(token: str, db: Database, clock: Callable[[], float]) -> Principal:
    """Verify an API token and return its :class:`Principal`.

    The header and claims are first decoded with :mod:`callbridge.safe_json`
    (:data:`~callbridge.safe_json.TOKEN_LIMITS`); the unverified ``apikey`` claim picks the
    secret; the signature (HS256 only) is then verified, and ``exp`` (required) and ``nbf``
    are checked against ``clock()`` with a small leeway.

    Raises:
        ApiError: 401 with the reason (malformed, unknown API key, bad signature, expired...).
    """
    header, unverified = _unverified_parts(token)
    if header.get("alg") != ALGORITHM:
        raise _fail(f"Unsupported token algorithm; expected {ALGORITHM}")
    apikey = unverified.get("apikey")
    if not isinstance(apikey, str) or not apikey or len(apikey) > 64:
        raise _fail("Token has no valid apikey claim")

    async with db.session() as session:
        api_key = await Repository(session).get_api_key(apikey)
    if api_key is None:
        raise _fail("Unknown API key")

    remember_secrets([api_key.secret])
    try:
        claims = jwt.decode(token, api_key.secret, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise _fail("Invalid token signature") from None
    except jwt.MissingRequiredClaimError:
        raise _fail("Token has no exp claim") from None
    except jwt.InvalidTokenError:
        raise _fail("Invalid token") from None

    now = clock()
    exp = claims.get("exp")
    if not _is_number(exp):
        raise _fail("Token exp claim is not a number")
    if now >= exp + LEEWAY_SECONDS:
        raise _fail("Token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or now + LEEWAY_SECONDS < nbf):
        raise _fail("Token is not valid yet")

    permissions = claims.get("permissions", [])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise _fail("Token permissions claim must be a list of strings")
    room_id = claims.get("roomId")
    if room_id is not None and not (isinstance(room_id, str) and is_room_id(room_id)):
        raise _fail("Token roomId claim must be a room id")
    return Principal(apikey=api_key.apikey, permissions=tuple(permissions), room_id=room_id)


async def _principal_for(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    cached = connection.state.get(_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    token = token_from_header(connection.headers.get("authorization"))
    app_state = connection.app.state
    principal = await authenticate_token(token, app_state.db, app_state.get("clock", time.time))
    if not principal.may_moderate:
        logger.info("API request refused: the token lacks allow_mod (a room token?)")
        raise ApiError(403, "This token may not use the API (it has no allow_mod permission)")
    connection.state[_STATE_KEY] = principal
    return principal


async def authenticate(request: Request[Any, Any, Any]) -> Principal:
    """Litestar dependency (``Provide(authenticate)``): the caller's :class:`Principal`.

    Reads ``request.app.state.db`` and ``request.app.state.clock``; the result is cached on
    the request, so it may also run as :func:`auth_guard`.
    """
    return await _principal_for(request)


async def auth_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard that authenticates before the request body is read.

    Guards run before Litestar parses the body, so an unauthenticated request gets 401 even when
    its body is malformed, and never learns about validation.
    """
    await _principal_for(connection)
