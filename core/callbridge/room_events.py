"""Parsing the room event vocabulary (:data:`callbridge.protocols.RoomEvent`) from untrusted
JSON text: what a participant socket or an agent may send into a room."""

from __future__ import annotations

import re
from typing import Any, Final

from callbridge import safe_json
from callbridge.protocols import RoomEvent
from callbridge.store.ids import is_room_id

MEMBER_COMMANDS: Final = frozenset({"clear", "mark", "hangup", "transfer", "dtmf"})
"""The events a room member may send."""
MAX_COMMAND_BYTES: Final = 4096
"""A text message longer than this is no command."""
MAX_NAME_CHARS: Final = 128
"""Longest mark name, call id or transport name a command may carry."""
MAX_REASON_CHARS: Final = 200
MAX_DIGITS: Final = 32
_DIGITS = re.compile(rf"[0-9*#A-Da-d]{{1,{MAX_DIGITS}}}")
_LIMITS = safe_json.JsonLimits(max_bytes=MAX_COMMAND_BYTES, max_depth=4)


def _short_text(value: object, limit: int = MAX_NAME_CHARS) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def parse_command(message: str, allowed: frozenset[str] = MEMBER_COMMANDS) -> RoomEvent | None:
    """The member command ``message`` carries, reduced to its known fields; ``None`` when it
    is not one (too long, not JSON, not an object, an event outside ``allowed``, a bad
    field)."""
    try:
        event = safe_json.decode(message, _LIMITS)
    except safe_json.JsonInputError:
        return None
    if not isinstance(event, dict):
        return None
    return command_from(event, allowed)


def command_from(
    event: dict[str, Any], allowed: frozenset[str] = MEMBER_COMMANDS
) -> RoomEvent | None:
    """:func:`parse_command` for an already decoded JSON object."""
    kind = event.get("event")
    if kind not in allowed:
        return None
    command: dict[str, Any] = {"event": kind}
    call_id = event.get("callId")
    if call_id is not None:
        if not _short_text(call_id):
            return None
        command["callId"] = call_id
    if kind == "mark":
        if not _short_text(event.get("name")):
            return None
        command["name"] = event["name"]
    elif kind == "hangup":
        reason = event.get("reason")
        if reason is not None:
            if not _short_text(reason, MAX_REASON_CHARS):
                return None
            command["reason"] = reason
    elif kind == "transfer":
        room_id = event.get("roomId")
        if not isinstance(room_id, str) or not is_room_id(room_id):
            return None
        command["roomId"] = room_id
        transport = event.get("transport")
        if transport is not None:
            if not _short_text(transport):
                return None
            command["transport"] = transport
    elif kind == "dtmf":
        digits = event.get("digits")
        if not isinstance(digits, str) or not _DIGITS.fullmatch(digits):
            return None
        command["digits"] = digits.upper()
    return command  # type: ignore[return-value]
