"""Reading a voice webhook: what the providers do alike."""

from __future__ import annotations

from collections.abc import Iterable

from callbridge.protocols import WebhookRequest

MAX_PARAM_CHARS = 256
"""Longest webhook value kept on a call; longer ones are cut."""

_FORM_TYPE = "application/x-www-form-urlencoded"


def kept_params(request: WebhookRequest, names: Iterable[str]) -> dict[str, str]:
    """The non-empty parameters among ``names``, each cut to :data:`MAX_PARAM_CHARS`."""
    return {name: value[:MAX_PARAM_CHARS] for name in names if (value := request.param(name))}


def is_form(request: WebhookRequest) -> bool:
    """Whether the body is form-encoded, by its ``Content-Type`` (parameters ignored)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == _FORM_TYPE
