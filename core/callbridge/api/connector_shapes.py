"""The request and response bodies of the Connectors API, in VideoSDK's shape (camelCase).

The structs carry each field's type and limits; :mod:`callbridge.api.connector_rules` checks
what depends on the provider, and :mod:`callbridge.api.openapi` narrows the documented request
schemas to the enabled providers.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from callbridge.api.shapes import DateTime, PageInfo
from callbridge.store.ids import ROOM_ID_PATTERN

NO_NUL: Final = r"^[^\x00]*$"
"""PostgreSQL cannot store NUL characters, so no input string may contain one."""
CODECS: Final[tuple[str, ...]] = ("PCMU", "PCMA", "L16")
SAMPLE_RATES: Final[tuple[int, ...]] = (8000, 16000)
MAX_CREDENTIALS: Final = 16
MAX_CREDENTIAL_LENGTH: Final = 512
MAX_ROOM_ID_LENGTH: Final = 128

Codec = Literal["PCMU", "PCMA", "L16"]
SampleRate = Literal[8000, 16000]

_Provider = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        pattern=NO_NUL,
        description="Telephony provider; one of the providers enabled on this server.",
        examples=["twilio"],
    ),
]
_Name = Annotated[
    str,
    msgspec.Meta(
        max_length=200, pattern=NO_NUL, description="A label to recognise the connector by."
    ),
]
_RoomId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_ROOM_ID_LENGTH,
        pattern=ROOM_ID_PATTERN,
        description="Room that calls join when no routing rule decides: 1-128 characters of "
        "`A-Z a-z 0-9 _ . : -`, starting with a letter or digit.",
    ),
]
_RuleId = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=128, pattern=NO_NUL, description="Fallback routing rule id."
    ),
]
_Region = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=32, pattern=NO_NUL, description="Media/ingest region, e.g. us002."
    ),
]
_Codec = Annotated[
    Codec,
    msgspec.Meta(
        description="Audio codec on the provider leg; one the provider supports. `null`: the "
        "provider's default."
    ),
]
_SampleRate = Annotated[
    SampleRate,
    msgspec.Meta(
        description="Sample rate in Hz. With `codec` absent or `null`: the provider's first "
        "codec at this rate. Without it: the codec's first rate."
    ),
]
_MarkupStyle = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        pattern=NO_NUL,
        description="Answer-markup style; one of the provider's styles (Telnyx: `connect` or "
        "`start`). `null`: the provider's default.",
    ),
]
# Names and values are checked by connector_rules, so that errors name the field
# (credentials.publicKey); the documented schema shows each provider's closed object.
_Credentials = Annotated[
    dict[str, Any],
    msgspec.Meta(
        max_length=MAX_CREDENTIALS,
        description="Write-only provider credentials: exactly the provider's fields. Stored "
        "encrypted, never returned. On update, `null` removes them.",
    ),
]
_VerifySignatures = Annotated[
    bool,
    msgspec.Meta(
        description="Check the provider's signatures on webhooks and media sockets (403 when "
        "wrong); requires credentials."
    ),
]
_HasCredentials = Annotated[
    bool,
    msgspec.Meta(description="Whether the connector holds provider credentials (never shown)."),
]


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


_Source = Annotated[
    Literal["api", "config"],
    msgspec.Meta(
        description="`config` for a connector the server's YAML declares (read-only here)."
    ),
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
    source: _Source
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
    source: _Source
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
