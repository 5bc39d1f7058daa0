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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlparse, urlsplit, urlunparse

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callbridge.clients.audio import AudioSource, Recorder, Summary
from callbridge.clients.call import CallOptions
from callbridge.clients.playback import PlaybackBuffer
from callbridge.clients.simulated_call import SimulatedCall, fetch_webhook, play_out, send_frames
from callbridge.media.codecs import Codec, get_codec
from callbridge.protocols import CodecSpec

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


class _PlivoCall(SimulatedCall):
    def __init__(self, options: CallOptions, *, send_stop: bool, playout_delay: float) -> None:
        super().__init__(options, 8000)
        self.send_stop = send_stop
        self.call_uuid = options.extra_params.get("CallUUID") or str(uuid.uuid4())
        self.stream_id = str(uuid.uuid4())
        self.auth_token = options.credentials.get("authToken")
        self.account_id = options.credentials.get("authId") or "MA" + secrets.token_hex(9).upper()
        self.codec: Codec = get_codec(CodecSpec("PCMU", 8000))
        self.playback = PlaybackBuffer(playout_delay)
        self.bidirectional = True
        self.extra_headers: str | None = None
        self._sequence = 0
        self._started_ms = 0

    async def run(self) -> Summary:
        options = self.options
        # Fail before calling anyone if the audio cannot be read; its rate comes with the XML.
        try:
            AudioSource(8000, tone_hz=options.tone_hz, play_path=options.play_path)
        except (OSError, ValueError) as exc:
            return self.summary(f"failed: cannot read the audio to play ({exc})")
        answer = await self._request_answer_url()
        if isinstance(answer, Summary):
            return answer
        url = urljoin(options.webhook_url, answer.stream_url or "")
        parts = urlsplit(url)
        if parts.scheme not in ("wss", "ws") or not parts.netloc:
            return self.summary("invalid stream: the URL must be wss:// (ws:// for local tests)")
        if len(url) > MAX_URL_CHARS:
            return self.summary(f"invalid stream: the URL is over {MAX_URL_CHARS} characters")
        content_type = answer.attributes.get("contentType", "audio/x-mulaw;rate=8000")
        spec = CONTENT_TYPES.get(content_type.replace(" ", "").lower())
        if spec is None:
            return self.summary(f"invalid stream: unsupported contentType {content_type!r}")
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
        outcome = await self.open_media_socket(url, self._stream, headers=headers, max_size=None)
        return self.summary(outcome)

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
        if method == "GET":
            response = await fetch_webhook("GET", url, headers=headers)
        else:
            response = await fetch_webhook("POST", url, headers=headers, form=params)
        if isinstance(response, str):
            return self.summary(response)
        content_type = response.headers.get("content-type", "")
        if "xml" not in content_type:
            return self.summary(f"webhook failed: content type {content_type!r} is not XML")
        try:
            answer = _parse_xml(response.text)
        except (ET.ParseError, ValueError) as exc:
            return self.summary(f"webhook failed: invalid Plivo XML ({exc})")
        if not answer.stream_url:
            return self.summary(f"rejected: {answer.speak or 'no <Stream> in the XML'}")
        for problem in answer.problems:
            self.protocol_error(problem)
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
        playout = play_out(
            self.playback,
            self.codec.frame_bytes,
            hear=lambda audio: self.recorder.append(self.codec.decode(audio)),
            reached=self._played,
        )
        hung_up = await self.exchange_media(
            socket,
            handle=self._handle,
            send=self._send_media(),
            play=playout,
            hang_up=self._send_stop if self.send_stop else None,
        )
        return "completed" if hung_up else "completed (server closed)"

    async def _send(
        self, event: str, body: dict[str, Any] | None = None, *, with_stream_id: bool = True
    ) -> None:
        assert self.socket is not None
        async with self.send_lock:
            self._sequence += 1
            message: dict[str, Any] = {"event": event, "sequenceNumber": self._sequence}
            if with_stream_id:
                message["streamId"] = self.stream_id
            message.update(body or {})
            if self.extra_headers is not None and event in ("start", "media", "dtmf"):
                message["extra_headers"] = self.extra_headers
            await self.socket.send(json.dumps(message, separators=(",", ":")))

    async def _send_media(self) -> None:
        self._started_ms = int(time.time() * 1000)
        await send_frames(self.options, dtmf=self._send_dtmf, frame=self._send_frame)

    def _timestamp(self, tick: int) -> str:
        return str(self._started_ms + tick * 20)

    async def _send_dtmf(self, tick: int, digit: str) -> None:
        dtmf = {"track": "inbound", "digit": digit, "timestamp": self._timestamp(tick)}
        await self._send("dtmf", {"dtmf": dtmf})

    async def _send_frame(self, tick: int) -> None:
        payload = self.codec.encode(self.source.next_frame(self.codec.frame_samples))
        media = {
            "track": "inbound",
            "timestamp": self._timestamp(tick),
            "chunk": tick + 1,
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        await self._send("media", {"media": media})
        self.frames_sent += 1

    async def _send_stop(self) -> None:
        await self._send("stop", {"stop": {"callId": self.call_uuid, "streamId": self.stream_id}})

    async def _played(self, name: str) -> None:
        self.events.append({"event": "playedStream", "name": name})
        with contextlib.suppress(ConnectionClosed):
            await self._send("playedStream", {"name": name})

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.protocol_error("binary frame (Plivo takes JSON text only)")
            return
        size = len(message.encode())
        if size > MAX_MESSAGE_BYTES:
            self.protocol_error(f"message of {size} bytes is over 64 KB")
            return
        data = self.json_object(message)
        if data is None:
            return
        event = data.get("event")
        if event not in ("playAudio", "checkpoint", "clearAudio"):
            self.protocol_error(f"unknown or missing event {event!r}")
            return
        stream_id = data.get("streamId")
        if stream_id is not None and stream_id != self.stream_id:
            self.protocol_error(f"{event} message for another stream {stream_id!r}")
            return
        if event == "playAudio":
            self._play_audio(data.get("media"))
            return
        if stream_id is None:
            self.protocol_error(f"{event} message without streamId")
        if event == "checkpoint":
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.protocol_error("checkpoint message without a name")
            elif self.playback.add_mark(name):
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
            self.protocol_error("playAudio message without media")
            return
        content_type, rate = media.get("contentType"), media.get("sampleRate")
        expected = _ENCODINGS[self.codec.name]
        if content_type != expected:
            self.protocol_error(f"playAudio contentType {content_type!r} is not {expected!r}")
            return
        if isinstance(rate, bool) or str(rate) != str(self.codec.sample_rate):
            self.protocol_error(f"playAudio sampleRate {rate!r} is not {self.codec.sample_rate}")
            return
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            self.protocol_error("playAudio message without media.payload")
            return
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:
            self.protocol_error("playAudio payload is not valid base64")
            return
        if self.codec.name == "L16" and len(audio) % 2:
            self.protocol_error("playAudio L16 payload has an odd number of bytes")
            return
        self.frames_received += 1
        if self.bidirectional:
            self.playback.add_audio(audio)
