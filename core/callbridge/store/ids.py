"""Identifier and secret formats, and the hashing of webhook keys.

Every secret comes from :mod:`secrets`. Webhook keys carry 32 alphanumerics (about 190 bits)
and only their SHA-256 is stored; :func:`redact_secrets` removes them (and every other secret
:mod:`callbridge.redaction` knows) from text bound for logs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string

from callbridge.redaction import redact

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits

WEBHOOK_KEY_PREFIX = "whk_"
WEBHOOK_KEY_RE = re.compile(r"^whk_[A-Za-z0-9]{32}$")
CONNECTOR_ID_RE = re.compile(r"^cn_[a-z0-9_]{1,29}$")
"""Connector ids: ``cn_`` + 16 lowercase alphanumerics when the API makes them; a connector
the YAML declares may pick its own (``cn_support``)."""
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
"""Routing rule ids: ``rr_`` + 16 lowercase alphanumerics from the API, or the YAML's own."""
ROOM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
"""A room id: 1-128 characters of ``A-Z a-z 0-9 _ . : -``, starting with a letter or digit.

As a JSON Schema pattern (``$`` is the end of the text there). Python's ``$`` also matches
before a final newline, so code checks ids with :func:`is_room_id` (a full match)."""
_ROOM_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_api_key_id() -> str:
    """A new API key id: ``ak_`` + 24 URL-safe characters (144 bits)."""
    return "ak_" + secrets.token_urlsafe(18)


def new_api_secret() -> str:
    """A new HS256 signing secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def new_connector_id() -> str:
    """A new connector id: ``cn_`` + 16 lowercase alphanumerics."""
    return "cn_" + _random(_LOWER_ALNUM, 16)


def new_rule_id() -> str:
    """A new routing rule id: ``rr_`` + 16 lowercase alphanumerics."""
    return "rr_" + _random(_LOWER_ALNUM, 16)


def new_event_id() -> str:
    """A new lifecycle event id: ``evt_`` + 24 lowercase alphanumerics."""
    return "evt_" + _random(_LOWER_ALNUM, 24)


def new_delivery_id() -> str:
    """A new webhook delivery id: ``dlv_`` + 24 lowercase alphanumerics."""
    return "dlv_" + _random(_LOWER_ALNUM, 24)


def new_subscription_id() -> str:
    """A new webhook subscription id: ``wh_`` + 16 lowercase alphanumerics."""
    return "wh_" + _random(_LOWER_ALNUM, 16)


def new_call_id() -> str:
    """A new call id: ``call_`` + 20 lowercase alphanumerics."""
    return "call_" + _random(_LOWER_ALNUM, 20)


def new_webhook_key() -> str:
    """A new secret webhook key: ``whk_`` + 32 alphanumerics (about 190 bits)."""
    return WEBHOOK_KEY_PREFIX + _random(_ALNUM, 32)


def hash_webhook_key(key: str) -> str:
    """SHA-256 hex digest of a webhook key; the only form of the key that is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_webhook_key(value: str) -> bool:
    """Whether ``value`` has the shape of a webhook key (no database access)."""
    return WEBHOOK_KEY_RE.fullmatch(value) is not None


def is_room_id(value: str) -> bool:
    """Whether ``value`` is a well-formed room id (see :data:`ROOM_ID_PATTERN`)."""
    return _ROOM_ID_RE.fullmatch(value) is not None


def redact_secrets(text: str) -> str:
    """``text`` without webhook keys or other secrets: :func:`callbridge.redaction.redact`."""
    return redact(text)
