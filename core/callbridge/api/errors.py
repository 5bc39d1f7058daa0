"""Error responses in VideoSDK style: a JSON body ``{"message": "..."}``.

Every 404 uses :data:`NOT_FOUND_BODY` through :func:`not_found_response`, so an unknown path,
another API key's resource and an unknown or rotated webhook key cannot be told apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import sqlalchemy.exc
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from callbridge.store.ids import redact_secrets

logger = logging.getLogger(__name__)

NOT_FOUND_BODY: Final[Mapping[str, str]] = {"message": "Not found"}
INTERNAL_ERROR_MESSAGE: Final = "Internal server error"

_BACKTICKED = re.compile(r"`([^`]*)`")


class ErrorBody(msgspec.Struct):
    """The body of every error response."""

    message: str


class ApiError(Exception):
    """An error with a status code and a message that is safe to show to the client.

    Args:
        status_code: HTTP status.
        message: the client-facing ``message``; never put secrets or tokens in it.
        headers: extra response headers.
    """

    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})


def not_found_response() -> Response[Any]:
    """The one 404 response (same body and headers wherever it is returned)."""
    return Response(content=dict(NOT_FOUND_BODY), status_code=404, media_type=MediaType.JSON)


STORE_BUSY_MESSAGE: Final = "the server is busy; try again shortly"


def error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response[Any]:
    """A ``{"message": ...}`` response; any 404 becomes :func:`not_found_response`."""
    if status_code == 404:
        return not_found_response()
    return Response(
        content={"message": message},
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=dict(headers or {}),
    )


def _describe_problem(problem: Mapping[str, Any]) -> str:
    key = str(problem.get("key") or "")
    text = str(problem.get("message") or "invalid value")
    if text.startswith("Object missing required field"):
        field = _BACKTICKED.search(text)
        return f"{field.group(1) if field else key}: is required"
    if text.startswith("Object contains unknown field"):
        field = _BACKTICKED.search(text)
        return f"{field.group(1) if field else key}: unknown field"
    if key == "data" and problem.get("source") == "body":
        # litestar reports a missing/empty body as the bare KeyError text "'data'"
        if text == "'data'":
            return "body: a JSON object is required"
        return f"body: {text}"
    return f"{key}: {text}" if key else text


def validation_message(exc: ValidationException) -> str:
    """One line naming each offending field, e.g. ``"defaultRoomId: Expected `str`, got `int`"``."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = [_describe_problem(p) for p in problems if isinstance(p, Mapping)]
    return "; ".join(parts) if parts else exc.detail or "Bad request"


def _loggable_path(request: Request[Any, Any, Any]) -> str:
    return redact_secrets(request.url.path)


def _api_error_handler(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return error_response(exc.status_code, exc.message, exc.headers)


def _http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code >= 500:
        logger.error(
            "server error %s on %s %s",
            exc.status_code,
            request.method,
            _loggable_path(request),
            exc_info=exc,
        )
        return error_response(exc.status_code, INTERNAL_ERROR_MESSAGE)
    if isinstance(exc, ValidationException):
        message = validation_message(exc)
    elif exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        message = f"body: larger than {limit} bytes" if limit else "body: too large"
    elif exc.detail.startswith("JSON is malformed"):
        message = f"body: {exc.detail}"
    else:
        message = exc.detail or "Error"
    return error_response(exc.status_code, message, exc.headers)


def _undecodable_body_handler(
    request: Request[Any, Any, Any], exc: UnicodeDecodeError
) -> Response[Any]:
    # msgspec raises UnicodeDecodeError (not DecodeError) for a JSON body that is not UTF-8,
    # and Litestar lets it through; it is the client's fault, not ours.
    return error_response(400, "body: not valid UTF-8")


def _unhandled_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        _loggable_path(request),
        exc_info=exc,
    )
    return error_response(500, INTERNAL_ERROR_MESSAGE)


def _store_error_handler(
    request: Request[Any, Any, Any], exc: sqlalchemy.exc.OperationalError
) -> Response[Any]:
    if is_store_busy(exc):
        # An overloaded server (its event loop starved) holds SQLite's write lock too long;
        # that is a reason to come back, not a server fault.
        logger.warning("store busy on %s %s; answered 503", request.method, _loggable_path(request))
        return error_response(503, STORE_BUSY_MESSAGE, {"Retry-After": "1"})
    return _unhandled_exception_handler(request, exc)


def is_store_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is the store timing out on a lock (SQLite ``database is locked``)."""
    return isinstance(exc, sqlalchemy.exc.OperationalError) and "database is locked" in str(
        exc.orig
    )


def exception_handlers() -> ExceptionHandlersMap:
    """The app-level ``exception_handlers`` mapping: every error becomes ``{"message": ...}``.

    ``ApiError`` keeps its status and message; Litestar ``HTTPException`` keeps its status
    (validation errors name the field, an oversize body names the limit, 5xx are masked); a
    body that is not UTF-8 is a 400; the store timing out on a lock (an overloaded server) is a
    503 with ``Retry-After``; anything else is logged and becomes
    ``500 {"message": "Internal server error"}``.
    """
    return {
        ApiError: _api_error_handler,
        HTTPException: _http_exception_handler,
        UnicodeDecodeError: _undecodable_body_handler,
        sqlalchemy.exc.OperationalError: _store_error_handler,
        Exception: _unhandled_exception_handler,
    }
