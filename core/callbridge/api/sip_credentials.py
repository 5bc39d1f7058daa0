"""``/v2/sip/credentials``: the digest credentials SIP trunks and softphones use to call
``sip:<roomId>@<domain>`` as an API key.

Create makes a ``username`` and a random ``password``; the password is shown in that answer and
in the answer of rotate, never again (list and get omit the field). It is stored encrypted
(:class:`~callbridge.crypto.CredentialBox`, bound to the credential id) and redacted from logs.
Rotating replaces the password at once: the old one stops authenticating when the rotation
commits, with no grace period (to move a trunk without a gap, create a second credential, switch
the trunk to it, then delete the first). ``allowedNetworks`` limits the source addresses a
credential works from (a trunk's published ranges); ``null`` or absent allows any.
``authenticateBy: source`` makes a credential for a carrier trunk that authenticates by its
addresses and never answers a digest challenge: an INVITE without credentials from one of its
``allowedNetworks`` (required, none wider than /16 or /48) is taken unchallenged. Another API
key's credential answers exactly like an unknown one (404).

Uses ``request.app.state.db`` and ``.runtime`` (its ``credential_box`` and ``settings.sip``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import Body

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.connector_shapes import NO_NUL, MessageResponse
from callbridge.api.errors import ApiError, error_response
from callbridge.api.json_request import BodyError
from callbridge.api.shapes import (
    UNAUTHORIZED,
    DateTime,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
    request_clock,
    runtime_of,
)
from callbridge.sip import store
from callbridge.sip.store import MAX_NETWORKS, Network, SipCredential, parse_network
from callbridge.store.repository import Repository, transaction

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?"
_H16 = r"[0-9A-Fa-f]{1,4}"
_IPV6 = (
    "(?:"
    + "|".join(
        (
            rf"(?:{_H16}:){{7}}{_H16}",
            rf"(?:{_H16}:){{1,7}}:",
            rf"(?:{_H16}:){{1,6}}:{_H16}",
            rf"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}",
            rf"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
            rf"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}",
            rf"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
            rf"{_H16}:(?::{_H16}){{1,6}}",
            rf":(?:(?::{_H16}){{1,7}}|:)",
        )
    )
    + r")(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"
)
NETWORK_PATTERN: Final = rf"^(?:{_IPV4}|{_IPV6})$"
"""An IPv4 or IPv6 network in CIDR notation, or one address (a JSON Schema pattern)."""
_NETWORK_FIELD = re.compile(r"^allowedNetworks\[[0-9]+\]$")
_NETWORK_HELP: Final = "not a network in CIDR notation (e.g. 203.0.113.0/24 or 2001:db8::/32)"
_NO_EXTRA_FIELDS: Final = {"additional_properties": False}

_Name = Annotated[
    str,
    msgspec.Meta(
        max_length=200, pattern=NO_NUL, description="A label to recognise the credential by."
    ),
]
_NetworkText = Annotated[
    str,
    msgspec.Meta(
        pattern=NETWORK_PATTERN,
        description="An IPv4 or IPv6 network in CIDR notation, or one address; host bits are "
        "cleared (`203.0.113.7/24` is `203.0.113.0/24`).",
        examples=["203.0.113.0/24"],
    ),
]
_Networks = Annotated[
    list[_NetworkText],
    msgspec.Meta(
        min_length=1,
        max_length=MAX_NETWORKS,
        # Litestar leaves out the items' own constraints; this puts them back.
        extra_json_schema={"extra": {"items": {"type": "string", "pattern": NETWORK_PATTERN}}},
        description="Source networks SIP requests with this credential must come from (a "
        "trunk's published ranges). `null` or absent: any address.",
    ),
]


_AuthenticateBy = Annotated[
    Literal["digest", "source"],
    msgspec.Meta(
        description="`digest` (default): every INVITE and REGISTER answers a digest challenge "
        "with this username and password. `source`: also an INVITE without credentials from "
        "one of `allowedNetworks` (then required, none wider than /16 for IPv4 or /48 for "
        "IPv6) is taken as this API key's, for carrier trunks that authenticate by address."
    ),
]


class CreateSipCredentialRequest(
    msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True
):
    """Body of ``POST /v2/sip/credentials`` (optional: no body takes the defaults)."""

    name: _Name | None = None
    allowed_networks: _Networks | None = None
    authenticate_by: _AuthenticateBy = "digest"


_NO_BODY: Final = CreateSipCredentialRequest()


class SipCredentialData(msgspec.Struct, rename="camel"):
    """A SIP credential as list and get show it: never its password."""

    id: str
    name: str | None
    username: Annotated[str, msgspec.Meta(description="The digest username.")]
    domain: Annotated[
        str, msgspec.Meta(description="The SIP domain to call, also the digest realm.")
    ]
    sip_uri: Annotated[
        str,
        msgspec.Meta(
            description="What to dial, with the room id in place of `<roomId>`.",
            examples=["sip:<roomId>@sip.example.com"],
        ),
    ]
    allowed_networks: list[str] | None
    authenticate_by: _AuthenticateBy
    created_at: DateTime
    rotated_at: DateTime | None
    last_used_at: DateTime | None


class SipCredentialWithPassword(SipCredentialData, rename="camel"):
    """A SIP credential with its password: in the answers of create and rotate only."""

    password: Annotated[
        str, msgspec.Meta(description="The digest password; shown once, store it now.")
    ]


class SipCredentialResponse(msgspec.Struct):
    message: str
    data: SipCredentialData


class SipCredentialPasswordResponse(msgspec.Struct):
    message: str
    data: SipCredentialWithPassword


class SipCredentialListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[SipCredentialData]


@dataclass
class _OptionalBodyOperation(Operation):
    # Litestar documents every request body as required.
    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


def sip_uri(domain: str) -> str:
    """The example address of a room at ``domain`` (an IPv6 literal goes in brackets)."""
    host = f"[{domain}]" if ":" in domain and not domain.startswith("[") else domain
    return f"sip:<roomId>@{host}"


def _data(request: Request[Any, Any, Any], row: SipCredential) -> dict[str, Any]:
    domain = runtime_of(request).settings.sip.domain
    return {
        "id": row.id,
        "name": row.name,
        "username": row.username,
        "domain": domain,
        "sip_uri": sip_uri(domain),
        "allowed_networks": store.shown_networks(row),
        "authenticate_by": row.authenticate_by,
        "created_at": format_timestamp(row.created_at),
        "rotated_at": None if row.rotated_at is None else format_timestamp(row.rotated_at),
        "last_used_at": None if row.last_used_at is None else format_timestamp(row.last_used_at),
    }


def _networks(texts: list[str] | None) -> list[Network] | None:
    if texts is None:
        return None
    networks = []
    for index, text in enumerate(texts):
        try:
            networks.append(parse_network(text))
        except ValueError:
            raise ApiError(400, f"allowedNetworks[{index}]: {_NETWORK_HELP}") from None
    return networks


def _check_source_networks(networks: list[Network] | None) -> None:
    """A credential that authenticates by source names where from, and narrowly."""
    if not networks:
        raise ApiError(
            400, "allowedNetworks: authenticateBy source needs the trunk's networks, not any"
        )
    for index, network in enumerate(networks):
        if store.too_wide_for_source(network):
            widest = store.MIN_SOURCE_PREFIX[network.version]
            raise ApiError(
                400,
                f"allowedNetworks[{index}]: wider than /{widest}, too wide to take calls "
                "without a password from",
            )


async def _credential(repo: Repository, apikey: str, credential_id: str) -> SipCredential:
    """The key's credential ``credential_id``; 404 when it has none of that id."""
    row = await store.get_credential(repo.session, apikey, credential_id)
    if row is None:
        raise ApiError(404, "Not found")
    return row


def _body_error(request: Request[Any, Any, Any], exc: BodyError) -> Response[Any]:
    if _NETWORK_FIELD.match(exc.field) and "regex" in exc.problem:
        return error_response(400, f"{exc.field}: {_NETWORK_HELP}")
    if exc.field == "allowedNetworks" and ">= 1" in exc.problem:
        return error_response(
            400, "allowedNetworks: list at least one network, or send null for any address"
        )
    return error_response(exc.status_code, exc.message, exc.headers)


_BAD_REQUEST = error_spec(
    "Invalid request: not UTF-8 JSON, an unknown field, or a value the schema refuses, such "
    "as a network not in CIDR notation; the message names the field (`allowedNetworks[0]: …`)."
)
_NOT_FOUND = error_spec("No such SIP credential for this API key.")
_TOO_LARGE = error_spec("The body is larger than 64 KiB.")


class SipCredentialController(Controller):
    """The SIP Credentials API."""

    path = "/v2/sip/credentials"
    tags = ["sip"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT
    exception_handlers = {BodyError: _body_error}

    @post(
        "/",
        status_code=201,
        summary="Create a SIP credential",
        description="Makes a digest `username` and `password` for SIP requests of this API key. "
        "The password is in this answer only. The body is optional.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 413: _TOO_LARGE},
        operation_class=_OptionalBodyOperation,
    )
    async def create_sip_credential(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[CreateSipCredentialRequest, Body(schema_extra=_NO_EXTRA_FIELDS)] = _NO_BODY,
    ) -> SipCredentialPasswordResponse:
        networks = _networks(data.allowed_networks)
        if data.authenticate_by == store.SOURCE:
            _check_source_networks(networks)
        credential_id = store.new_credential_id()
        password = store.new_password()
        token = store.seal_password(runtime_of(request).credential_box, password, credential_id)
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            row = await store.create_credential(
                repo.session,
                credential_id=credential_id,
                apikey=principal.apikey,
                username=store.new_username(),
                password_token=token,
                now=repo.now(),
                name=data.name,
                allowed_networks=networks,
                authenticate_by=data.authenticate_by,
            )
        return SipCredentialPasswordResponse(
            "SIP credential created successfully",
            SipCredentialWithPassword(**_data(request, row), password=password),
        )

    @get(
        "/",
        summary="List SIP credentials",
        description="Newest first; passwords are never listed.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def list_sip_credentials(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: PageNumber = 1,
        perPage: PerPage = 20,
    ) -> SipCredentialListResponse:
        async with transaction(request.app.state.db) as repo:
            total, rows = await store.list_credentials(
                repo.session, principal.apikey, limit=perPage, offset=(page - 1) * perPage
            )
        return SipCredentialListResponse(
            "SIP credentials fetched successfully",
            PageInfo.of(page, perPage, total),
            [SipCredentialData(**_data(request, row)) for row in rows],
        )

    @get(
        "/{credential_id:str}",
        summary="Get a SIP credential",
        description="Never includes the password.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def get_sip_credential(
        self, request: Request[Any, Any, Any], principal: Principal, credential_id: str
    ) -> SipCredentialResponse:
        async with transaction(request.app.state.db) as repo:
            row = await _credential(repo, principal.apikey, credential_id)
        return SipCredentialResponse(
            "SIP credential fetched successfully", SipCredentialData(**_data(request, row))
        )

    @post(
        "/{credential_id:str}/rotate",
        status_code=200,
        summary="Rotate a SIP credential's password",
        description="Returns the new password, shown only here; the old one stops working at "
        "once. The username stays.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def rotate_sip_credential(
        self, request: Request[Any, Any, Any], principal: Principal, credential_id: str
    ) -> SipCredentialPasswordResponse:
        box = runtime_of(request).credential_box
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            row = await _credential(repo, principal.apikey, credential_id)
            password = store.new_password()
            store.set_password(row, store.seal_password(box, password, row.id), repo.now())
        return SipCredentialPasswordResponse(
            "SIP credential rotated successfully",
            SipCredentialWithPassword(**_data(request, row), password=password),
        )

    @delete(
        "/{credential_id:str}",
        status_code=200,
        summary="Delete a SIP credential",
        description="It stops authenticating at once.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def delete_sip_credential(
        self, request: Request[Any, Any, Any], principal: Principal, credential_id: str
    ) -> MessageResponse:
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            deleted = await store.delete_credential(repo.session, principal.apikey, credential_id)
        if not deleted:
            raise ApiError(404, "Not found")
        return MessageResponse(message="SIP credential deleted successfully")
