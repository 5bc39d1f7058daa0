"""The one redactor of secrets, and its installation on every log path of the process.

:func:`redact` removes webhook keys, refs, API tokens (JWTs), ``Authorization`` values and the
literal secrets registered with :func:`remember_secrets` (decrypted provider credentials, API
key secrets) from text. :func:`install_redaction`, called by
:func:`callbridge.app.create_app`, applies it wherever a line is rendered: structlog's
processor chain, every standard ``logging`` record (so any host's handlers and formatters,
uvicorn's access and error logs among them, print redacted text) and tracebacks, which are
rendered plain, without local variables, then redacted.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

import structlog
from structlog.processors import ExceptionPrettyPrinter, ExceptionRenderer
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[redacted]"
"""What a secret is replaced with."""

MAX_REMEMBERED_SECRETS: Final = 10_000
"""How many literal secrets :func:`remember_secrets` keeps (the most recently remembered)."""

MIN_SECRET_LENGTH: Final = 8
"""Shorter values are not remembered: they would match ordinary text."""

# One path segment: stops at the characters that end a URL path or a quoted value in log text.
_SEGMENT = r"[^/\s?#&'\"`<>()\[\]{},;\\]+"
_SCHEME = r"(?:bearer|basic|digest|token)\s+"
_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # The whole segment, whatever its shape: a mistyped webhook key is still mostly a key.
    (re.compile(rf"(/v2/hooks/{_SEGMENT}/){_SEGMENT}"), rf"\1{REDACTED}"),
    (re.compile(rf"(/ingest/{_SEGMENT}/){_SEGMENT}"), rf"\1{REDACTED}"),
    (re.compile(r"\b((?:token|ref|access_token|id_token)=)[^&\s'\"#<>]+", re.I), rf"\1{REDACTED}"),
    (re.compile(r"([\"'](?:token|ref)[\"']\s*:\s*[\"'])[^\"']+", re.I), rf"\1{REDACTED}"),
    (re.compile(r"whk_[A-Za-z0-9]+"), f"whk_{REDACTED}"),
    # A JWT, or a fragment of one: every header and payload segment starts with "eyJ" ('{"').
    (re.compile(r"eyJ[A-Za-z0-9_-]{7,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (
        re.compile(
            r"(\b(?:proxy-)?authorization(?:[\"']?\s*[:=]|[\"']\s*,)\s*+(?:b?[\"'])?+)"
            rf"(?!(?:{_SCHEME})?{re.escape(REDACTED)})({_SCHEME})?[^\s'\",;&)\]}}<>]+",
            re.I,
        ),
        rf"\1\2{REDACTED}",
    ),
    # An opaque bearer token has a digit or punctuation; "bearer authentication" is prose.
    (
        re.compile(r"\b(bearer\s+)(?=[A-Za-z0-9._~+/-]*[0-9._~+/-])[A-Za-z0-9._~+/-]{8,}=*", re.I),
        rf"\1{REDACTED}",
    ),
)
_PLAIN_TYPES = (int, float, bool, type(None))


class _SecretBook:
    """Literal secrets, found in text through their first :data:`MIN_SECRET_LENGTH` characters."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._values: OrderedDict[str, None] = OrderedDict()
        self._by_prefix: dict[str, set[str]] = {}

    def remember(self, values: Iterable[str]) -> None:
        with self._lock:
            for value in values:
                if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
                    continue
                if value in self._values:
                    self._values.move_to_end(value)
                    continue
                self._values[value] = None
                self._by_prefix.setdefault(value[:MIN_SECRET_LENGTH], set()).add(value)
                while len(self._values) > self._limit:
                    old, _ = self._values.popitem(last=False)
                    same_prefix = self._by_prefix[old[:MIN_SECRET_LENGTH]]
                    same_prefix.discard(old)
                    if not same_prefix:
                        del self._by_prefix[old[:MIN_SECRET_LENGTH]]

    def scrub(self, text: str) -> str:
        if not self._by_prefix or len(text) < MIN_SECRET_LENGTH:
            return text
        width = MIN_SECRET_LENGTH
        with self._lock:
            prefixes = self._by_prefix
            found = {
                value
                for start in range(len(text) - width + 1)
                if (gram := text[start : start + width]) in prefixes
                for value in prefixes[gram]
            }
        # Longest first, so a secret that contains another one goes as a whole.
        for value in sorted(found, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text


_SECRETS = _SecretBook(MAX_REMEMBERED_SECRETS)


def remember_secrets(values: Iterable[str]) -> None:
    """Redact these literal values from now on, wherever they appear in log text.

    For secrets without a recognisable shape: decrypted provider credentials, API key secrets.
    Thread-safe; keeps the :data:`MAX_REMEMBERED_SECRETS` most recently remembered values;
    values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.

    Example::

        remember_secrets(box.decrypt(connector.credentials, connector.id).values())
    """
    _SECRETS.remember(values)


def redact(text: str) -> str:
    """``text`` without webhook keys, refs, tokens, ``Authorization`` values or remembered
    secrets, each replaced by :data:`REDACTED` (a ``whk_`` prefix or a URL's path stays).

    Example::

        >>> redact("POST /v2/hooks/twilio/whk_4f7Qx2 took 3 ms")
        'POST /v2/hooks/twilio/[redacted] took 3 ms'
    """
    text = _SECRETS.scrub(text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it, recursively through dicts
    (keys and values), lists and tuples; an object of another kind is replaced by its redacted
    ``repr`` only when that ``repr`` holds a secret (the form renderers show)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, dict):
        return {redact_value(key): redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_value(item) for item in value)
    shown = repr(value)
    cleaned = redact(shown)
    return value if cleaned == shown else cleaned


def redact_event_dict(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: :func:`redact_value` on every field (``_``-prefixed fields, which
    carry structlog's own objects, excepted). Runs after exception formatting, right before the
    renderer."""
    for key, value in event_dict.items():
        if not key.startswith("_"):
            event_dict[key] = redact_value(value)
    return event_dict


format_exception_plain: Final = ExceptionRenderer()
"""structlog processor: ``exc_info`` becomes an ``exception`` string, a plain traceback with
no local variables (unlike the Rich tracebacks of structlog's console renderer)."""


def redaction_processors() -> list[Processor]:
    """The processors to put right before a structlog renderer (in this order)."""
    return [format_exception_plain, redact_event_dict]


def exception_from_record(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """For ``ProcessorFormatter(foreign_pre_chain=...)``: a standard record's redacted
    traceback (left in ``exc_text`` by the record factory) as the ``exception`` field."""
    record = event_dict.get("_record")
    if (
        isinstance(record, logging.LogRecord)
        and record.exc_text
        and "exception" not in event_dict
        and not event_dict.get("exc_info")
    ):
        event_dict["exception"] = record.exc_text
    return event_dict


def _plain_traceback(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


def _redact_arg(arg: object) -> object:
    # Only strings and secret-bearing objects change, so formatters that read args by
    # position (uvicorn's access formatter) and "%d" placeholders keep working.
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, _PLAIN_TYPES):
        return arg
    shown = str(arg)
    cleaned = redact(shown)
    return arg if cleaned == shown else cleaned


def _redact_record(record: logging.LogRecord) -> None:
    if record.exc_info:
        record.exc_text = redact(_plain_traceback(record.exc_info))
        # A formatter given exc_info renders it itself (structlog's ProcessorFormatter with Rich
        # shows local variables); every stdlib formatter prints exc_text instead.
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif isinstance(record.msg, dict):
        record.msg = redact_value(record.msg)
    elif record.msg is not None:
        record.msg = _redact_arg(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(arg) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}


class _RedactingRecordFactory:
    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        _redact_record(record)
        return record


_INSTALL_LOCK = threading.Lock()


def _install_record_factory() -> None:
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(current))


def _install_structlog_processors() -> None:
    processors = structlog.get_config()["processors"]
    chain = list(processors)
    if chain[-3:-1] == redaction_processors():
        return
    # Other exception renderers would render exc_info before ours, possibly with locals.
    kept = [
        p
        for p in chain
        if p is not redact_event_dict
        and not isinstance(p, ExceptionRenderer | ExceptionPrettyPrinter)
    ]
    renderer = kept[-1:]
    patched = [*kept[:-1], *redaction_processors(), *renderer]
    if isinstance(processors, list):
        # In place: loggers bound (or cached) before this call hold this very list.
        processors[:] = patched
    else:
        structlog.configure(processors=patched)


def install_redaction() -> None:
    """Make every log path of this process redact secrets; idempotent, cheap to repeat.

    - standard ``logging``: a record factory (chained to the one in place) redacts ``msg``,
      string ``args`` (tuple shape and other types kept), ``stack_info``, and renders
      ``exc_info`` into a plain, redacted ``exc_text`` (then clears ``exc_info``);
    - structlog: :func:`redaction_processors` go right before the final renderer of the chain
      in force (the host's, :func:`callbridge.logging.configure_logging`'s, or structlog's
      defaults); other exception renderers are removed from the chain.

    A host that calls ``structlog.configure(processors=...)`` after building the app should
    call this again (or include :func:`redaction_processors` itself).
    """
    with _INSTALL_LOCK:
        _install_record_factory()
        _install_structlog_processors()
