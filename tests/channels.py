"""In-memory ``SocketChannel`` fakes for the providers' media-stream adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from callbridge.protocols import MarkEcho, MediaStream, StreamStopped


class FakeChannel:
    """An in-memory SocketChannel: queued incoming messages, recorded outgoing ones (text and
    binary, in order)."""

    def __init__(self, incoming: list[str | bytes | None]) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        for message in incoming:
            self.incoming.put_nowait(message)
        self.sent: list[str | bytes] = []
        self.closed = 0

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    def send_text(self, data: str, droppable: bool = False) -> None:
        self.sent.append(data)

    def send_bytes(self, data: bytes, droppable: bool = False) -> None:
        self.sent.append(data)

    def drop_pending(self) -> int:
        return 0  # every send is written at once

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed += 1


class TextChannel(FakeChannel):
    """A :class:`FakeChannel` for providers whose sockets take text frames only."""

    sent: list[str]  # type: ignore[assignment]

    def send_bytes(self, data: bytes, droppable: bool = False) -> None:
        raise AssertionError("this provider takes text frames only")


async def events_until_stopped(stream: MediaStream) -> list[object]:
    """The stream's events up to and including :class:`StreamStopped`, each within 2 s."""
    events: list[object] = []
    while True:
        event = await asyncio.wait_for(stream.receive(), 2)
        events.append(event)
        if isinstance(event, StreamStopped):
            return events


async def check_marks_pending_at_a_clear_echo_as_cleared(
    stream: MediaStream, channel: FakeChannel, mark_echo: Callable[[int, str], str]
) -> None:
    """After a started ``stream``: a mark echoed before a clear is played, one pending at the
    clear is echoed cleared, and one sent after the clear is played again. ``mark_echo`` makes
    the provider's echo of mark ``name`` with a sequence number."""
    stream.send_mark("played")
    channel.incoming.put_nowait(mark_echo(2, "played"))
    assert await stream.receive() == MarkEcho("played", cleared=False)
    stream.send_mark("flushed")
    stream.send_clear()
    stream.send_mark("after")
    channel.incoming.put_nowait(mark_echo(3, "flushed"))
    channel.incoming.put_nowait(mark_echo(4, "after"))
    assert await stream.receive() == MarkEcho("flushed", cleared=True)
    assert await stream.receive() == MarkEcho("after", cleared=False)
