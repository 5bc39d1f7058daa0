"""The one decoder for JSON that arrives from outside: webhooks, API bodies, tokens, every media
socket and the room participant socket.

Everything a client can send passes through :func:`decode` (or :func:`decode_as` for typed API
bodies), which enforces a size and a nesting-depth limit and raises exactly one error type,
:class:`JsonInputError`, whose message names the problem and is safe to show to the client.
Nothing else escapes: not ``RecursionError`` from a deeply nested document, not
``UnicodeDecodeError`` from bytes that are not UTF-8.

Over HTTP the error becomes a 400 with its message; on a socket the message is counted as
malformed and dropped. Typical use on a socket::

    try:
        message = safe_json.decode(text, SOCKET_LIMITS)
    except safe_json.JsonInputError:
        self.malformed += 1
        return None
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """How much JSON one input may carry.

    Attributes:
        max_bytes: the document's size limit in UTF-8 bytes.
        max_depth: how deeply arrays and objects may nest (``{"a": [1]}`` has depth 2).
    """

    max_bytes: int = 64 * 1024
    max_depth: int = 32


SOCKET_LIMITS: Final = JsonLimits(max_bytes=64 * 1024, max_depth=16)
"""Text messages on media and participant sockets (the deepest real message nests 3 levels)."""
BODY_LIMITS: Final = JsonLimits(max_bytes=64 * 1024, max_depth=32)
"""Webhook and REST API request bodies."""
TOKEN_LIMITS: Final = JsonLimits(max_bytes=8 * 1024, max_depth=8)
"""The header and claims of an API token."""


class JsonInputError(ValueError):
    """JSON input that cannot be accepted.

    Attributes:
        path: where in the document the problem is, as a dotted path (``credentials.apiKey``,
            ``items[2]``); empty when it concerns the whole document.
        problem: what is wrong, e.g. ``nested deeper than 32 levels``.

    ``str(error)`` is ``"path: problem"`` (or just the problem), safe to show to a client: it
    never quotes the input.
    """

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


_OPENERS_TEXT = ("[", "{")
_OPENERS_BYTES = (b"[", b"{")
# msgspec ends validation messages with " - at `$.field[0].name`".
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def decode(data: str | bytes, limits: JsonLimits = BODY_LIMITS) -> Any:
    """Decode one JSON document within ``limits``.

    Raises:
        JsonInputError: too large, not UTF-8, not JSON, or nested too deeply.
    """
    _check_size(data, limits.max_bytes)
    openers = _OPENERS_BYTES if isinstance(data, bytes) else _OPENERS_TEXT
    # Fast path: a document with no more brackets than the limit cannot nest deeper than it.
    could_be_too_deep = data.count(openers[0]) + data.count(openers[1]) > limits.max_depth  # type: ignore[arg-type]
    try:
        value = msgspec.json.decode(data)
    except RecursionError:
        raise JsonInputError(f"nested deeper than {limits.max_depth} levels") from None
    except UnicodeDecodeError:
        raise JsonInputError("not valid UTF-8") from None
    except msgspec.DecodeError as exc:
        raise _decode_error(exc) from None
    if could_be_too_deep and depth_of(value) > limits.max_depth:
        raise JsonInputError(f"nested deeper than {limits.max_depth} levels")
    return value


def decode_as(data: str | bytes, target: type[T], limits: JsonLimits = BODY_LIMITS) -> T:
    """Decode one JSON document within ``limits`` into ``target`` (a msgspec ``Struct`` or any
    type msgspec converts to), strictly: no string is taken for a number or a boolean, no number
    for a boolean.

    Raises:
        JsonInputError: as :func:`decode`, or the document does not fit ``target``; ``path``
            then names the offending field.
    """
    value = decode(data, limits)
    return convert(value, target)


def convert(value: Any, target: type[T]) -> T:
    """Strictly convert an already decoded document into ``target``.

    Raises:
        JsonInputError: the document does not fit ``target``; ``path`` names the field.
    """
    try:
        return msgspec.convert(value, target, strict=True, str_keys=True)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from None
    except RecursionError:  # only for a value that did not come through decode()
        raise JsonInputError("nested too deeply") from None


def depth_of(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded document (0 for a scalar)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _check_size(data: str | bytes, max_bytes: int) -> None:
    size = len(data)
    # Text is measured in UTF-8 bytes only when its characters could add up to the limit.
    if isinstance(data, str) and size * 4 > max_bytes:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JsonInputError(f"larger than {max_bytes} bytes")


def _decode_error(exc: msgspec.DecodeError) -> JsonInputError:
    text = str(exc)
    match = _AT_PATH.search(text)
    if match is None:
        if isinstance(exc, msgspec.ValidationError):
            return JsonInputError(text)
        return JsonInputError(f"not valid JSON ({text})" if text else "not valid JSON")
    path = match.group("path").lstrip(".")
    if "[...]" in path:  # a value of an untyped object: msgspec cannot name the key
        path = ""
    return JsonInputError(text[: match.start()], path)
