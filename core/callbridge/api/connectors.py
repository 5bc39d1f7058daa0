"""``/v2/connectors``: create, list, get, update, rotate the webhook key of, and delete connectors.

Shapes follow VideoSDK's Connectors API: ``{"message": ..., "data": ...}`` with camelCase
fields. The ``webhookUrl`` embeds the secret ``whk_`` key, so it appears only in the responses
of create and rotate-key; list and get never carry it (the field is omitted, not redacted).
Another API key's connector answers exactly like an unknown one (404).

Uses ``request.app.state.db``, ``.public_api_url``, ``.provider_names`` and ``.clock``.
Call :func:`document_providers` at start-up so the OpenAPI document lists the providers.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Litestar, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.params import Body, Parameter
from msgspec import UNSET, UnsetType

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.errors import ApiError, ErrorBody, error_response, validation_message
from callbridge.store.models import Connector
from callbridge.store.repository import Repository, transaction

MAX_PER_PAGE: Final = 100
MAX_PAGE: Final = 1_000_000

_DateTime = Annotated[
    str,
    msgspec.Meta(
        description="ISO 8601 UTC timestamp with milliseconds.",
        examples=["2026-06-21T14:30:45.123Z"],
        # Litestar copies extra_json_schema["extra"] into the OpenAPI schema of the field.
        extra_json_schema={"extra": {"format": "date-time"}},
    ),
]
# PostgreSQL cannot store NUL characters, so no input string may contain one.
_NO_NUL = r"^[^\x00]*$"
_Provider = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        pattern=_NO_NUL,
        description="Telephony provider; one of the providers enabled on this server.",
        examples=["twilio"],
    ),
]
_Name = Annotated[
    str,
    msgspec.Meta(
        max_length=200, pattern=_NO_NUL, description="A label to recognise the connector by."
    ),
]
_RoomId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern=_NO_NUL,
        description="Room that calls join when no routing rule decides.",
    ),
]
_RuleId = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=128, pattern=_NO_NUL, description="Fallback routing rule id."
    ),
]
_Region = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=32, pattern=_NO_NUL, description="Media/ingest region, e.g. us002."
    ),
]
_NO_EXTRA_FIELDS: Final = {"additional_properties": False}


class CreateConnectorRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``POST /v2/connectors``."""

    provider: _Provider
    name: _Name | None = None
    default_room_id: _RoomId | None = None
    default_rule_id: _RuleId | None = None
    region: _Region | None = None


class UpdateConnectorRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``PATCH /v2/connectors/{id}``: absent fields stay, ``null`` clears one.

    The provider cannot be changed; create a new connector instead.
    """

    name: _Name | UnsetType | None = UNSET
    default_room_id: _RoomId | UnsetType | None = UNSET
    default_rule_id: _RuleId | UnsetType | None = UNSET
    region: _Region | UnsetType | None = UNSET


class ConnectorData(msgspec.Struct, rename="camel"):
    """A connector as list and get return it (never with its webhook URL)."""

    id: str
    provider: str
    name: str | None
    default_room_id: str | None
    default_rule_id: str | None
    region: str | None
    created_at: _DateTime
    updated_at: _DateTime


class ConnectorWithWebhookUrl(msgspec.Struct, rename="camel"):
    """A connector with its secret webhook URL (create and rotate-key only)."""

    id: str
    provider: str
    name: str | None
    webhook_url: Annotated[
        str,
        msgspec.Meta(
            description="Secret URL for the provider's voice webhook; treat it as a credential."
        ),
    ]
    default_room_id: str | None
    default_rule_id: str | None
    region: str | None
    created_at: _DateTime
    updated_at: _DateTime


class ConnectorResponse(msgspec.Struct):
    message: str
    data: ConnectorData


class ConnectorWithWebhookUrlResponse(msgspec.Struct):
    message: str
    data: ConnectorWithWebhookUrl


class PageInfo(msgspec.Struct, rename="camel"):
    current_page: int
    per_page: int
    last_page: int
    total: int


class ConnectorListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[ConnectorData]


class MessageResponse(msgspec.Struct):
    message: str


def format_timestamp(value: datetime) -> str:
    """``2026-06-21T14:30:45.123Z``: UTC, milliseconds, ``Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def webhook_url(public_api_url: str, provider: str, webhook_key: str) -> str:
    """The connector's secret voice-webhook URL."""
    return f"{public_api_url.rstrip('/')}/v2/hooks/{provider}/{webhook_key}"


def _data(connector: Connector) -> ConnectorData:
    return ConnectorData(
        id=connector.id,
        provider=connector.provider,
        name=connector.name,
        default_room_id=connector.default_room_id,
        default_rule_id=connector.default_rule_id,
        region=connector.region,
        created_at=format_timestamp(connector.created_at),
        updated_at=format_timestamp(connector.updated_at),
    )


def _data_with_url(
    request: Request[Any, Any, Any], connector: Connector, webhook_key: str
) -> ConnectorWithWebhookUrl:
    return ConnectorWithWebhookUrl(
        id=connector.id,
        provider=connector.provider,
        name=connector.name,
        webhook_url=webhook_url(request.app.state.public_api_url, connector.provider, webhook_key),
        default_room_id=connector.default_room_id,
        default_rule_id=connector.default_rule_id,
        region=connector.region,
        created_at=format_timestamp(connector.created_at),
        updated_at=format_timestamp(connector.updated_at),
    )


def _providers(request: Request[Any, Any, Any]) -> list[str]:
    return list(request.app.state.provider_names)


def _clock(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.get("clock", time.time)


def _not_found() -> ApiError:
    return ApiError(404, "Not found")


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    message = validation_message(exc)
    choices = ", ".join(_providers(request))
    if message.startswith("provider: is required"):
        message = message.replace(
            "provider: is required", f"provider: is required (one of: {choices})", 1
        )
    elif request.method == "PATCH" and message.startswith("provider: unknown field"):
        message = message.replace(
            "provider: unknown field", "provider: cannot be changed after creation", 1
        )
    return error_response(400, message)


def document_providers(app: Litestar) -> None:
    """Put ``app.state.provider_names`` as the ``provider`` enum into the OpenAPI document.

    Use as an ``on_startup`` hook (before the document is first served).
    """
    components = app.openapi_schema.components
    for name, schema in (components.schemas or {}).items():
        if name.endswith("CreateConnectorRequest") and isinstance(schema, Schema):
            provider = (schema.properties or {}).get("provider")
            if isinstance(provider, Schema):
                provider.enum = list(app.state.provider_names)


_BAD_REQUEST = ResponseSpec(
    data_container=ErrorBody,
    description="Invalid request; the message names the offending field.",
    generate_examples=False,
)
_UNAUTHORIZED = ResponseSpec(
    data_container=ErrorBody,
    description="Missing, malformed, expired or unverifiable API token.",
    generate_examples=False,
)
_NOT_FOUND = ResponseSpec(
    data_container=ErrorBody,
    description="No such connector for this API key.",
    generate_examples=False,
)


class ConnectorController(Controller):
    """The Connectors API."""

    path = "/v2/connectors"
    tags = ["connectors"]
    guards = [auth_guard]  # 401 before the body is even parsed
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT
    exception_handlers = {ValidationException: _validation_error}

    @post(
        "/",
        status_code=201,
        summary="Create a connector",
        description="Returns the connector with its secret `webhookUrl`, shown only here "
        "and by rotate-key.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED},
    )
    async def create_connector(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[CreateConnectorRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ConnectorWithWebhookUrlResponse:
        providers = _providers(request)
        if data.provider not in providers:
            raise ApiError(400, f"provider: must be one of: {', '.join(providers)}")
        async with transaction(request.app.state.db, _clock(request)) as repo:
            connector, key = await repo.create_connector(
                principal.apikey,
                data.provider,
                name=data.name,
                default_room_id=data.default_room_id,
                default_rule_id=data.default_rule_id,
                region=data.region,
            )
        return ConnectorWithWebhookUrlResponse(
            message="Connector created successfully",
            data=_data_with_url(request, connector, key),
        )

    @get(
        "/",
        summary="List connectors",
        description="Newest first. Items never include the webhook URL.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED},
    )
    async def list_connectors(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="1-based page number.")] = 1,
        perPage: Annotated[
            int, Parameter(ge=1, le=MAX_PER_PAGE, description="Items per page.")
        ] = 20,
    ) -> ConnectorListResponse:
        per_page = perPage
        async with request.app.state.db.session() as session:
            repo = Repository(session)
            total = await repo.count_connectors(principal.apikey)
            connectors = await repo.list_connectors(
                principal.apikey, limit=per_page, offset=(page - 1) * per_page
            )
        return ConnectorListResponse(
            message="Connectors fetched successfully",
            page_info=PageInfo(
                current_page=page,
                per_page=per_page,
                last_page=max(1, math.ceil(total / per_page)),
                total=total,
            ),
            data=[_data(c) for c in connectors],
        )

    @get(
        "/{connector_id:str}",
        summary="Get a connector",
        description="Never includes the webhook URL.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def get_connector(
        self, request: Request[Any, Any, Any], principal: Principal, connector_id: str
    ) -> ConnectorResponse:
        async with request.app.state.db.session() as session:
            connector = await Repository(session).get_connector(principal.apikey, connector_id)
        if connector is None:
            raise _not_found()
        return ConnectorResponse(message="Connector fetched successfully", data=_data(connector))

    @patch(
        "/{connector_id:str}",
        summary="Update a connector",
        description="Absent fields stay as they are; `null` clears a field. The provider "
        "cannot be changed.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def update_connector(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        connector_id: str,
        data: Annotated[UpdateConnectorRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ConnectorResponse:
        fields = {
            field: value
            for field in UpdateConnectorRequest.__struct_fields__
            if (value := getattr(data, field)) is not UNSET
        }
        async with transaction(request.app.state.db, _clock(request)) as repo:
            connector = await repo.update_connector(principal.apikey, connector_id, **fields)
        if connector is None:
            raise _not_found()
        return ConnectorResponse(message="Connector updated successfully", data=_data(connector))

    @post(
        "/{connector_id:str}/rotate-key",
        status_code=200,
        summary="Rotate the webhook key",
        description="Returns the new `webhookUrl`; the previous URL stops working at once.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def rotate_key(
        self, request: Request[Any, Any, Any], principal: Principal, connector_id: str
    ) -> ConnectorWithWebhookUrlResponse:
        async with transaction(request.app.state.db, _clock(request)) as repo:
            rotated = await repo.rotate_webhook_key(principal.apikey, connector_id)
        if rotated is None:
            raise _not_found()
        connector, key = rotated
        return ConnectorWithWebhookUrlResponse(
            message="Webhook key rotated successfully",
            data=_data_with_url(request, connector, key),
        )

    @delete(
        "/{connector_id:str}",
        status_code=200,
        summary="Delete a connector",
        description="Its webhook URL stops working at once.",
        responses={400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def delete_connector(
        self, request: Request[Any, Any, Any], principal: Principal, connector_id: str
    ) -> MessageResponse:
        async with transaction(request.app.state.db, _clock(request)) as repo:
            deleted = await repo.delete_connector(principal.apikey, connector_id)
        if not deleted:
            raise _not_found()
        return MessageResponse(message="Connector deleted successfully")
