"""An ``events`` row as the feed carries it, and the socket event it becomes.

A lifecycle event is stored once, as the webhook body ``{"webhookType": …, "data": {…}}``; a
socket receives it as ``{"event_type", "timestamp", "topic", "id", "data"}``. Its type maps as
follows (``data`` is the webhook's ``data``):

=====================  ==========================================
webhook type           socket ``event_type``
=====================  ==========================================
``call-started``       ``call.created`` (callbridge has no ringing state: a call is created
                       when its provider's voice webhook is answered; this stands for it)
``call-answered``      ``call.status`` with ``data.status = "answered"``
``call-hangup``        ``call.status`` with ``data.status = "hangup"``
``call-failed``        ``call.status`` with ``data.status = "failed"``
``call-dtmf``          ``call.dtmf``
``participant-joined`` ``room.participant_joined``
``participant-left``   ``room.participant_left``
=====================  ==========================================

A type not in this table (added later) goes out under its webhook name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Final

from callbridge.api.shapes import format_timestamp
from callbridge.webhooks import events as hooks

SOCKET_EVENT_TYPES: Final[Mapping[str, tuple[str, str | None]]] = {
    hooks.CALL_STARTED: ("call.created", None),
    hooks.CALL_ANSWERED: ("call.status", "answered"),
    hooks.CALL_HANGUP: ("call.status", "hangup"),
    hooks.CALL_FAILED: ("call.status", "failed"),
    hooks.CALL_DTMF: ("call.dtmf", None),
    hooks.PARTICIPANT_JOINED: ("room.participant_joined", None),
    hooks.PARTICIPANT_LEFT: ("room.participant_left", None),
}
"""Webhook type → (socket ``event_type``, the ``data.status`` it sets or ``None``)."""

ROOM_EVENT_TYPES: Final = frozenset({hooks.PARTICIPANT_JOINED, hooks.PARTICIPANT_LEFT})
"""Events that also belong to their room (the ``room`` resource), not only to their call."""


@dataclass(frozen=True, eq=False)
class FeedEvent:
    """One stored lifecycle event (see :class:`callbridge.store.models.Event`)."""

    position: int
    id: str
    apikey: str
    call_id: str | None
    connector_id: str | None
    room_id: str | None
    type: str
    body: str
    created_at: datetime

    @cached_property
    def socket_parts(self) -> tuple[str, str]:
        """The socket event as JSON text before and after the topic's JSON string (rendered
        once, whatever the number of sockets it goes to)."""
        try:
            envelope = json.loads(self.body)
        except ValueError:
            envelope = {}
        data: Any = envelope.get("data") if isinstance(envelope, dict) else None
        data = dict(data) if isinstance(data, dict) else {}
        event_type, status = SOCKET_EVENT_TYPES.get(self.type, (self.type, None))
        if status is not None:
            data["status"] = status
        head = json.dumps(
            {"event_type": event_type, "timestamp": format_timestamp(self.created_at)},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        tail = json.dumps({"id": self.id, "data": data}, separators=(",", ":"), ensure_ascii=False)
        return head[:-1] + ',"topic":', "," + tail[1:]

    def socket_message(self, topic: str) -> str:
        """The socket event for a subscriber whose ``topic`` matched."""
        head, tail = self.socket_parts
        return head + json.dumps(topic, ensure_ascii=False) + tail
