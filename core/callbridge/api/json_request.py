"""The app's request class: every JSON API body is decoded by :mod:`callbridge.safe_json`.

Litestar would decode a handler's ``data`` with its own decoder, where a deeply nested document
raises ``RecursionError``, and then convert it with ``strict=False``, which takes ``"16000"``
for an integer and ``0`` for ``false``. :class:`JsonRequest` instead decodes the body within
:data:`~callbridge.safe_json.BODY_LIMITS` and strictly into the type of the route handler's
``data`` parameter; Litestar then finds a value of that type already and keeps it.

Every failure is a :class:`BodyError`: 413 for a body over the size limit, otherwise 400 with a
message naming the field (``sampleRate: Expected `int | null`, got `str```) or ``body``.
Install it with ``Litestar(request_class=JsonRequest)``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from litestar import Request
from litestar.handlers.base import BaseRouteHandler

from callbridge import safe_json
from callbridge.api.errors import ApiError
from callbridge.safe_json import BODY_LIMITS, JsonInputError

BODY_FIELD: Final = "body"
"""The field name of problems that concern the whole body."""

_FIELD_PROBLEMS: Final = (
    (re.compile(r"^Object missing required field `(?P<name>[^`]*)`$"), "is required"),
    (re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$"), "unknown field"),
)


class BodyError(ApiError):
    """A request body that cannot be accepted.

    Attributes:
        field: the offending field as a dotted path (``credentials``, ``sampleRate``), or
            ``body`` when the problem concerns the whole document.
        problem: what is wrong; never quotes the input.
    """

    def __init__(self, field: str, problem: str, status_code: int = 400) -> None:
        super().__init__(status_code, f"{field}: {problem}")
        self.field = field
        self.problem = problem


def body_error(error: JsonInputError) -> BodyError:
    """The :class:`BodyError` for a :class:`~callbridge.safe_json.JsonInputError`, with
    msgspec's ``Object missing required field `x``` put as ``x: is required``."""
    for pattern, problem in _FIELD_PROBLEMS:
        match = pattern.match(error.problem)
        if match:
            name = match.group("name")
            return BodyError(f"{error.path}.{name}" if error.path else name, problem)
    return BodyError(error.path or BODY_FIELD, error.problem)


def _data_type(handler: BaseRouteHandler) -> Any:
    field = handler.parsed_data_field
    return None if field is None else field.annotation


class JsonRequest(Request[Any, Any, Any]):
    """A :class:`litestar.Request` whose :meth:`json` decodes strictly with ``safe_json``."""

    async def json(self) -> Any:
        """The body decoded into the route handler's ``data`` type (plain JSON values for a
        handler without ``data``).

        Raises:
            BodyError: 413 when the body is larger than ``BODY_LIMITS.max_bytes``; 400 when it
                is not UTF-8 JSON, nests too deeply or does not fit the type.
        """
        body = await self.body()
        if len(body) > BODY_LIMITS.max_bytes:
            raise BodyError(BODY_FIELD, f"larger than {BODY_LIMITS.max_bytes} bytes", 413)
        target = _data_type(self.route_handler)
        try:
            if target is None:
                return safe_json.decode(body, BODY_LIMITS)
            return safe_json.decode_as(body, target, BODY_LIMITS)
        except JsonInputError as error:
            raise body_error(error) from None
