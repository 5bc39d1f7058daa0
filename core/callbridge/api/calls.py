"""``/v2/calls``: list, get and hang up calls.

Same conventions as the Connectors API: ``{"message": ..., "data": ...}``, camelCase fields,
token authentication before anything else, and another API key's call answers exactly like an
unknown one (404).

Hang-up: a call bridged on this server (``request.app.state.runtime.active_calls``) is asked
to end (``202``; the bridge then ends it, hangs up at the provider and records the end); one
bridged on another replica (its ``owner_id``) gets the same request over the cluster bus
(``cluster.redis_url``; ``202`` when that replica is listening). A call
that is not bridged here yet (``started``: the provider has not opened its media socket) or any
more (``answered`` but no bridge on this server, e.g. a row left by a crash) is marked ended
with reason ``api-hangup`` (``200``). An ended or failed call answers ``409``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.errors import ApiError
from callbridge.api.shapes import (
    UNAUTHORIZED,
    DateTime,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
)
from callbridge.calls.hangup import hang_up_at_provider
from callbridge.calls.state import CallStatus, EndReason
from callbridge.runtime import Runtime
from callbridge.store.models import Call
from callbridge.store.repository import Repository

_ENDED: Final = frozenset({CallStatus.ENDED, CallStatus.FAILED})


class CallData(msgspec.Struct, rename="camel"):
    """One phone call."""

    id: str
    connector_id: str
    provider: str
    provider_call_id: Annotated[
        str, msgspec.Meta(description="The provider's call id (Twilio CallSid, Plivo CallUUID…).")
    ]
    from_: str | None = msgspec.field(name="from")
    to: str | None
    room_id: str | None
    region: Annotated[
        str | None, msgspec.Meta(description="The call's region (see the README's Regions).")
    ]
    route_strategy: Annotated[
        str | None, msgspec.Meta(description="The routing strategy that placed the call.")
    ]
    route_rule_id: Annotated[
        str | None, msgspec.Meta(description="The routing rule that placed the call, if any.")
    ]
    metadata: Annotated[
        dict[str, str], msgspec.Meta(description="The free metadata of the rule that placed it.")
    ]
    media: Annotated[
        dict[str, int] | None,
        msgspec.Meta(
            description="Media figures once a bridged call ended: frames each way; caller "
            "frames lost, late, reordered and duplicated; jitter (µs); DTMF; marks and clears "
            "with their latency (ms); playout drains and underruns… (see the README's "
            "Observability section)"
        ),
    ]
    status: Annotated[
        CallStatus,
        msgspec.Meta(
            description="`routed`: answered with markup, waiting for the media socket; "
            "`answered`: bridged into its room; `ended`: it ran its course; `failed`: it "
            "could not be connected or broke."
        ),
    ]
    end_reason: Annotated[
        EndReason | None,
        msgspec.Meta(description="Why it ended or failed (see the README's call states)."),
    ]
    end_detail: Annotated[
        str | None,
        msgspec.Meta(description="More about the end reason, e.g. which signature check failed."),
    ]
    created_at: DateTime
    answered_at: DateTime | None
    ended_at: DateTime | None


class CallResponse(msgspec.Struct):
    message: str
    data: CallData


class CallListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[CallData]


def _optional_timestamp(value: Any) -> str | None:
    return format_timestamp(value) if value is not None else None


def call_data(call: Call) -> CallData:
    """The API shape of a call row."""
    return CallData(
        id=call.id,
        connector_id=call.connector_id,
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        from_=call.from_number,
        to=call.to_number,
        room_id=call.room_id,
        region=call.region,
        route_strategy=call.route_strategy,
        route_rule_id=call.route_rule_id,
        metadata=json.loads(call.route_metadata) if call.route_metadata else {},
        media=json.loads(call.media) if call.media else None,
        status=CallStatus(call.status),
        end_reason=EndReason(call.end_reason) if call.end_reason else None,
        end_detail=call.end_detail,
        created_at=format_timestamp(call.created_at),
        answered_at=_optional_timestamp(call.answered_at),
        ended_at=_optional_timestamp(call.ended_at),
    )


_BAD_REQUEST = error_spec("Invalid request; the message names the offending parameter.")
_NOT_FOUND = error_spec("No such call for this API key.")
_CONFLICT = error_spec("The call has already ended.")
_ENDED_HERE = ResponseSpec(
    data_container=CallResponse,
    description="The call was not bridged on this server; it is now recorded as ended "
    "(`endReason` `api-hangup`).",
    generate_examples=False,
)


class CallController(Controller):
    """The Calls API."""

    path = "/v2/calls"
    tags = ["calls"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT

    @get(
        "/",
        summary="List calls",
        description="Newest first; filter by connector and/or status.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def list_calls(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: PageNumber = 1,
        perPage: PerPage = 20,
        connectorId: Annotated[
            str | None,
            Parameter(
                min_length=1,
                max_length=32,
                pattern=r"^[^\x00]*$",
                description="Only calls of this connector.",
            ),
        ] = None,
        status: Annotated[
            CallStatus | None, Parameter(description="Only calls in this status.")
        ] = None,
    ) -> CallListResponse:
        per_page = perPage
        async with request.app.state.db.session() as session:
            repo = Repository(session)
            total = await repo.count_calls(
                principal.apikey, connector_id=connectorId, status=status
            )
            calls = await repo.list_calls(
                principal.apikey,
                connector_id=connectorId,
                status=status,
                limit=per_page,
                offset=(page - 1) * per_page,
            )
        return CallListResponse(
            message="Calls fetched successfully",
            page_info=PageInfo.of(page, per_page, total),
            data=[call_data(call) for call in calls],
        )

    @get(
        "/{call_id:str}",
        summary="Get a call",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def get_call(
        self, request: Request[Any, Any, Any], principal: Principal, call_id: str
    ) -> CallResponse:
        async with request.app.state.db.session() as session:
            call = await Repository(session).get_call(principal.apikey, call_id)
        if call is None:
            raise ApiError(404, "Not found")
        return CallResponse(message="Call fetched successfully", data=call_data(call))

    @post(
        "/{call_id:str}/hangup",
        status_code=202,
        summary="Hang up a call",
        description="202: the call is bridged on this server, or on another replica that got "
        "the request over the cluster bus, and is being ended (the bridge "
        "hangs up at the provider and records the end). 200: the call was not bridged here; "
        "it is recorded as ended and, when the connector holds credentials, ended at the "
        "provider through its REST API. 409: it had already ended.",
        responses={
            200: _ENDED_HERE,
            400: _BAD_REQUEST,
            401: UNAUTHORIZED,
            404: _NOT_FOUND,
            409: _CONFLICT,
        },
    )
    async def hangup_call(
        self, request: Request[Any, Any, Any], principal: Principal, call_id: str
    ) -> Response[CallResponse]:
        async with request.app.state.db.session() as session:
            call = await Repository(session).get_call(principal.apikey, call_id)
        if call is None:
            raise ApiError(404, "Not found")
        runtime: Runtime = request.app.state.runtime
        bridged = runtime.active_calls.get(call.id)
        if bridged is not None:
            bridged.request_hangup(EndReason.API_HANGUP)
            return Response(
                CallResponse(message="Hang-up requested", data=call_data(call)), status_code=202
            )
        if call.status in _ENDED:
            raise ApiError(409, "call already ended")
        if (
            runtime.bus is not None
            and call.owner_id is not None
            and call.owner_id != runtime.instance_id
            and await runtime.bus.send(
                call.owner_id, "hangup", callId=call.id, reason=EndReason.API_HANGUP.value
            )
        ):  # bridged on another replica, which ends it as it would its own
            return Response(
                CallResponse(message="Hang-up requested", data=call_data(call)), status_code=202
            )
        ended = await runtime.lifecycle.end(call.id, EndReason.API_HANGUP)
        if ended is None:  # it ended meanwhile
            raise ApiError(409, "call already ended")
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            await hang_up_at_provider(runtime, call)
        return Response(CallResponse(message="Call ended", data=call_data(ended)), status_code=200)
