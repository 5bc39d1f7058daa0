"""An accepted ASGI WebSocket seen as a :class:`callbridge.protocols.SocketChannel`."""

from __future__ import annotations

from litestar import WebSocket


class AsgiSocketChannel:
    """Thin, allocation-light adapter: raw ASGI events, no framework decoding on the media path.

    A failed send does not stop reading: messages the peer sent before it closed (a ``stop``
    right before the close) are still delivered, until the disconnect itself arrives.
    """

    def __init__(self, socket: WebSocket) -> None:  # type: ignore[type-arg]
        self._socket = socket
        self._disconnected = False
        self._closed_by_us = False
        self._send_failed = False

    @property
    def closed(self) -> bool:
        """Nothing more can be sent (either side closed, or a send failed)."""
        return self._disconnected or self._closed_by_us or self._send_failed

    async def receive(self) -> str | bytes | None:
        if self._disconnected or self._closed_by_us:
            return None
        try:
            message = await self._socket.receive()
        except Exception:
            self._disconnected = True
            return None
        if message["type"] != "websocket.receive":
            self._disconnected = True
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send_text(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed_by_us or self._disconnected:
            self._closed_by_us = True
            return
        self._closed_by_us = True
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
            self._send_failed = True
