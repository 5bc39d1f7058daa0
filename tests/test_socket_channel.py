"""The raw-ASGI socket channel: sends written at once when the socket can take them, an ordered
backlog when it cannot, audio droppable from it, control messages never."""

from __future__ import annotations

import asyncio
from typing import Any

from callbridge.api import channel as channel_module
from callbridge.api.channel import AsgiSocketChannel


class Socket:
    """An ASGI ``send`` that suspends while ``writable`` is clear, like uvicorn's."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        if message["type"] == "websocket.send":
            self.written.append(message.get("text") or message.get("bytes"))
        else:
            self.written.append(message["type"])

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()


async def test_a_writable_socket_is_written_at_once_without_a_task() -> None:
    socket = Socket()
    channel = AsgiSocketChannel(socket.receive, socket.send)
    tasks_before = len(asyncio.all_tasks())
    channel.send_text("a", droppable=True)
    channel.send_bytes(b"b")
    assert socket.written == ["a", b"b"], "written before send_* returned"
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_backed_up_socket_keeps_order_and_drops_only_audio() -> None:
    socket = Socket()
    channel = AsgiSocketChannel(socket.receive, socket.send)
    socket.writable.clear()
    channel.send_text("audio-1", droppable=True)
    channel.send_text("mark")
    channel.send_text("audio-2", droppable=True)
    assert socket.written == []
    assert channel.drop_pending() == 1, "audio-1 is already being written; audio-2 waits"
    channel.send_text("clear")
    socket.writable.set()
    await asyncio.sleep(0.01)
    assert socket.written == ["audio-1", "mark", "clear"]
    channel.send_text("after")
    assert socket.written[-1] == "after", "back to writing at once"


async def test_the_backlog_is_bounded_by_dropping_the_oldest_audio(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(channel_module, "MAX_BACKLOG", 3)
    socket = Socket()
    channel = AsgiSocketChannel(socket.receive, socket.send)
    socket.writable.clear()
    channel.send_text("first", droppable=True)  # in flight
    for name in ("a1", "m1", "a2", "a3", "m2"):
        channel.send_text(name, droppable=name.startswith("a"))
    socket.writable.set()
    await asyncio.sleep(0.01)
    assert socket.written == ["first", "m1", "a3", "m2"]
    assert channel.dropped == 2


async def test_receive_and_close() -> None:
    socket = Socket()
    channel = AsgiSocketChannel(socket.receive, socket.send)
    socket.incoming.put_nowait({"type": "websocket.receive", "text": "hello"})
    socket.incoming.put_nowait({"type": "websocket.receive", "bytes": b"\x01\x02"})
    socket.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert await channel.receive() == "hello"
    assert await channel.receive() == b"\x01\x02"
    assert await channel.receive() is None
    assert channel.closed
    channel.send_text("ignored")
    await channel.close()
    assert socket.written == []


async def test_a_failing_send_marks_the_channel_closed() -> None:
    async def broken(message: dict[str, Any]) -> None:
        raise ConnectionError("gone")

    socket = Socket()
    channel = AsgiSocketChannel(socket.receive, broken)
    channel.send_text("x")
    assert channel.closed
    channel.send_text("y")  # nothing raised
