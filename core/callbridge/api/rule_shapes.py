"""The request and response bodies of ``/v2/routing-rules`` and ``/v2/routing/explain``
(camelCase, like the Connectors API); a rule's own shape is :mod:`callbridge.routing.shapes`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from callbridge.api.shapes import DateTime, PageInfo
from callbridge.routing.shapes import (
    NO_NUL,
    DispatchShape,
    MatchShape,
    Metadata,
    Name,
    Priority,
    Short,
    Text,
)


class RulePatch(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``PATCH /v2/routing-rules/{id}``: absent fields stay, ``null`` clears one."""

    dispatch: DispatchShape | UnsetType = UNSET
    match: MatchShape | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    transport: Short | UnsetType | None = UNSET
    region: Short | UnsetType | None = UNSET
    codec: Literal["PCMU", "PCMA", "L16"] | UnsetType | None = UNSET
    metadata: Metadata | UnsetType = UNSET


class RuleData(msgspec.Struct, rename="camel"):
    """A routing rule as the API shows it (numbers normalised to E.164)."""

    id: str
    name: str
    priority: int
    match: MatchShape
    dispatch: DispatchShape
    transport: str | None
    region: str | None
    codec: str | None
    metadata: dict[str, str]
    source: Literal["api", "config"]
    created_at: DateTime | None


class RuleResponse(msgspec.Struct, rename="camel"):
    message: str
    data: RuleData


class RuleListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[RuleData]


class ExplainRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``POST /v2/routing/explain``: a call as its webhook would describe it
    (``connectorId``: a connector, or the SIP credential a SIP call authenticates with)."""

    connector_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
    from_: Text | None = msgspec.field(default=None, name="from")
    to: Text | None = None
    room_id: Text | None = None
    at: DateTime | None = None
    """When the call happens (time windows); default: now."""


class ExplainResponse(msgspec.Struct, rename="camel"):
    """The routing decision and every step's reasoning (see ``POST /v2/routing/explain``)."""

    message: str
    data: dict[str, Any]
