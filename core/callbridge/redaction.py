"""Redaction of secrets from every log path (placeholder: being written).

:func:`install_redaction` is called by :func:`callbridge.app.create_app`.
"""

from __future__ import annotations


def install_redaction() -> None:
    """Make every log path of this process redact secrets; idempotent."""
