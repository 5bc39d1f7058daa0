"""An accepted ASGI WebSocket seen as a :class:`callbridge.protocols.SocketChannel`."""

from __future__ import annotations

from litestar import WebSocket


class AsgiSocketChannel:
    """Thin, allocation-light adapter: raw ASGI events, no framework decoding on the media path."""

    def __init__(self, socket: WebSocket) -> None:  # type: ignore[type-arg]
        self._socket = socket
        self.closed = False

    async def receive(self) -> str | bytes | None:
        if self.closed:
            return None
        try:
            message = await self._socket.receive()
        except Exception:
            self.closed = True
            return None
        if message["type"] != "websocket.receive":
            self.closed = True
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send_text(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            try:
                await self._socket.send({"type": "websocket.close", "code": code, "reason": reason})
            except Exception:
                pass

    async def _send(self, message: dict[str, object]) -> None:
        if self.closed:
            return
        try:
            await self._socket.send(message)  # type: ignore[arg-type]
        except Exception:
            self.closed = True
