"""``/v2/connectors``: create, list, get, update, rotate the webhook key of, and delete connectors.

Shapes follow VideoSDK's Connectors API: ``{"message": ..., "data": ...}`` with camelCase
fields. The ``webhookUrl`` embeds the secret ``whk_`` key, so it appears only in the responses
of create and rotate-key; list and get never carry it (the field is omitted, not redacted).
Another API key's connector answers exactly like an unknown one (404).

A connector may carry media options (``codec``/``sampleRate``, ``markupStyle``, checked
against what its provider supports), provider ``credentials`` (write-only: encrypted with
:class:`~callbridge.crypto.CredentialBox` bound to the connector id, never returned; responses
say ``hasCredentials``) and ``verifySignatures`` (which needs credentials).

Uses ``request.app.state.db``, ``.public_api_url``, ``.provider_names``, ``.clock`` and
``.runtime`` (its ``providers`` and ``credential_box``).
Call :func:`document_providers` at start-up so the OpenAPI document lists the providers and
their codecs, markup styles and credential fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Controller, Litestar, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import Body
from msgspec import UNSET, UnsetType

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.errors import ApiError, error_response, validation_message
from callbridge.api.shapes import (
    UNAUTHORIZED,
    DateTime,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
    request_clock,
)
from callbridge.crypto import CredentialBox
from callbridge.protocols import CodecSpec, Provider
from callbridge.store.ids import new_connector_id
from callbridge.store.models import Connector
from callbridge.store.repository import Repository, transaction

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
Codec = Literal["PCMU", "PCMA", "L16"]
SampleRate = Literal[8000, 16000]
CODECS: Final[tuple[str, ...]] = ("PCMU", "PCMA", "L16")
MAX_CREDENTIAL_LENGTH: Final = 512
_Codec = Annotated[
    Codec,
    msgspec.Meta(
        description="Audio codec on the provider leg; must be one the provider supports. "
        "`null`: the provider's default."
    ),
]
_SampleRate = Annotated[
    SampleRate,
    msgspec.Meta(
        description="Sample rate of `codec` in Hz. Absent or `null`: the first rate the "
        "provider supports for that codec."
    ),
]
_MarkupStyle = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        pattern=_NO_NUL,
        description="Answer-markup style (Telnyx: `connect` or `start`); one of the provider's "
        "styles. `null`: the provider's default.",
    ),
]
_CredentialName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
# Values are checked by check_credentials (so errors name the field); the OpenAPI document
# still shows their limits (document_providers).
_Credentials = Annotated[
    dict[_CredentialName, str],
    msgspec.Meta(
        max_length=16,
        description="Write-only provider credentials: exactly the provider's fields (Twilio "
        "`accountSid`, `authToken`; Plivo `authId`, `authToken`; Telnyx `apiKey`, "
        "`publicKey`). Stored encrypted, never returned. On update, `null` removes them.",
    ),
]
_VerifySignatures = Annotated[
    bool,
    msgspec.Meta(
        description="Check the provider's signatures on webhooks and media sockets (403 when "
        "wrong); requires credentials."
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
    codec: _Codec | None = None
    sample_rate: _SampleRate | None = None
    markup_style: _MarkupStyle | None = None
    verify_signatures: _VerifySignatures = False
    credentials: _Credentials | None = None

    def __repr__(self) -> str:  # never show credentials
        return f"CreateConnectorRequest(provider={self.provider!r})"


class UpdateConnectorRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``PATCH /v2/connectors/{id}``: absent fields stay, ``null`` clears one.

    The provider cannot be changed; create a new connector instead.
    """

    name: _Name | UnsetType | None = UNSET
    default_room_id: _RoomId | UnsetType | None = UNSET
    default_rule_id: _RuleId | UnsetType | None = UNSET
    region: _Region | UnsetType | None = UNSET
    codec: _Codec | UnsetType | None = UNSET
    sample_rate: _SampleRate | UnsetType | None = UNSET
    markup_style: _MarkupStyle | UnsetType | None = UNSET
    verify_signatures: _VerifySignatures | UnsetType = UNSET
    credentials: _Credentials | UnsetType | None = UNSET

    def __repr__(self) -> str:  # never show credentials
        return "UpdateConnectorRequest(...)"


_HasCredentials = Annotated[
    bool,
    msgspec.Meta(description="Whether the connector holds provider credentials (never shown)."),
]


class ConnectorData(msgspec.Struct, rename="camel"):
    """A connector as list and get return it (never with its webhook URL or credentials)."""

    id: str
    provider: str
    name: str | None
    default_room_id: str | None
    default_rule_id: str | None
    region: str | None
    codec: Codec | None
    sample_rate: SampleRate | None
    markup_style: str | None
    verify_signatures: bool
    has_credentials: _HasCredentials
    created_at: DateTime
    updated_at: DateTime


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
    codec: Codec | None
    sample_rate: SampleRate | None
    markup_style: str | None
    verify_signatures: bool
    has_credentials: _HasCredentials
    created_at: DateTime
    updated_at: DateTime


class ConnectorResponse(msgspec.Struct):
    message: str
    data: ConnectorData


class ConnectorWithWebhookUrlResponse(msgspec.Struct):
    message: str
    data: ConnectorWithWebhookUrl


class ConnectorListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[ConnectorData]


class MessageResponse(msgspec.Struct):
    message: str


def webhook_url(public_api_url: str, provider: str, webhook_key: str) -> str:
    """The connector's secret voice-webhook URL."""
    return f"{public_api_url.rstrip('/')}/v2/hooks/{provider}/{webhook_key}"


def _fields(connector: Connector) -> dict[str, Any]:
    return {
        "id": connector.id,
        "provider": connector.provider,
        "name": connector.name,
        "default_room_id": connector.default_room_id,
        "default_rule_id": connector.default_rule_id,
        "region": connector.region,
        "codec": connector.codec,
        "sample_rate": connector.sample_rate,
        "markup_style": connector.markup_style,
        "verify_signatures": bool(connector.verify_signatures),
        "has_credentials": connector.credentials is not None,
        "created_at": format_timestamp(connector.created_at),
        "updated_at": format_timestamp(connector.updated_at),
    }


def _data(connector: Connector) -> ConnectorData:
    return ConnectorData(**_fields(connector))


def _data_with_url(
    request: Request[Any, Any, Any], connector: Connector, webhook_key: str
) -> ConnectorWithWebhookUrl:
    return ConnectorWithWebhookUrl(
        **_fields(connector),
        webhook_url=webhook_url(request.app.state.public_api_url, connector.provider, webhook_key),
    )


# --------------------------------------------------------------------------- provider options


def credential_box(app: Litestar) -> CredentialBox:
    """The running server's :class:`CredentialBox` (its key is loaded at start)."""
    box: CredentialBox = app.state.runtime.credential_box
    return box


def _provider_object(request: Request[Any, Any, Any], name: str) -> Any:
    return request.app.state.runtime.providers.get(name)


def supported_codecs(provider: Provider) -> tuple[CodecSpec, ...]:
    return tuple(provider.supported_codecs)


def markup_styles(provider: Provider) -> tuple[str, ...]:
    return tuple(provider.markup_styles)


def credential_fields(provider: Provider) -> tuple[str, ...]:
    return tuple(provider.credential_fields)


def _specs(specs: Iterable[CodecSpec]) -> str:
    return ", ".join(f"{spec.name}/{spec.sample_rate}" for spec in specs)


def resolve_codec(
    provider_name: str, provider: Any, codec: str | None, sample_rate: int | None
) -> tuple[str | None, int | None]:
    """The ``(codec, sample_rate)`` to store; ``(None, None)`` for the provider's default.

    A codec without a rate takes the first rate the provider supports for it.

    Raises:
        ApiError: 400 naming ``codec`` or ``sampleRate`` and the provider's choices.
    """
    supported = supported_codecs(provider)
    choices = f"{provider_name} supports {_specs(supported)}"
    if codec is None:
        if sample_rate is not None:
            raise ApiError(400, f"sampleRate: needs a codec ({choices})")
        return None, None
    same_name = [spec for spec in supported if spec.name == codec]
    if not same_name:
        raise ApiError(400, f"codec: {choices}")
    if sample_rate is None:
        return codec, same_name[0].sample_rate
    if not any(spec.sample_rate == sample_rate for spec in same_name):
        raise ApiError(400, f"sampleRate: {choices}")
    return codec, sample_rate


def check_markup_style(provider_name: str, provider: Any, style: str | None) -> None:
    """Raises ApiError 400 naming ``markupStyle`` when the provider has no such style."""
    if style is None:
        return
    styles = markup_styles(provider)
    if not styles:
        raise ApiError(400, f"markupStyle: {provider_name} has no markup styles")
    if style not in styles:
        raise ApiError(400, f"markupStyle: must be one of: {', '.join(styles)}")


def check_credentials(provider_name: str, provider: Any, values: dict[str, str]) -> None:
    """Exactly the provider's credential fields, each 1-512 characters without NUL.

    Raises:
        ApiError: 400 naming ``credentials.<field>`` (never a value).
    """
    fields = credential_fields(provider)
    if not fields:
        raise ApiError(400, f"credentials: {provider_name} takes no credentials")
    for name in values:
        if name not in fields:
            raise ApiError(
                400,
                f"credentials.{name}: unknown field ({provider_name} takes {', '.join(fields)})",
            )
    for name in fields:
        if name not in values:
            raise ApiError(400, f"credentials.{name}: is required")
    for name, value in values.items():
        if not 1 <= len(value) <= MAX_CREDENTIAL_LENGTH or "\x00" in value:
            raise ApiError(
                400,
                f"credentials.{name}: must be 1-{MAX_CREDENTIAL_LENGTH} characters without NUL",
            )


_NEEDS_CREDENTIALS: Final = "verifySignatures: requires credentials"


def _providers(request: Request[Any, Any, Any]) -> list[str]:
    return list(request.app.state.provider_names)


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


def _nullable(description: str | None, *choices: Schema) -> Schema:
    return Schema(one_of=[*choices, Schema(type=OpenAPIType.NULL)], description=description)


def _provider_options_schemas(providers: Iterable[tuple[str, Any]]) -> dict[str, list[Schema]]:
    """Schemas of ``codec``, ``sampleRate``, ``markupStyle`` and ``credentials`` narrowed to
    what the enabled providers accept (each value is still checked against its provider)."""
    names: list[str] = []
    rates: list[int] = []
    styles: list[str] = []
    credential_sets: list[tuple[str, ...]] = []
    for _, provider in providers:
        for spec in supported_codecs(provider):
            if spec.name in CODECS and spec.name not in names:
                names.append(spec.name)
            if spec.sample_rate in (8000, 16000) and spec.sample_rate not in rates:
                rates.append(spec.sample_rate)
        styles.extend(style for style in markup_styles(provider) if style not in styles)
        fields = credential_fields(provider)
        if fields and fields not in credential_sets:
            credential_sets.append(fields)
    value = Schema(
        type=OpenAPIType.STRING,
        min_length=1,
        max_length=MAX_CREDENTIAL_LENGTH,
        pattern=_NO_NUL,
    )
    credential_objects = [
        Schema(
            type=OpenAPIType.OBJECT,
            properties={field: value for field in fields},
            required=list(fields),
            additional_properties=False,
        )
        for fields in credential_sets
    ]
    return {
        "codec": [Schema(type=OpenAPIType.STRING, enum=names)] if names else [],
        "sampleRate": [Schema(type=OpenAPIType.INTEGER, enum=rates)] if rates else [],
        "markupStyle": [Schema(type=OpenAPIType.STRING, enum=styles)] if styles else [],
        "credentials": credential_objects,
    }


def document_providers(app: Litestar) -> None:
    """Put the enabled providers and their options into the OpenAPI document.

    ``provider`` gets the enum of ``app.state.provider_names``; on create and update,
    ``codec``/``sampleRate``/``markupStyle`` get the enums of what the enabled providers
    support, and ``credentials`` becomes one closed object per provider credential set.
    Use as an ``on_startup`` hook (before the document is first served).
    """
    providers = app.state.runtime.providers
    enabled = [(name, providers.get(name)) for name in app.state.provider_names]
    options = _provider_options_schemas(enabled)
    components = app.openapi_schema.components
    for name, schema in (components.schemas or {}).items():
        if not isinstance(schema, Schema) or not name.endswith(
            ("CreateConnectorRequest", "UpdateConnectorRequest")
        ):
            continue
        properties = schema.properties or {}
        provider = properties.get("provider")
        if isinstance(provider, Schema):
            provider.enum = list(app.state.provider_names)
        for field, choices in options.items():
            current = properties.get(field)
            if isinstance(current, Schema):
                properties[field] = _nullable(current.description, *choices)


_BAD_REQUEST = error_spec("Invalid request; the message names the offending field.")
_NOT_FOUND = error_spec("No such connector for this API key.")


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
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
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
        provider = _provider_object(request, data.provider)
        codec, sample_rate = resolve_codec(data.provider, provider, data.codec, data.sample_rate)
        check_markup_style(data.provider, provider, data.markup_style)
        if data.credentials is not None:
            check_credentials(data.provider, provider, data.credentials)
        if data.verify_signatures and data.credentials is None:
            raise ApiError(400, _NEEDS_CREDENTIALS)
        connector_id = new_connector_id()
        token = (
            credential_box(request.app).encrypt(data.credentials, connector_id)
            if data.credentials is not None
            else None
        )
        async with transaction(request.app.state.db, request_clock(request)) as repo:
            connector, key = await repo.create_connector(
                principal.apikey,
                data.provider,
                name=data.name,
                default_room_id=data.default_room_id,
                default_rule_id=data.default_rule_id,
                region=data.region,
                codec=codec,
                sample_rate=sample_rate,
                markup_style=data.markup_style,
                verify_signatures=data.verify_signatures,
                credentials_token=token,
                connector_id=connector_id,
            )
        return ConnectorWithWebhookUrlResponse(
            message="Connector created successfully",
            data=_data_with_url(request, connector, key),
        )

    @get(
        "/",
        summary="List connectors",
        description="Newest first. Items never include the webhook URL.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def list_connectors(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: PageNumber = 1,
        perPage: PerPage = 20,
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
            page_info=PageInfo.of(page, per_page, total),
            data=[_data(c) for c in connectors],
        )

    @get(
        "/{connector_id:str}",
        summary="Get a connector",
        description="Never includes the webhook URL.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
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
        "cannot be changed. `credentials` replaces the stored credentials as a whole; `null` "
        "removes them (then `verifySignatures` must be off). `codec` without `sampleRate` takes "
        "the codec's first supported rate.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def update_connector(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        connector_id: str,
        data: Annotated[UpdateConnectorRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ConnectorResponse:
        fields: dict[str, Any] = {
            field: value
            for field in ("name", "default_room_id", "default_rule_id", "region", "markup_style")
            if (value := getattr(data, field)) is not UNSET
        }
        async with transaction(request.app.state.db, request_clock(request)) as repo:
            connector = await repo.get_connector(principal.apikey, connector_id)
            if connector is None:
                raise _not_found()
            name = connector.provider
            provider = _provider_object(request, name)
            if data.codec is not UNSET or data.sample_rate is not UNSET:
                codec = connector.codec if data.codec is UNSET else data.codec
                rate: int | None
                if data.sample_rate is not UNSET:
                    rate = data.sample_rate
                elif data.codec is not UNSET:
                    rate = None  # a new codec takes its own default rate
                else:
                    rate = connector.sample_rate
                fields["codec"], fields["sample_rate"] = resolve_codec(name, provider, codec, rate)
            if data.markup_style is not UNSET:
                check_markup_style(name, provider, data.markup_style)
            if data.credentials is not UNSET:
                if data.credentials is None:
                    fields["credentials_token"] = None
                else:
                    check_credentials(name, provider, data.credentials)
                    fields["credentials_token"] = credential_box(request.app).encrypt(
                        data.credentials, connector.id
                    )
            has_credentials = (
                connector.credentials is not None
                if data.credentials is UNSET
                else data.credentials is not None
            )
            verify = (
                connector.verify_signatures
                if data.verify_signatures is UNSET
                else data.verify_signatures
            )
            if verify and not has_credentials:
                raise ApiError(
                    400,
                    _NEEDS_CREDENTIALS
                    if data.credentials is UNSET
                    else f"{_NEEDS_CREDENTIALS}; turn it off to remove them",
                )
            if data.verify_signatures is not UNSET:
                fields["verify_signatures"] = data.verify_signatures
            updated = await repo.update_connector(principal.apikey, connector_id, **fields)
        if updated is None:
            raise _not_found()
        return ConnectorResponse(message="Connector updated successfully", data=_data(updated))

    @post(
        "/{connector_id:str}/rotate-key",
        status_code=200,
        summary="Rotate the webhook key",
        description="Returns the new `webhookUrl`; the previous URL stops working at once.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def rotate_key(
        self, request: Request[Any, Any, Any], principal: Principal, connector_id: str
    ) -> ConnectorWithWebhookUrlResponse:
        async with transaction(request.app.state.db, request_clock(request)) as repo:
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
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def delete_connector(
        self, request: Request[Any, Any, Any], principal: Principal, connector_id: str
    ) -> MessageResponse:
        async with transaction(request.app.state.db, request_clock(request)) as repo:
            deleted = await repo.delete_connector(principal.apikey, connector_id)
        if not deleted:
            raise _not_found()
        return MessageResponse(message="Connector deleted successfully")
