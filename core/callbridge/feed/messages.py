"""The event socket's messages (JSON text), sans I/O.

Client → server::

    {"type": "subscribe", "topics": ["apikey:ak_1:call:*"], "since": "evt_…"}  # since: optional
    {"type": "unsubscribe", "topics": ["apikey:ak_1:call:*"]}
    {"type": "ping"}

Server → client: the events (:meth:`callbridge.feed.records.FeedEvent.socket_message`) and::

    {"type": "subscribed", "topics": [...]}      # the topics now subscribed (after any errors)
    {"type": "unsubscribed", "topics": [...]}
    {"type": "error", "message": "…"}            # plus "topic" or "since" when one is at fault
    {"type": "pong"}                             # the answer to a client's ping
    {"type": "ping"}                             # keepalive, every events.ping_interval_seconds
    {"type": "events_dropped", "first_missing_id": "evt_…", "message": "…"}  # then the close
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from callbridge import safe_json

MAX_TOPICS_PER_MESSAGE: Final = 100
MAX_EVENT_ID_CHARS: Final = 40


class MessageError(ValueError):
    """A client message that is not part of the protocol; the message says why (safe to show)."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``topics`` (strings, checked one by one later); replay from ``since``."""

    topics: tuple[object, ...]
    since: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


ClientMessage = Subscribe | Unsubscribe | Ping


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Read one client message.

    Raises:
        MessageError: binary, not JSON, not an object, an unknown ``type``, or bad fields.
    """
    if isinstance(data, bytes):
        raise MessageError("messages are JSON text; binary messages are not part of the protocol")
    try:
        message = safe_json.decode(data, safe_json.SOCKET_LIMITS)
    except safe_json.JsonInputError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MessageError("a message is a JSON object with a type")
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind not in ("subscribe", "unsubscribe"):
        raise MessageError("type: one of subscribe, unsubscribe, ping")
    topics = message.get("topics")
    if not isinstance(topics, list) or not topics:
        raise MessageError("topics: a non-empty list of topics")
    if len(topics) > MAX_TOPICS_PER_MESSAGE:
        raise MessageError(f"topics: at most {MAX_TOPICS_PER_MESSAGE} per message")
    if kind == "unsubscribe":
        return Unsubscribe(tuple(topics))
    since = message.get("since")
    if since is not None and (not isinstance(since, str) or len(since) > MAX_EVENT_ID_CHARS):
        raise MessageError("since: an event id (evt_…)")
    return Subscribe(tuple(topics), since)


def _text(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def subscribed(topics: list[str]) -> str:
    return _text({"type": "subscribed", "topics": topics})


def unsubscribed(topics: list[str]) -> str:
    return _text({"type": "unsubscribed", "topics": topics})


def error(message: str, **about: object) -> str:
    """An error; ``about`` names what it concerns (``topic=…``, ``since=…``)."""
    return _text({"type": "error", **about, "message": message})


def events_dropped(first_missing_id: str, buffer_events: int) -> str:
    return _text(
        {
            "type": "events_dropped",
            "first_missing_id": first_missing_id,
            "message": f"more than {buffer_events} events waited for this socket; it is "
            "closed. Reconnect and subscribe with since set to the last id you received.",
        }
    )


PING: Final = _text({"type": "ping"})
PONG: Final = _text({"type": "pong"})
