"""``/v2/connectors``: create, list, get, update, rotate the webhook key of, and delete connectors.

Shapes follow VideoSDK's Connectors API (:mod:`callbridge.api.connector_shapes`). The
``webhookUrl`` embeds the secret ``whk_`` key, so it appears only in the responses of create
and rotate-key; list and get never carry it (the field is omitted, not redacted). Another API
key's connector answers exactly like an unknown one (404).

A connector may carry media options (``codec``/``sampleRate``, ``markupStyle``), provider
``credentials`` (write-only: encrypted with :class:`~callbridge.crypto.CredentialBox` bound to
the connector id, never returned; responses say ``hasCredentials``) and ``verifySignatures``
(which needs credentials); :mod:`callbridge.api.connector_rules` checks them against the
provider. A body that is wrong on its own gets 400; an update that is fine in itself but that
this connector cannot take (its provider has no such codec, it holds no credentials) gets 409.

Writes run in ``transaction(write=True)``: they read the connector first, and SQLite would
fail them at once (a 500) if another connection wrote in between.

Uses ``request.app.state.db``, ``.public_api_url``, ``.provider_names`` and ``.runtime`` (its
``providers`` and ``credential_box``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.params import Body
from msgspec import UNSET

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.connector_rules import (
    NEEDS_CREDENTIALS,
    ProviderOptions,
    RuleError,
    check_room_id,
    check_update,
    check_update_body,
)
from callbridge.api.connector_shapes import (
    ConnectorData,
    ConnectorListResponse,
    ConnectorResponse,
    ConnectorWithWebhookUrl,
    ConnectorWithWebhookUrlResponse,
    CreateConnectorRequest,
    MessageResponse,
    UpdateConnectorRequest,
)
from callbridge.api.errors import ApiError, error_response, validation_message
from callbridge.api.json_request import BodyError
from callbridge.api.shapes import (
    UNAUTHORIZED,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
    request_clock,
)
from callbridge.crypto import CredentialBox
from callbridge.redaction import remember_secrets
from callbridge.runtime import Runtime
from callbridge.store.ids import new_connector_id
from callbridge.store.models import Connector
from callbridge.store.repository import Repository, transaction

_NO_EXTRA_FIELDS: Final = {"additional_properties": False}


def webhook_url(public_api_url: str, provider: str, webhook_key: str) -> str:
    """The connector's secret voice-webhook URL."""
    return f"{public_api_url.rstrip('/')}/v2/hooks/{provider}/{webhook_key}"


def enabled_providers(request: Request[Any, Any, Any]) -> dict[str, ProviderOptions]:
    """What each provider enabled on this server accepts, by name, in configuration order."""
    runtime: Runtime = request.app.state.runtime
    return {
        name: ProviderOptions.of(name, runtime.providers[name])
        for name in request.app.state.provider_names
    }


def _sealed(request: Request[Any, Any, Any], credentials: Mapping[str, str], owner: str) -> str:
    """The encrypted token of ``credentials`` bound to connector ``owner``; their values are
    redacted from logs from now on."""
    runtime: Runtime = request.app.state.runtime
    remember_secrets(credentials.values())
    box: CredentialBox = runtime.credential_box
    return box.encrypt(dict(credentials), owner)


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
        "source": connector.source or "api",
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


def _not_found() -> ApiError:
    return ApiError(404, "Not found")


def _read_only(connector: Connector) -> ApiError:
    return ApiError(
        409,
        f"connector {connector.id} is defined in the configuration (connectors:); change it there",
    )


def _check_region(request: Request[Any, Any, Any], region: str | None) -> None:
    """With regions configured, a connector's region must be one of them."""
    regions = request.app.state.runtime.settings.routing.regions
    if region is not None and regions and region not in regions:
        raise ApiError(400, f"region: must be one of: {', '.join(regions)}")


async def _check_default_rule(
    request: Request[Any, Any, Any], repo: Repository, apikey: str, rule_id: str | None
) -> None:
    """A ``defaultRuleId`` must name a routing rule of the same API key."""
    if rule_id is None:
        return
    runtime: Runtime = request.app.state.runtime
    if any(rule.id == rule_id for rule in runtime.rules.config_rules_of(apikey)):
        return
    if await repo.get_rule(apikey, rule_id) is None:
        raise ApiError(400, f"defaultRuleId: no routing rule {rule_id} for this API key")


def _refused(status_code: int, error: RuleError) -> ApiError:
    return ApiError(status_code, str(error))


def _body_error(request: Request[Any, Any, Any], exc: BodyError) -> Response[Any]:
    if exc.field == "provider" and exc.problem == "is required":
        choices = ", ".join(request.app.state.provider_names)
        return error_response(400, f"provider: is required (one of: {choices})")
    if exc.field == "provider" and request.method == "PATCH":
        return error_response(400, "provider: cannot be changed after creation")
    return error_response(exc.status_code, exc.message, exc.headers)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(400, validation_message(exc))


_BAD_REQUEST = error_spec(
    "Invalid request: not UTF-8 JSON, nested too deeply, or a field the documented schema "
    "refuses; the message names the field (`sampleRate: …`, `credentials.publicKey: …`)."
)
_TOO_LARGE = error_spec("The body is larger than 64 KiB.")
_NOT_FOUND = error_spec("No such connector for this API key.")
_CONFLICT = error_spec(
    "The update is valid in itself but not for this connector: its provider has no such codec, "
    "rate, markup style or credential fields, or it would verify signatures without credentials. "
    "The message names the field and the provider's choices."
)


class ConnectorController(Controller):
    """The Connectors API."""

    path = "/v2/connectors"
    tags = ["connectors"]
    guards = [auth_guard]  # 401 before the body is even parsed
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT
    exception_handlers = {BodyError: _body_error, ValidationException: _validation_error}

    @post(
        "/",
        status_code=201,
        summary="Create a connector",
        description="The body is one provider's connector: `provider` selects which fields and "
        "values apply. Returns the connector with its secret `webhookUrl`, shown only here and "
        "by rotate-key.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 413: _TOO_LARGE},
    )
    async def create_connector(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[CreateConnectorRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ConnectorWithWebhookUrlResponse:
        providers = enabled_providers(request)
        options = providers.get(data.provider)
        if options is None:
            raise ApiError(400, f"provider: must be one of: {', '.join(providers)}")
        try:
            check_room_id(data.default_room_id)
            codec, sample_rate = options.resolve_codec(data.codec, data.sample_rate)
            options.check_markup_style(data.markup_style)
            credentials = (
                None if data.credentials is None else options.check_credentials(data.credentials)
            )
            if data.verify_signatures and credentials is None:
                raise RuleError("verifySignatures", NEEDS_CREDENTIALS)
        except RuleError as error:
            raise _refused(400, error) from None
        _check_region(request, data.region)
        connector_id = new_connector_id()
        token = None if credentials is None else _sealed(request, credentials, connector_id)
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            await _check_default_rule(request, repo, principal.apikey, data.default_rule_id)
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
        "the codec's first rate; `sampleRate` alone keeps the codec (or, with none, takes the "
        "provider's first codec at that rate). 409 when this connector's provider cannot take "
        "the values.",
        responses={
            400: _BAD_REQUEST,
            401: UNAUTHORIZED,
            404: _NOT_FOUND,
            409: _CONFLICT,
            413: _TOO_LARGE,
        },
    )
    async def update_connector(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        connector_id: str,
        data: Annotated[UpdateConnectorRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ConnectorResponse:
        providers = enabled_providers(request)
        try:
            check_update_body(data, list(providers.values()))
        except RuleError as error:
            raise _refused(400, error) from None
        fields: dict[str, Any] = {
            field: value
            for field, value in (
                ("name", data.name),
                ("default_room_id", data.default_room_id),
                ("default_rule_id", data.default_rule_id),
                ("region", data.region),
                ("markup_style", data.markup_style),
            )
            if value is not UNSET
        }
        if data.region is not UNSET:
            _check_region(request, data.region)
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            connector = await repo.get_connector(principal.apikey, connector_id)
            if connector is None:
                raise _not_found()
            if connector.source == "config":
                raise _read_only(connector)
            if data.default_rule_id is not UNSET:
                await _check_default_rule(request, repo, principal.apikey, data.default_rule_id)
            try:
                changes = check_update(providers.get(connector.provider), connector, data)
            except RuleError as error:
                raise _refused(409, error) from None
            if "credentials" in changes:
                credentials = changes.pop("credentials")
                fields["credentials_token"] = (
                    None if credentials is None else _sealed(request, credentials, connector.id)
                )
            fields.update(changes)
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
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            existing = await repo.get_connector(principal.apikey, connector_id)
            if existing is not None and existing.source == "config":
                raise _read_only(existing)
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
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            existing = await repo.get_connector(principal.apikey, connector_id)
            if existing is not None and existing.source == "config":
                raise _read_only(existing)
            deleted = await repo.delete_connector(principal.apikey, connector_id)
        if not deleted:
            raise _not_found()
        return MessageResponse(message="Connector deleted successfully")
