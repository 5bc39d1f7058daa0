"""Bodies of ``/v2/webhooks`` (also served at VideoSDK's ``/v2/sip/webhooks``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from callbridge.api.connector_shapes import NO_NUL
from callbridge.api.shapes import DateTime, PageInfo

EventType = Literal[
    "call-started",
    "call-answered",
    "call-hangup",
    "call-failed",
    "call-dtmf",
    "participant-joined",
    "participant-left",
]
_Url = Annotated[
    str,
    msgspec.Meta(
        min_length=8,
        max_length=2048,
        pattern=r"^https?://[^\s\x00]+$",
        description="Where events are POSTed (http or https; checked against SSRF rules).",
    ),
]
_Events = Annotated[
    list[EventType],
    msgspec.Meta(min_length=1, max_length=7, description="The event types to receive."),
]
_Signer = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL, description="Webhook signer plugin."),
]
_Secret = Annotated[
    str,
    msgspec.Meta(
        min_length=24,
        max_length=512,
        pattern=r"^\S+$",
        description="Endpoint secret for HMAC signers (whsec_…); generated when absent.",
    ),
]


class CreateWebhookRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``POST /v2/webhooks``."""

    url: _Url
    events: _Events
    signer: _Signer | None = None
    secret: _Secret | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"CreateWebhookRequest(events={self.events!r})"


class UpdateWebhookRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``PATCH /v2/webhooks/{id}``: absent fields stay. A new ``secret`` (or
    ``rotateSecret: true``) keeps the old one signing alongside for
    ``webhooks.secret_grace_seconds``; ``enabled: true`` re-enables a disabled subscription."""

    url: _Url | UnsetType = UNSET
    events: _Events | UnsetType = UNSET
    signer: _Signer | UnsetType = UNSET
    secret: _Secret | UnsetType = UNSET
    rotate_secret: bool = False
    enabled: bool | UnsetType = UNSET

    def __repr__(self) -> str:
        return "UpdateWebhookRequest()"


class WebhookData(msgspec.Struct, rename="camel"):
    """A subscription as list and get show it (the URL without its query string)."""

    id: str
    url: str
    events: list[str]
    signer: str
    has_secret: bool
    enabled: bool
    disabled_reason: str | None
    created_at: DateTime
    updated_at: DateTime


class WebhookWithSecret(WebhookData, rename="camel"):
    """A subscription with its secret, shown once (create, and a rotation)."""

    secret: str | None = None


class WebhookResponse(msgspec.Struct):
    message: str
    data: WebhookData


class WebhookSecretResponse(msgspec.Struct):
    """Create and update: ``secret`` is shown when one was just made (else ``null``)."""

    message: str
    data: WebhookWithSecret


class WebhookListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[WebhookData]


class AttemptData(msgspec.Struct, rename="camel"):
    """One try of a delivery."""

    attempted_at: DateTime
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None
    manual: bool


class DeliveryData(msgspec.Struct, rename="camel"):
    """One event to one subscription, with its attempts."""

    id: str
    event_id: str
    event_type: str
    call_id: str | None
    sequence: int
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: list[AttemptData]
    next_attempt_at: DateTime | None
    delivered_at: DateTime | None
    created_at: DateTime


class DeliveryListResponse(msgspec.Struct, rename="camel"):
    message: str
    page_info: PageInfo
    data: list[DeliveryData]


class TestResult(msgspec.Struct, rename="camel"):
    """The answer to a ``ping``."""

    event_id: str
    delivered: bool
    status_code: int | None
    latency_ms: int
    error: str | None


class TestResponse(msgspec.Struct):
    message: str
    data: TestResult


class RedeliverRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``POST /v2/webhooks/{id}/redeliver``: every failed delivery since ``since``
    (at most 14 days ago) is queued again."""

    since: DateTime


class RedeliverResult(msgspec.Struct, rename="camel"):
    queued: int


class RedeliverResponse(msgspec.Struct):
    message: str
    data: RedeliverResult
