"""An accepted WebSocket, driven through the server's raw ASGI ``receive``/``send``, as a
:class:`callbridge.protocols.SocketChannel`.

The media path must not pay for a task hop or a framework wrapper per frame, so sends are
synchronous: the server's ``send`` coroutine is stepped right away, and with uvicorn it finishes
without suspending whenever the socket's transport is writable (it only checks that, then
writes). When it does suspend (the peer stopped reading and the transport's buffer is full), the
rest of that send and every message after it wait in an ordered backlog that one task writes
out; audio in the backlog may be dropped (:meth:`AsgiSocketChannel.drop_pending`, or the oldest
when the backlog is full), control messages never are.

A failed send does not stop reading: messages the peer sent before it closed (a ``stop`` right
before the close) are still delivered, until the disconnect itself arrives.
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, cast

import structlog
from litestar.types import Receive, Send

MAX_BACKLOG = 250
"""Messages (5 s of audio) that may wait for a slow peer; beyond, the oldest audio is dropped."""

log = structlog.get_logger("callbridge.channel")


class AsgiSocketChannel:
    """See the module docstring. ``dropped`` counts audio messages discarded while waiting."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._disconnected = False
        self._closed_by_us = False
        self._send_failed = False
        self._backlog: deque[tuple[dict[str, Any], bool]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """Nothing more can be sent (either side closed, or a send failed)."""
        return self._disconnected or self._closed_by_us or self._send_failed

    async def receive(self) -> str | bytes | None:
        if self._disconnected or self._closed_by_us:
            return None
        try:
            message: Any = await self._receive()
        except Exception:
            self._disconnected = True
            return None
        if message["type"] != "websocket.receive":
            self._disconnected = True
            return None
        text = message.get("text")
        if text is not None:
            return cast(str, text)
        return cast(bytes, message.get("bytes") or b"")

    def send_text(self, data: str, droppable: bool = False) -> None:
        self._post({"type": "websocket.send", "text": data}, droppable)

    def send_bytes(self, data: bytes, droppable: bool = False) -> None:
        self._post({"type": "websocket.send", "bytes": data}, droppable)

    def drop_pending(self) -> int:
        """Discard the audio still waiting in the backlog; returns how many messages."""
        if not self._backlog:
            return 0
        kept = deque(item for item in self._backlog if not item[1])
        dropped = len(self._backlog) - len(kept)
        self._backlog = kept
        self.dropped += dropped
        return dropped

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed_by_us or self._disconnected:
            self._closed_by_us = True
            return
        self._closed_by_us = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        self._backlog.clear()
        try:
            await self._send(cast(Any, {"type": "websocket.close", "code": code, "reason": reason}))
        except Exception:
            pass

    def _post(self, message: dict[str, Any], droppable: bool) -> None:
        if self.closed:
            return
        if self._writer is not None:
            self._queue(message, droppable)
            return
        coroutine = cast(Coroutine[Any, Any, None], self._send(cast(Any, message)))
        try:
            pending = coroutine.send(None)
        except StopIteration:
            return
        except Exception:
            self._send_failed = True
            return
        # The socket is backed up: finish this send, then the backlog, in one writer task.
        self._writer = asyncio.ensure_future(self._write_backlog(coroutine, pending))

    def _queue(self, message: dict[str, Any], droppable: bool) -> None:
        backlog = self._backlog
        if len(backlog) >= MAX_BACKLOG:
            for index, (_, is_audio) in enumerate(backlog):
                if is_audio:
                    del backlog[index]
                    self.dropped += 1
                    break
            else:
                if droppable:
                    self.dropped += 1
                    return
        backlog.append((message, droppable))

    async def _write_backlog(self, started: Coroutine[Any, Any, None], pending: Any) -> None:
        try:
            await _finish(started, pending)
            while self._backlog and not self.closed:
                message, _ = self._backlog.popleft()
                await self._send(cast(Any, message))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._send_failed = True
            self._backlog.clear()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None


@types.coroutine
def _finish(coroutine: Coroutine[Any, Any, None], pending: Any) -> Generator[Any, Any, None]:
    """Carry on a coroutine that was stepped by hand and suspended yielding ``pending``."""
    yielded = pending
    while True:
        try:
            received = yield yielded
        except BaseException as exc:
            try:
                yielded = coroutine.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coroutine.send(received)
            except StopIteration:
                return
