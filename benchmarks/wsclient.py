"""A lean WebSocket client on an asyncio protocol, for the load generator.

Why not ``websockets``' sans-I/O ``ClientProtocol``? Measured on the bench machine, its generic
parser costs about 7 µs to receive a 640-byte binary frame, 13 µs for a 300-byte text frame and
4-5 µs to send one; the load generator handles four to five such messages per call per 20 ms,
so at N=300 the protocol layer alone would take about half a core. This client implements only
what a client needs of RFC 6455 (handshake, unmasked server frames, masked client frames,
fragments, ping/pong, close) with one parse loop per ``data_received`` and one ``write`` per
sent message; it takes ``accept_key`` and the C ``apply_mask`` from ``websockets``. No task
is created per message: subclasses handle each message in a callback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
from typing import cast
from urllib.parse import urlsplit

from websockets.utils import accept_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_MAX_HANDSHAKE_BYTES = 64 * 1024
_CLOSE_TIMEOUT = 2.0


class HandshakeError(Exception):
    """The server refused or botched the WebSocket opening handshake."""


class WsClient(asyncio.Protocol):
    """One client WebSocket connection; override :meth:`on_text`, :meth:`on_binary` and
    :meth:`on_closed` (all called from the event loop, never concurrently)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"only ws:// URLs are supported, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = headers or {}
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.is_open = False
        self.close_sent = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._random = random.Random()

    # --- callbacks for subclasses -----------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        """A whole text message arrived (UTF-8 bytes, not decoded)."""

    def on_binary(self, payload: bytes) -> None:
        """A whole binary message arrived."""

    def on_closed(self) -> None:
        """The TCP connection ended (``close_code`` is set if the server sent a close frame)."""

    # --- sending ----------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one text message (dropped silently once the connection is closing)."""
        self._send_frame(OP_TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        """Send one binary message (dropped silently once the connection is closing)."""
        self._send_frame(OP_BINARY, data)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the TCP connection is dropped after a timeout."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self.is_open:
            self.transport.close()
            return
        if not self.close_sent:
            self._send_frame(OP_CLOSE, code.to_bytes(2, "big"), force=True)
            self.close_sent = True
        self.loop.call_later(_CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _send_frame(self, opcode: int, payload: bytes, force: bool = False) -> None:
        transport = self.transport
        if transport is None or not self.is_open or (self.close_sent and not force):
            return
        if transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
        mask = self._random.getrandbits(32).to_bytes(4, "little")
        transport.write(header + mask + apply_mask(payload, mask))

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        lines = [
            f"GET {self.resource} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in self._headers.items()),
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            self._buffer += data
            if not self._handshake():
                return
            data = bytes(self._buffer)
            self._buffer = bytearray()
            if not data:
                return
        elif self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer = bytearray()
        self._parse(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        self._fail_opening(HandshakeError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    # --- internals --------------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HANDSHAKE_BYTES:
                self._fail_handshake("handshake response too large")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        status = head[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._fail_handshake(f"HTTP {status[1] if len(status) > 1 else head[0]!r}")
            return False
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail_handshake("bad Sec-WebSocket-Accept")
            return False
        self.is_open = True
        self.opened.set_result(None)
        return True

    def _fail_handshake(self, reason: str) -> None:
        self._fail_opening(HandshakeError(reason))
        if self.transport is not None:
            self.transport.close()

    def _fail_opening(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
            # Whoever awaits ``opened`` still gets it; nobody may (``connect`` timed out).
            self.opened.exception()

    def _parse(self, buf: bytes) -> None:
        pos = 0
        end_of_data = len(buf)
        while end_of_data - pos >= 2:
            first = buf[pos]
            second = buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if end_of_data - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end_of_data - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80 or length > MAX_MESSAGE_BYTES:
                self._protocol_error("masked or oversized frame from the server")
                return
            stop = pos + head + length
            if stop > end_of_data:
                break
            payload = buf[pos + head : stop]
            pos = stop
            self._frame(first & 0x80 != 0, first & 0x0F, payload)
            if self.transport is None or self.transport.is_closing():
                return
        if pos < end_of_data:
            self._buffer = bytearray(buf[pos:])

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if not fin:
                self._fragments = [payload]
                self._fragment_opcode = opcode
                return
            if opcode == OP_BINARY:
                self.on_binary(payload)
            else:
                self.on_text(payload)
        elif opcode == OP_CONTINUATION:
            self._fragments.append(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._frame(True, self._fragment_opcode, whole)
        elif opcode == OP_PING:
            self._send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            if not self.close_sent:
                self._send_frame(OP_CLOSE, payload[:2], force=True)
                self.close_sent = True
            # The server closes TCP after the closing handshake; don't wait forever.
            self.loop.call_later(_CLOSE_TIMEOUT, self._abort)
        elif opcode != OP_PONG:
            self._protocol_error(f"unknown opcode {opcode}")

    def _protocol_error(self, reason: str) -> None:
        self.close_reason = reason
        self.close(1002)


async def connect(client: WsClient, wait_seconds: float = 10.0) -> None:
    """Open ``client``'s TCP connection and wait for the opening handshake."""
    await asyncio.wait_for(
        client.loop.create_connection(lambda: client, client.host, client.port), wait_seconds
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), wait_seconds)
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
