"""``POST /v2/rooms/{roomId}/tokens``: a room token, which may only join that room (its
participant and WebRTC sockets) and cannot use the API; for a link to hand to a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, post
from litestar.di import Provide
from litestar.params import Body, Parameter

from callbridge.api.auth import (
    SECURITY_REQUIREMENT,
    Principal,
    auth_guard,
    authenticate,
    issue_token,
)
from callbridge.api.errors import ApiError
from callbridge.api.shapes import (
    UNAUTHORIZED,
    DateTime,
    error_spec,
    format_timestamp,
    request_clock,
)
from callbridge.store.ids import is_room_id
from callbridge.store.repository import Repository

MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 7 * 86400
DEFAULT_TTL_SECONDS: Final = 3600


class RoomTokenRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """Body of ``POST /v2/rooms/{roomId}/tokens``."""

    ttl_seconds: Annotated[
        int,
        msgspec.Meta(
            ge=MIN_TTL_SECONDS,
            le=MAX_TTL_SECONDS,
            description="How long the token is good for (default an hour).",
        ),
    ] = DEFAULT_TTL_SECONDS


class RoomTokenData(msgspec.Struct, rename="camel"):
    token: Annotated[str, msgspec.Meta(description="The room token (a JWT).")]
    room_id: str
    permissions: list[str]
    expires_at: DateTime


class RoomTokenResponse(msgspec.Struct):
    message: str
    data: RoomTokenData


_BAD_REQUEST = error_spec("Not a room id, or a body the schema refuses (the message says).")


class RoomTokenController(Controller):
    """Room tokens."""

    path = "/v2/rooms/{room_id:str}/tokens"
    tags = ["rooms"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT

    @post(
        "/",
        status_code=201,
        summary="Mint a room token",
        description="A token with only `allow_join` and a `roomId` claim: it opens this room's "
        "participant and WebRTC sockets (and its page) and nothing else.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def create_room_token(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        room_id: Annotated[str, Parameter(description="The room the token may join.")],
        data: Annotated[RoomTokenRequest, Body(schema_extra={"additional_properties": False})],
    ) -> RoomTokenResponse:
        if not is_room_id(room_id):
            raise ApiError(400, "roomId: not a room id (letters, digits, _ . : -, 1-128)")
        async with request.app.state.db.session() as session:
            key = await Repository(session).get_api_key(principal.apikey)
        if key is None:
            raise ApiError(401, "The token's API key no longer exists")
        now = request_clock(request)()
        token = issue_token(
            key.apikey, key.secret, expires_in=data.ttl_seconds, now=now, room_id=room_id
        )
        expires = datetime.fromtimestamp(int(now) + data.ttl_seconds, UTC)
        return RoomTokenResponse(
            message="Room token created",
            data=RoomTokenData(
                token=token,
                room_id=room_id,
                permissions=["allow_join"],
                expires_at=format_timestamp(expires),
            ),
        )
