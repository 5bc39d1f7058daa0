"""Shapes every REST controller shares: timestamps, paging, error response specs, the clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
from litestar import Request
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from callbridge.api.errors import ErrorBody

if TYPE_CHECKING:
    from callbridge.runtime import Runtime

MAX_PER_PAGE: Final = 100
MAX_PAGE: Final = 1_000_000

DateTime = Annotated[
    str,
    msgspec.Meta(
        description="ISO 8601 UTC timestamp with milliseconds.",
        examples=["2026-06-21T14:30:45.123Z"],
        # Litestar copies extra_json_schema["extra"] into the OpenAPI schema of the field.
        extra_json_schema={"extra": {"format": "date-time"}},
    ),
]
PageNumber = Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="1-based page number.")]
PerPage = Annotated[int, Parameter(ge=1, le=MAX_PER_PAGE, description="Items per page.")]


class PageInfo(msgspec.Struct, rename="camel"):
    """Where a list response sits among all items."""

    current_page: int
    per_page: int
    last_page: int
    total: int

    @classmethod
    def of(cls, page: int, per_page: int, total: int) -> PageInfo:
        return cls(
            current_page=page,
            per_page=per_page,
            last_page=max(1, math.ceil(total / per_page)),
            total=total,
        )


def format_timestamp(value: datetime) -> str:
    """``2026-06-21T14:30:45.123Z``: UTC, milliseconds, ``Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def error_spec(description: str) -> ResponseSpec:
    """An OpenAPI response documented as ``{"message": ...}``."""
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


UNAUTHORIZED = error_spec("Missing, malformed, expired or unverifiable API token.")


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    """The server's :class:`~callbridge.runtime.Runtime` (``app.state.runtime``)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_clock(request: Request[Any, Any, Any]) -> Callable[[], float]:
    """The app's clock (injected by tests), else the wall clock."""
    clock: Callable[[], float] = request.app.state.get("clock", time.time)
    return clock
