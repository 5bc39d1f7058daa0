"""structlog configuration: every line carries the current trace/span ids and bound call ids.

Secrets are removed by :mod:`callbridge.redaction`, the one redactor, on both structlog's lines
and the standard ``logging`` records rendered here; tracebacks are plain, without locals.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace

from callbridge.redaction import exception_from_record, install_redaction, redaction_processors


def _add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog and the standard logging bridge (process-wide; call once).

    Both write to stderr through the same renderer (``console`` or ``json``), with secrets
    redacted and exceptions rendered as plain tracebacks without local variables.
    """
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
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, *redaction_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *redaction_processors(),
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, exception_from_record],
        )
    )
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
    install_redaction()
