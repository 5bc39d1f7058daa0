"""A faithful Plivo simulator: plays Plivo's side of one call against a callbridge server.

It behaves as Plivo does (``/work/shared/PROTOCOLS.md`` §3): requests the Answer URL (POST form
or GET query, numbers without ``+``, V3-signed when given an ``authToken``), follows the XML
``<Stream>``, opens the media socket (its upgrade signed too), sends ``start`` first (Plivo has
no ``connected``), streams audio in the XML's ``contentType`` and DTMF in real time with numeric
``sequenceNumber``/``chunk``, plays ``playAudio`` through a playback queue, answers
``checkpoint`` with ``playedStream`` once the audio before it has played, answers
``clearAudio`` by dropping the queue and its checkpoints (they never come back) and sending
``clearedAudio``, and ends by closing the socket (optionally sending ``stop`` first).

It shares no code with the server-side provider, so one cannot hide the other's mistakes.
Departures from the protocol are recorded in the summary's events:

- ``{"event": "protocol-error", "reason": ...}``: a server message that is binary, over 64 KB,
  not a JSON object, an unknown command, for another stream, or a ``playAudio`` whose
  ``contentType``/``sampleRate`` differ from the stream's or whose payload is bad; also XML
  problems (``bidirectional``, ``audioTrack``, ``keepCallAlive`` or ``contentType`` not set as
  callbridge must set them, whitespace around the URL);
- ``{"event": "stream", "url", "attributes"}``: the ``<Stream>`` the XML asked for;
- ``{"event": "playedStream", "name"}``: each checkpoint reached by playback;
- ``{"event": "clear", "droppedBytes", "droppedCheckpoints"}``: each ``clearAudio``;
- ``{"event": "closed", "code", "reason"}``: the server closed the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import string
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlparse, urlsplit, urlunparse

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from callbridge.clients.audio import AudioSource, Recorder, Summary, summarize_recording
from callbridge.clients.call import CallOptions
from callbridge.media.codecs import Codec, get_codec
from callbridge.media.framing import Pacer
from callbridge.protocols import CodecSpec

FRAME_SECONDS = 0.02
DTMF_SPACING_SECONDS = 0.25
HTTP_TIMEOUT_SECONDS = 10.0
MAX_MESSAGE_BYTES = 64 * 1024
"""Plivo's limit on one media-socket message."""
MAX_URL_CHARS = 2048
"""Plivo's limit on the ``<Stream>`` URL."""

CONTENT_TYPES: dict[str, CodecSpec] = {
    "audio/x-mulaw;rate=8000": CodecSpec("PCMU", 8000),
    "audio/x-l16;rate=8000": CodecSpec("L16", 8000),
    "audio/x-l16;rate=16000": CodecSpec("L16", 16000),
}
"""The XML ``contentType`` values Plivo streams, and their codecs."""

_ENCODINGS = {"PCMU": "audio/x-mulaw", "L16": "audio/x-l16"}
_MAX_ERROR_EVENTS = 50


def plivo_v3_signature(
    auth_token: str, nonce: str, method: str, url: str, params: dict[str, str] | None = None
) -> str:
    """``X-Plivo-Signature-V3`` as Plivo computes it (the official SDKs' algorithm).

    GET: ``base?sorted-query`` (no ``?`` when there is no query). POST: ``base?sorted-query.``
    (or ``base?`` without a query) followed by the sorted body parameters as ``keyvalue``. Then
    ``.nonce``, HMAC-SHA256 with the auth token, base64.
    """
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    pairs = parse_qs(parts.query, keep_blank_values=True)
    query = "&".join(f"{k}={v}" for k, values in sorted(pairs.items()) for v in sorted(values))
    signed = f"{base}?{query}" if query else base
    if method.upper() == "POST" and params:
        signed = f"{base}?{query}." if query else f"{base}?"
        signed += "".join(k + v for k, v in sorted(params.items()))
    digest = hmac.new(auth_token.encode(), f"{signed}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def plivo_signature_headers(
    auth_token: str, method: str, url: str, params: dict[str, str] | None = None
) -> dict[str, str]:
    """The V3 signature headers Plivo sends (fresh nonce; the main-account signature too)."""
    nonce = "".join(secrets.choice(string.digits) for _ in range(20))
    signature = plivo_v3_signature(auth_token, nonce, method, url, params)
    return {
        "X-Plivo-Signature-V3": signature,
        "X-Plivo-Signature-Ma-V3": signature,
        "X-Plivo-Signature-V3-Nonce": nonce,
    }


async def simulate_plivo_call(
    options: CallOptions, *, send_stop: bool = False, playout_delay: float = 0.0
) -> Summary:
    """Play Plivo's side of one call against a callbridge server and report what happened.

    ``options.credentials`` may hold ``authToken`` (requests are then V3-signed) and
    ``authId`` (reported as ``start.accountId``). With ``send_stop`` the caller's hang-up
    sends a ``stop`` before closing the socket (Plivo Labs' code parses one; Plivo's docs
    list none, so the default is to close only). ``playout_delay`` holds received audio that
    many seconds before it plays, like a provider's jitter buffer (a checkpoint sent right
    after audio is then still pending for at least that long).

    Outcomes: ``completed`` (the caller hung up after ``options.seconds``), ``completed (server
    closed)``, ``webhook failed: HTTP <code>`` or ``webhook failed: <reason>``, ``rejected:
    <Speak text>`` (XML without ``<Stream>``), ``invalid stream: <reason>``, ``refused: HTTP
    <code>`` (media-socket handshake refused) and ``failed: <reason>``.
    """
    return await _PlivoCall(options, send_stop=send_stop, playout_delay=playout_delay).run()


@dataclass
class _PlivoXml:
    stream_url: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    speak: str = ""
    problems: list[str] = field(default_factory=list)


def _parse_xml(text: str) -> _PlivoXml:
    root = ET.fromstring(text)
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, not <Response>")
    speak = " ".join((element.text or "").strip() for element in root.iter("Speak")).strip()
    answer = _PlivoXml(speak=speak)
    stream = root.find("Stream")
    if stream is None:
        return answer
    raw = stream.text or ""
    answer.stream_url = raw.strip()
    answer.attributes = dict(stream.attrib)
    if raw != raw.strip():
        answer.problems.append("whitespace around the <Stream> URL")
    expected = {"bidirectional": "true", "audioTrack": "inbound", "keepCallAlive": "true"}
    for name, value in expected.items():
        if stream.get(name) != value:
            answer.problems.append(f'<Stream {name}> is {stream.get(name)!r}, not "{value}"')
    if stream.get("contentType") is None:
        answer.problems.append("<Stream contentType> is not set (Plivo's docs disagree on it)")
    return answer


class _PlaybackQueue:
    """Plivo's outbound queue: audio bytes and checkpoint names, played in arrival order.

    Audio becomes playable ``delay`` seconds after it arrived (the provider's jitter buffer);
    a checkpoint is reached once every byte queued before it has played.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self._items: deque[tuple[float, bytes] | str] = deque()
        self._delay = delay
        self.buffered_bytes = 0

    def add_audio(self, data: bytes, now: float) -> None:
        if data:
            self._items.append((now + self._delay, data))
            self.buffered_bytes += len(data)

    def add_checkpoint(self, name: str) -> bool:
        """Queue a checkpoint; ``True`` when nothing is queued, so it is reached at once."""
        if not self._items:
            return True
        self._items.append(name)
        return False

    def play(self, size: int, now: float) -> tuple[bytes, list[str]]:
        """Take up to ``size`` bytes of playable audio; also the checkpoints reached."""
        played = bytearray()
        reached: list[str] = []
        while self._items and (len(played) < size or isinstance(self._items[0], str)):
            head = self._items.popleft()
            if isinstance(head, str):
                reached.append(head)
                continue
            ready, data = head
            if ready > now:
                self._items.appendleft(head)
                break
            take = size - len(played)
            played += data[:take]
            if len(data) > take:
                self._items.appendleft((ready, data[take:]))
        self.buffered_bytes -= len(played)
        return bytes(played), reached

    def clear(self) -> tuple[int, list[str]]:
        """Drop unplayed audio and checkpoints; return the bytes and checkpoint names dropped."""
        dropped = self.buffered_bytes
        checkpoints = [item for item in self._items if isinstance(item, str)]
        self._items.clear()
        self.buffered_bytes = 0
        return dropped, checkpoints


class _PlivoCall:
    def __init__(self, options: CallOptions, *, send_stop: bool, playout_delay: float) -> None:
        self.options = options
        self.send_stop = send_stop
        self.call_uuid = options.extra_params.get("CallUUID") or str(uuid.uuid4())
        self.stream_id = str(uuid.uuid4())
        self.auth_token = options.credentials.get("authToken")
        self.account_id = options.credentials.get("authId") or "MA" + secrets.token_hex(9).upper()
        self.events: list[dict[str, Any]] = []
        self.error_count = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.codec: Codec = get_codec(CodecSpec("PCMU", 8000))
        self.recorder = Recorder(8000)
        self.playback = _PlaybackQueue(playout_delay)
        self.bidirectional = True
        self.extra_headers: str | None = None
        self._sequence = 0
        self._send_lock = asyncio.Lock()
        self._socket: ClientConnection | None = None

    async def run(self) -> Summary:
        options = self.options
        # Fail before calling anyone if the audio cannot be read; its rate comes with the XML.
        try:
            AudioSource(8000, tone_hz=options.tone_hz, play_path=options.play_path)
        except (OSError, ValueError) as exc:
            return self._summary(f"failed: cannot read the audio to play ({exc})")
        answer = await self._request_answer_url()
        if isinstance(answer, Summary):
            return answer
        url = urljoin(options.webhook_url, answer.stream_url or "")
        parts = urlsplit(url)
        if parts.scheme not in ("wss", "ws") or not parts.netloc:
            return self._summary("invalid stream: the URL must be wss:// (ws:// for local tests)")
        if len(url) > MAX_URL_CHARS:
            return self._summary(f"invalid stream: the URL is over {MAX_URL_CHARS} characters")
        content_type = answer.attributes.get("contentType", "audio/x-mulaw;rate=8000")
        spec = CONTENT_TYPES.get(content_type.replace(" ", "").lower())
        if spec is None:
            return self._summary(f"invalid stream: unsupported contentType {content_type!r}")
        self.codec = get_codec(spec)
        self.recorder = Recorder(spec.sample_rate)
        self.source = AudioSource(
            spec.sample_rate, tone_hz=options.tone_hz, play_path=options.play_path
        )
        self.bidirectional = answer.attributes.get("bidirectional") == "true"
        self.extra_headers = answer.attributes.get("extraHeaders")
        headers: dict[str, str] = {}
        if self.auth_token:
            https_url = urlunparse(
                urlparse(url)._replace(scheme=parts.scheme.replace("ws", "http"))
            )
            headers = plivo_signature_headers(self.auth_token, "GET", https_url)
        try:
            async with connect(
                url,
                additional_headers=headers,
                compression=None,
                open_timeout=HTTP_TIMEOUT_SECONDS,
                close_timeout=2,
                max_size=None,
            ) as socket:
                self._socket = socket
                outcome = await self._stream(socket)
        except InvalidStatus as exc:
            return self._summary(f"refused: HTTP {exc.response.status_code}")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return self._summary(f"failed: cannot open the media socket ({exc})")
        return self._summary(outcome)

    async def _request_answer_url(self) -> _PlivoXml | Summary:
        options = self.options
        params = {
            "CallUUID": self.call_uuid,
            "From": options.from_number.removeprefix("+"),
            "To": options.to_number.removeprefix("+"),
            "Direction": "inbound",
            "CallStatus": "ringing",
            **options.extra_params,
        }
        method = options.method.upper()
        url = options.webhook_url
        if method == "GET":
            url += ("&" if "?" in url else "?") + urlencode(params)
        headers: dict[str, str] = {}
        if self.auth_token:
            signed = params if method != "GET" else None
            headers = plivo_signature_headers(self.auth_token, method, url, signed)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
                if method == "GET":
                    response = await http.get(url, headers=headers)
                else:
                    response = await http.post(url, data=params, headers=headers)
        except httpx.HTTPError as exc:
            return self._summary(f"webhook failed: {type(exc).__name__}: {exc}")
        if not response.is_success:
            return self._summary(f"webhook failed: HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "")
        if "xml" not in content_type:
            return self._summary(f"webhook failed: content type {content_type!r} is not XML")
        try:
            answer = _parse_xml(response.text)
        except (ET.ParseError, ValueError) as exc:
            return self._summary(f"webhook failed: invalid Plivo XML ({exc})")
        if not answer.stream_url:
            return self._summary(f"rejected: {answer.speak or 'no <Stream> in the XML'}")
        for problem in answer.problems:
            self._protocol_error(problem)
        self.events.append(
            {"event": "stream", "url": answer.stream_url, "attributes": answer.attributes}
        )
        return answer

    async def _stream(self, socket: ClientConnection) -> str:
        media_format = {
            "encoding": _ENCODINGS[self.codec.name],
            "sampleRate": self.codec.sample_rate,
        }
        start = {
            "callId": self.call_uuid,
            "streamId": self.stream_id,
            "accountId": self.account_id,
            "tracks": ["inbound"],
            "mediaFormat": media_format,
        }
        try:
            await self._send("start", {"start": start}, with_stream_id=False)
        except ConnectionClosed:
            return "completed (server closed)"
        receiver = asyncio.create_task(self._receive(socket))
        playout = asyncio.create_task(self._playout())
        sender = asyncio.create_task(self._send_media())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            hung_up = sender.done() and sender.exception() is None
            if sender.done() and not receiver.done():
                error = sender.exception()
                if error is not None and not isinstance(error, ConnectionClosed):
                    raise error
                if hung_up and self.send_stop:
                    stop = {"callId": self.call_uuid, "streamId": self.stream_id}
                    with contextlib.suppress(ConnectionClosed):
                        await self._send("stop", {"stop": stop})
                await socket.close()
            await receiver
            return "completed" if hung_up else "completed (server closed)"
        finally:
            for task in (sender, playout, receiver):
                task.cancel()
            await asyncio.gather(sender, playout, receiver, return_exceptions=True)

    async def _send(
        self, event: str, body: dict[str, Any] | None = None, *, with_stream_id: bool = True
    ) -> None:
        assert self._socket is not None
        async with self._send_lock:
            self._sequence += 1
            message: dict[str, Any] = {"event": event, "sequenceNumber": self._sequence}
            if with_stream_id:
                message["streamId"] = self.stream_id
            message.update(body or {})
            if self.extra_headers is not None and event in ("start", "media", "dtmf"):
                message["extra_headers"] = self.extra_headers
            await self._socket.send(json.dumps(message, separators=(",", ":")))

    async def _send_media(self) -> None:
        options = self.options
        frame_samples = self.codec.frame_samples
        media_ticks = round(options.seconds / FRAME_SECONDS)
        digits = deque(
            (round((options.dtmf_delay + i * DTMF_SPACING_SECONDS) / FRAME_SECONDS), digit)
            for i, digit in enumerate(options.dtmf)
        )
        last_tick = max(media_ticks, digits[-1][0] + 1 if digits else 0)
        started_ms = int(time.time() * 1000)
        pacer = Pacer(FRAME_SECONDS, lead=0)
        for tick in range(last_tick):
            await pacer.wait()
            timestamp = str(started_ms + tick * 20)
            while digits and digits[0][0] <= tick:
                _, digit = digits.popleft()
                dtmf = {"track": "inbound", "digit": digit, "timestamp": timestamp}
                await self._send("dtmf", {"dtmf": dtmf})
            if tick < media_ticks:
                payload = self.codec.encode(self.source.next_frame(frame_samples))
                media = {
                    "track": "inbound",
                    "timestamp": timestamp,
                    "chunk": tick + 1,
                    "payload": base64.b64encode(payload).decode("ascii"),
                }
                await self._send("media", {"media": media})
                self.frames_sent += 1

    async def _playout(self) -> None:
        pacer = Pacer(FRAME_SECONDS, lead=0)
        frame_bytes = self.codec.frame_bytes
        while True:
            await pacer.wait()
            audio, reached = self.playback.play(frame_bytes, time.monotonic())
            if audio:
                self.recorder.append(self.codec.decode(audio))
            for name in reached:
                await self._played(name)

    async def _played(self, name: str) -> None:
        self.events.append({"event": "playedStream", "name": name})
        with contextlib.suppress(ConnectionClosed):
            await self._send("playedStream", {"name": name})

    async def _receive(self, socket: ClientConnection) -> None:
        try:
            async for message in socket:
                await self._handle(message)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
            self.events.append({"event": "closed", "code": code, "reason": reason})

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._protocol_error("binary frame (Plivo takes JSON text only)")
            return
        size = len(message.encode())
        if size > MAX_MESSAGE_BYTES:
            self._protocol_error(f"message of {size} bytes is over 64 KB")
            return
        try:
            data = json.loads(message)
        except ValueError:
            self._protocol_error("message is not JSON")
            return
        if not isinstance(data, dict):
            self._protocol_error("message is not a JSON object")
            return
        event = data.get("event")
        if event not in ("playAudio", "checkpoint", "clearAudio"):
            self._protocol_error(f"unknown or missing event {event!r}")
            return
        stream_id = data.get("streamId")
        if stream_id is not None and stream_id != self.stream_id:
            self._protocol_error(f"{event} message for another stream {stream_id!r}")
            return
        if event == "playAudio":
            self._play_audio(data.get("media"))
            return
        if stream_id is None:
            self._protocol_error(f"{event} message without streamId")
        if event == "checkpoint":
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self._protocol_error("checkpoint message without a name")
            elif self.playback.add_checkpoint(name):
                await self._played(name)
            return
        dropped, checkpoints = self.playback.clear()
        self.events.append(
            {"event": "clear", "droppedBytes": dropped, "droppedCheckpoints": checkpoints}
        )
        with contextlib.suppress(ConnectionClosed):
            await self._send("clearedAudio")

    def _play_audio(self, media: Any) -> None:
        if not isinstance(media, dict):
            self._protocol_error("playAudio message without media")
            return
        content_type, rate = media.get("contentType"), media.get("sampleRate")
        expected = _ENCODINGS[self.codec.name]
        if content_type != expected:
            self._protocol_error(f"playAudio contentType {content_type!r} is not {expected!r}")
            return
        if isinstance(rate, bool) or str(rate) != str(self.codec.sample_rate):
            self._protocol_error(f"playAudio sampleRate {rate!r} is not {self.codec.sample_rate}")
            return
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            self._protocol_error("playAudio message without media.payload")
            return
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:
            self._protocol_error("playAudio payload is not valid base64")
            return
        if self.codec.name == "L16" and len(audio) % 2:
            self._protocol_error("playAudio L16 payload has an odd number of bytes")
            return
        self.frames_received += 1
        if self.bidirectional:
            self.playback.add_audio(audio, time.monotonic())

    def _protocol_error(self, reason: str) -> None:
        self.error_count += 1
        if self.error_count <= _MAX_ERROR_EVENTS:
            self.events.append({"event": "protocol-error", "reason": reason})

    def _summary(self, outcome: str) -> Summary:
        if self.error_count > _MAX_ERROR_EVENTS:
            self.events.append({"event": "protocol-errors", "total": self.error_count})
        if self.options.record_path and self._socket is not None:
            self.recorder.write(self.options.record_path)
        return summarize_recording(
            self.recorder,
            outcome=outcome,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            events=self.events,
        )
