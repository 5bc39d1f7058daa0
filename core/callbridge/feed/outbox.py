"""One socket's outgoing messages: a bounded, ordered queue that a single task writes out.

The feed hands events over synchronously and never waits for a socket: when ``buffer_events``
events already wait, the socket has fallen behind. The waiting events are discarded, the socket
is sent ``events_dropped`` naming the first event it will not get, and closed (4429). The
notice does not queue behind anything: the pump writes through the server's own ``send`` one
message at a time (at most one message and the server's transport buffer are in flight), so it
goes out as soon as the peer reads again; if the peer does not read within
:data:`CLOSE_GRACE_SECONDS`, the pump gives up and the connection is dropped.

Control messages (answers, pings) are bounded too: whoever adds one waits for room
(:meth:`Outbox.wait_for_room`), so a client that sends requests without reading the answers
is simply not read any further.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final, cast

import structlog
from litestar.types import Send

from callbridge.feed import messages
from callbridge.feed.records import FeedEvent

CONTROL_LIMIT: Final = 32
"""Control messages that may wait for one socket."""
CLOSE_GRACE_SECONDS: Final = 10.0
"""How long a socket that fell behind has to take its ``events_dropped`` notice and close."""
OVERFLOW_CLOSE_CODE: Final = 4429

log = structlog.get_logger("callbridge.events")


class Outbox:
    """See the module docstring. :attr:`first_missing` is set once the socket fell behind."""

    def __init__(self, buffer_events: int) -> None:
        self.buffer_events = buffer_events
        self.first_missing: FeedEvent | None = None
        self.closed = False
        self._items: deque[tuple[str, bool]] = deque()  # (text, is an event)
        self._waiting_events: deque[FeedEvent] = deque()
        self._controls = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._pump: asyncio.Task[Any] | None = None

    def push_event(self, event: FeedEvent, text: str) -> bool:
        """Queue an event; ``False`` when closed, or when full (the socket then overflows)."""
        if self.closed:
            return False
        if len(self._waiting_events) >= self.buffer_events:
            self._overflow(event)
            return False
        self._items.append((text, True))
        self._waiting_events.append(event)
        self._ready.set()
        return True

    def push_control(self, text: str) -> bool:
        """Queue a control message; ``False`` (not queued) when closed or full."""
        if self.closed or self._controls >= CONTROL_LIMIT:
            return False
        self._items.append((text, False))
        self._controls += 1
        self._ready.set()
        return True

    async def wait_for_room(self, *, event: bool) -> bool:
        """Wait until one more event (``event``) or control message fits; ``False`` if the
        outbox closed meanwhile."""
        while not self.closed and (
            len(self._waiting_events) >= self.buffer_events
            if event
            else self._controls >= CONTROL_LIMIT
        ):
            self._room.clear()
            await self._room.wait()
        return not self.closed

    def _overflow(self, missed: FeedEvent) -> None:
        self.first_missing = self._waiting_events[0] if self._waiting_events else missed
        self.closed = True
        self._items.clear()
        self._waiting_events.clear()
        self._controls = 0
        self._ready.set()
        self._room.set()
        pump = self._pump
        if pump is not None:
            asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, pump.cancel)

    async def _next(self) -> str | None:
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        text, is_event = self._items.popleft()
        if is_event:
            self._waiting_events.popleft()
        else:
            self._controls -= 1
        self._room.set()
        return text

    async def pump(self, send: Send) -> None:
        """Write the queued messages through ``send`` until the socket fails or falls behind;
        then send the ``events_dropped`` notice and close it."""
        self._pump = asyncio.current_task()
        try:
            while (text := await self._next()) is not None:
                await send(cast(Any, {"type": "websocket.send", "text": text}))
            if self.first_missing is not None:
                log.info("event socket fell behind", first_missing_id=self.first_missing.id)
                notice = messages.events_dropped(self.first_missing.id, self.buffer_events)
                await send(cast(Any, {"type": "websocket.send", "text": notice}))
                await send(
                    cast(
                        Any,
                        {"type": "websocket.close", "code": OVERFLOW_CLOSE_CODE, "reason": ""},
                    )
                )
        except Exception as exc:  # the peer went away (the reader sees the disconnect)
            log.debug("event socket send failed", error=type(exc).__name__)
        finally:
            self.closed = True
            self._room.set()
