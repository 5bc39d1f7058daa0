"""Topics: ``<scope>:<scope_id>:<resource>:<resource_id>``, and which ones an event matches.

Scopes: ``apikey`` (the API key's id), ``connector`` (a connector id), ``room`` (a room id;
rooms are per API key, so ``room:R`` is always the subscriber's own room ``R``). Resources:
``call`` (a call id) and ``room`` (a room id; it carries the participant events; not under a
connector, and under ``room:R`` only ``R`` itself). ``*`` as the resource id matches every
call or room of the scope.

An event of call ``C`` of connector ``K`` in room ``R`` of API key ``A`` matches
``apikey:A:call:C|*``, ``connector:K:call:C|*`` and ``room:R:call:C|*``; a participant event
also matches ``apikey:A:room:R|*`` and ``room:R:room:R|*``.

Room ids may contain ``:``. A topic is read every way its ``:call:`` / ``:room:`` separators
allow; exactly one reading must be valid (otherwise the topic is refused as ambiguous).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from callbridge.feed.records import ROOM_EVENT_TYPES, FeedEvent
from callbridge.store.ids import CONNECTOR_ID_RE, is_room_id

SCOPES: Final = ("apikey", "connector", "room")
RESOURCES: Final = ("call", "room")
WILDCARD: Final = "*"
MAX_TOPIC_CHARS: Final = 400

TopicKey = tuple[str, str, str, str]
"""``(scope, scope_id, resource, resource_id)``."""

_APIKEY_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_SEPARATOR = re.compile(r"(?=:(call|room):)")
_SHAPE = "<scope>:<scope_id>:<resource>:<resource_id>"


class TopicError(ValueError):
    """A topic that cannot be subscribed to; the message says why (safe to show)."""


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic; :attr:`text` is its canonical spelling (the one subscribers sent)."""

    scope: str
    scope_id: str
    resource: str
    resource_id: str

    @property
    def key(self) -> TopicKey:
        return (self.scope, self.scope_id, self.resource, self.resource_id)

    @property
    def text(self) -> str:
        return ":".join(self.key)


def parse_topic(text: object) -> Topic:
    """Read one topic.

    Raises:
        TopicError: not a string, not four parts, an unknown scope or resource, an invalid id,
            or more than one valid reading.
    """
    if not isinstance(text, str) or not text:
        raise TopicError("a topic is a non-empty string")
    if len(text) > MAX_TOPIC_CHARS:
        raise TopicError(f"a topic has at most {MAX_TOPIC_CHARS} characters")
    scope, _, rest = text.partition(":")
    if scope not in SCOPES:
        raise TopicError(f"unknown scope {scope!r}: one of {', '.join(SCOPES)} ({_SHAPE})")
    valid: list[Topic] = []
    problem = f"expected {_SHAPE} with resource {' or '.join(RESOURCES)}"
    for match in _SEPARATOR.finditer(rest):  # overlapping: room ids may hold ":call:"
        resource = match.group(1)
        start = match.start()
        topic = Topic(scope, rest[:start], resource, rest[start + len(resource) + 2 :])
        error = _problem(topic)
        if error is None:
            valid.append(topic)
        else:
            problem = error
    if len(valid) > 1:
        raise TopicError("ambiguous topic: it reads more than one way")
    if not valid:
        raise TopicError(problem)
    return valid[0]


def _problem(topic: Topic) -> str | None:
    scope, scope_id, resource, resource_id = topic.key
    if scope == "apikey" and not _APIKEY_RE.fullmatch(scope_id):
        return "invalid API key id"
    if scope == "connector" and not CONNECTOR_ID_RE.fullmatch(scope_id):
        return "invalid connector id"
    if scope == "connector" and resource != "call":
        return "a connector scope has calls only (connector:K:call:C or *)"
    if scope == "room" and not is_room_id(scope_id):
        return "invalid room id"
    if resource_id == WILDCARD:
        return None
    if resource == "call":
        return None if _CALL_ID_RE.fullmatch(resource_id) else "invalid call id"
    if not is_room_id(resource_id):
        return "invalid room id"
    if scope == "room" and resource_id != scope_id:
        return "a room scope's room resource is its own room (room:R:room:R) or *"
    return None


def event_keys(event: FeedEvent) -> tuple[TopicKey, ...]:
    """The keys of every topic ``event`` matches, most specific first; a participant event
    lists its room topics before its call topics."""
    apikey, call, connector, room = event.apikey, event.call_id, event.connector_id, event.room_id
    call_keys: list[TopicKey] = []
    if call is not None:
        for resource_id in (call, WILDCARD):
            call_keys.append(("apikey", apikey, "call", resource_id))
            if connector is not None:
                call_keys.append(("connector", connector, "call", resource_id))
            if room is not None:
                call_keys.append(("room", room, "call", resource_id))
    if event.type not in ROOM_EVENT_TYPES or room is None:
        return tuple(call_keys)
    room_keys: list[TopicKey] = [
        ("apikey", apikey, "room", room),
        ("room", room, "room", room),
        ("apikey", apikey, "room", WILDCARD),
        ("room", room, "room", WILDCARD),
    ]
    return (*room_keys, *call_keys)
