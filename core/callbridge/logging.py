"""structlog configuration: every line carries the current trace/span ids and bound call ids."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace

_SECRET_PATTERNS = (
    (re.compile(r"(/v2/hooks/[^/\s\"?]+/)[^/\s\"?]+"), r"\1[redacted]"),
    (re.compile(r"(/ingest/[^/\s\"?]+/)[^/\s\"?]+"), r"\1[redacted]"),
    (re.compile(r"([?&](?:token|ref)=)[^&\s\"]+"), r"\1[redacted]"),
    (re.compile(r"whk_[A-Za-z0-9]+"), "whk_[redacted]"),
)


def redact(text: str) -> str:
    """Remove webhook keys, refs and tokens from a URL or log message."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


class RedactingFilter(logging.Filter):
    """Applied to uvicorn's loggers, whose lines quote request paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog and the standard logging bridge (process-wide; call once)."""
    numeric_level = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Driver loggers quote SQL parameters (API key secrets among them) at debug level.
    for noisy in ("alembic", "aiosqlite", "sqlalchemy", "asyncpg"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.addFilter(RedactingFilter())
