"""The shape of a routing rule as the API takes it and YAML ``routing_rules:`` entries write
it (camelCase, like the Connectors API)."""

from __future__ import annotations

import zoneinfo
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec
import phonenumbers

from callbridge.store.ids import ROOM_ID_PATTERN

NO_NUL: Final = r"^[^\x00]*$"

MAX_VALUES: Final = 100
MAX_METADATA: Final = 20
PRIORITY_LIMIT: Final = 1_000_000

Text = Annotated[str, msgspec.Meta(max_length=255, pattern=NO_NUL)]
_Address = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00]*\S[^\x00]*$",
        description="A phone number (any format; stored in E.164) or an identity (client:…, "
        "sip:…, a short code), matched exactly.",
    ),
]
_Addresses = Annotated[list[_Address], msgspec.Meta(max_length=MAX_VALUES)]
_DAY = "(mon|tue|wed|thu|fri|sat|sun)"
_HOUR = "([01][0-9]|2[0-3]):[0-5][0-9]"
TIME_ZONES: Final = tuple(sorted(zoneinfo.available_timezones() - {"Factory", "localtime"}))
COUNTRIES: Final = tuple(sorted(phonenumbers.SUPPORTED_REGIONS))
if TYPE_CHECKING:
    TimeZoneName = str
    CountryCode = str
else:
    TimeZoneName = Literal[TIME_ZONES]
    CountryCode = Literal[COUNTRIES]
_Country = Annotated[
    CountryCode,
    msgspec.Meta(description="ISO 3166 alpha-2 country for national-format numbers in this rule."),
]
_Day = Annotated[
    str,
    msgspec.Meta(pattern=f"^{_DAY}(-{_DAY})?$", description="A day or a range: mon, mon-fri."),
]
_Start = Annotated[str, msgspec.Meta(pattern=f"^{_HOUR}$", examples=["09:00"])]
_End = Annotated[
    str,
    msgspec.Meta(
        pattern=f"^({_HOUR}|24:00)$",
        examples=["17:00"],
        description="At or before start: the window runs past midnight; 24:00 is midnight.",
    ),
]
_Prefix = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\+?[0-9]{1,15}$",
        description="Country code and leading digits, e.g. +1415 (a + is added if missing).",
    ),
]
_Prefixes = Annotated[list[_Prefix], msgspec.Meta(max_length=MAX_VALUES)]
Name = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
Priority = Annotated[
    int,
    msgspec.Meta(
        ge=-PRIORITY_LIMIT,
        le=PRIORITY_LIMIT,
        description="Higher is tried first; ties go to the older rule, then the smaller id.",
    ),
]
_RoomId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=ROOM_ID_PATTERN)]
_RoomPrefix = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.:\-]*$")]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
_Values = Annotated[list[Short], msgspec.Meta(max_length=MAX_VALUES)]
Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)], Text],
    msgspec.Meta(max_length=MAX_METADATA),
]


class TimeWindowShape(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """When a rule applies, in a time zone; an ``end`` at or before ``start`` runs past
    midnight."""

    days: Annotated[list[_Day], msgspec.Meta(min_length=1, max_length=7)]
    start: _Start
    end: _End
    time_zone: TimeZoneName


class MatchShape(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """What a call must look like; every condition given must hold."""

    to: _Addresses = msgspec.field(default_factory=list)
    to_prefixes: _Prefixes = msgspec.field(default_factory=list)
    from_: _Addresses = msgspec.field(default_factory=list, name="from")
    from_prefixes: _Prefixes = msgspec.field(default_factory=list)
    connector_ids: _Values = msgspec.field(default_factory=list)
    providers: _Values = msgspec.field(default_factory=list)
    time_window: TimeWindowShape | None = None
    default_country: _Country | None = None


class RoomDispatch(
    msgspec.Struct, tag_field="type", tag="room", rename="camel", forbid_unknown_fields=True
):
    """A fixed room."""

    room_id: _RoomId


class CallerDispatch(
    msgspec.Struct,
    tag_field="type",
    tag="caller",
    rename="camel",
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    """A room per caller: ``roomPrefix`` + the caller's number (without ``+``) or identity."""

    room_prefix: _RoomPrefix = ""


class CalleeDispatch(
    msgspec.Struct,
    tag_field="type",
    tag="callee",
    rename="camel",
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    """A room per called number: ``roomPrefix`` + the called number (without ``+``)."""

    room_prefix: _RoomPrefix = ""


DispatchShape = RoomDispatch | CallerDispatch | CalleeDispatch
"""Where a matching call goes, by ``type``."""


class RuleBody(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``POST /v2/routing-rules``."""

    dispatch: DispatchShape
    match: MatchShape = msgspec.field(default_factory=MatchShape)
    name: Name = ""
    priority: Priority = 0
    transport: Short | None = None
    region: Short | None = None
    codec: Literal["PCMU", "PCMA", "L16"] | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)
