"""What the JSON media-socket adapters (Twilio, Plivo, Telnyx) share: the receive loop with its
counters and sticky stop, ``event`` dispatch, inbound ``media`` decoding (with its
``media.chunk`` counter), DTMF, and the bookkeeping of marks for providers that echo every
pending mark on ``clear``.
"""

from __future__ import annotations

import binascii
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from callbridge import safe_json
from callbridge.protocols import (
    AudioIn,
    DtmfIn,
    MarkEcho,
    SocketChannel,
    StreamEvent,
    StreamStopped,
)

MAX_MESSAGE_CHARS = safe_json.SOCKET_LIMITS.max_bytes
"""Media-socket messages longer than this (64 KiB) are counted as malformed and dropped."""

DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""The keys a ``dtmf`` event may name."""

_COUNTER = re.compile(r"[0-9]{1,18}")


def wire_counter(value: Any) -> int | None:
    """A protocol counter (``media.chunk``, ``sequence_number``): a non-negative integer, or
    its decimal string (Twilio and Telnyx send strings); ``None`` when absent or invalid."""
    if isinstance(value, str) and _COUNTER.fullmatch(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class JsonMediaStream:
    """Base of a media socket whose messages are JSON objects told apart by ``event``.

    A subclass sets ``_handlers`` (event name → function of the stream and the decoded message,
    returning the event to deliver or ``None``), ``_stream_id_field`` (the JSON key naming the
    stream in each message) and ``_label`` (the provider's name in errors). ``media`` skips the
    table and goes straight to :meth:`_media`. ``malformed`` and ``ignored`` count what is
    dropped, as each subclass documents.
    """

    _handlers: ClassVar[dict[str, Callable[[Any, dict[str, Any]], Any]]] = {}
    _stream_id_field: ClassVar[str]
    _label: ClassVar[str]

    def __init__(self, channel: SocketChannel) -> None:
        self.malformed = 0
        self.ignored = 0
        self._channel = channel
        self._stream_id: str | None = None
        self._provider_call_id: str | None = None
        self._stopped: StreamStopped | None = None
        self._closed = False
        # The audio message up to the opening quote of its base64 payload; '"}}' closes it.
        self._audio_prefix = ""

    @property
    def stream_id(self) -> str | None:
        """The provider's stream id once ``start`` has been received, else ``None``."""
        return self._stream_id

    @property
    def provider_call_id(self) -> str | None:
        """The provider's call id from ``start``, else ``None``."""
        return self._provider_call_id

    async def receive(self) -> StreamEvent:
        """Next event; :class:`StreamStopped` once the stream ends (then keeps returning it).

        A ``stop`` message gives reason ``stop``, a socket close ``closed``. Malformed and
        ignored messages are skipped.
        """
        while self._stopped is None:
            message = await self._channel.receive()
            if message is None:
                self._stopped = StreamStopped("closed")
                break
            if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
                self.malformed += 1
                continue
            event = self._parse(message)
            if event is not None:
                return event
        return self._stopped

    def _parse(self, message: str) -> StreamEvent | None:
        try:
            data = safe_json.decode(message, safe_json.SOCKET_LIMITS)
        except safe_json.JsonInputError:
            self.malformed += 1
            return None
        if not isinstance(data, dict):
            self.malformed += 1
            return None
        kind = data.get("event")
        if kind == "media":
            return self._media(data)
        if not isinstance(kind, str):
            self.malformed += 1
            return None
        handler = self._handlers.get(kind)
        if handler is None:
            self._ignore(kind, data)
            return None
        event: StreamEvent | None = handler(self, data)
        return event

    def _ignore(self, kind: str, data: dict[str, Any]) -> None:
        self.ignored += 1

    def _media(self, data: dict[str, Any]) -> AudioIn | None:
        media = data.get("media")
        if self._stream_id is None or not isinstance(media, dict) or self._foreign(data):
            self.malformed += 1
            return None
        audio = self._inbound_audio(media)
        return None if audio is None else AudioIn(audio, wire_counter(media.get("chunk")))

    def _inbound_audio(self, media: dict[str, Any]) -> bytes | None:
        track = media.get("track")
        if track is not None and track != "inbound":
            self.ignored += 1
            return None
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            self.malformed += 1
            return None
        try:
            return binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:  # binascii.Error, and non-ASCII text
            self.malformed += 1
            return None

    def _dtmf(self, data: dict[str, Any]) -> DtmfIn | None:
        dtmf = data.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        valid = isinstance(digit, str) and digit in DTMF_DIGITS
        if self._stream_id is None or not valid or self._foreign(data):
            self.malformed += 1
            return None
        return DtmfIn(digit)

    def _stop(self, data: dict[str, Any]) -> StreamStopped:
        self._stopped = StreamStopped("stop")
        return self._stopped

    def _foreign(self, data: dict[str, Any]) -> bool:
        stream_id = data.get(self._stream_id_field)
        return stream_id is not None and stream_id != self._stream_id

    def _require_stream(self) -> str:
        if self._stream_id is None:
            raise RuntimeError(f"the {self._label} stream has not started yet (no start message)")
        return self._stream_id

    def send_audio(self, payload: bytes) -> None:
        """Send one 20 ms frame, already in the stream codec, as the provider's audio message.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        encoded = binascii.b2a_base64(payload, newline=False).decode("ascii")
        self._channel.send_text(self._audio_prefix + encoded + '"}}', droppable=True)

    async def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close()


class PendingMarks:
    """Marks sent and not echoed yet, for a provider that echoes every pending mark when it
    clears: an echo of a mark that was pending at the last clear is reported as cleared."""

    def __init__(self) -> None:
        self._pending: Counter[str] = Counter()
        self._cleared: Counter[str] = Counter()

    def sent(self, name: str) -> None:
        """Note that mark ``name`` was sent."""
        self._pending[name] += 1

    def clear(self) -> None:
        """Note that a clear was sent: every pending mark will come back as cleared."""
        self._cleared.update(self._pending)
        self._pending.clear()

    def echo(self, name: str) -> MarkEcho:
        """The event for an echo of mark ``name``."""
        if self._cleared[name] > 0:
            self._cleared[name] -= 1
            return MarkEcho(name, cleared=True)
        if self._pending[name] > 0:
            self._pending[name] -= 1
        return MarkEcho(name)
