"""A reference client of callbridge's custom protocol: plays one call against a server.

It does what the specification in the README ("Custom clients") asks of a client: posts the
JSON webhook (signed with ``X-Callbridge-Signature`` when given a ``signingSecret``), checks the
answer field by field, opens ``socketUrl`` (signed handshake), sends ``start``, streams binary
20 ms PCM16-LE frames and DTMF in real time, plays the server's audio through a playback buffer
(so marks and ``clear`` behave as the protocol defines), and ends with ``stop``. Along the way it
checks what the server does and records departures from the protocol in the summary's events:

- ``{"event": "protocol-error", "reason": ...}``: an answer field that is missing or wrong, a
  server text message that is not a JSON object, lacks ``event``, names an unknown command or
  carries a bad ``mark``; the server closing the socket without a ``stop`` first;
- ``{"event": "bad-frame-size", "count", "sizes"}``: binary frames that are not exactly 20 ms
  at the answer's sample rate, once at the end;
- ``{"event": "answer", "callId", "roomId", "sampleRate"}``: the accepted answer;
- ``{"event": "mark", "name", "cleared"}``: each mark echoed back, ``cleared`` when a ``clear``
  flushed it rather than playback reaching it;
- ``{"event": "clear", "droppedBytes"}``: each ``clear`` and how much unplayed audio it dropped;
- ``{"event": "stop", "reason"}``: the server ended the call;
- ``{"event": "closed", "code", "reason"}``: the socket closed abnormally.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callbridge.clients.audio import AudioSource, Recorder, Summary
from callbridge.clients.call import CallOptions
from callbridge.clients.playback import PlaybackBuffer
from callbridge.clients.simulated_call import SimulatedCall, fetch_webhook, play_out, send_frames

SIGNATURE_HEADER = "X-Callbridge-Signature"
"""Header carrying ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` on webhooks and handshakes."""

AUDIO_FORMATS = frozenset({8000, 16000})
"""Sample rates an answer may name; the rest of the format is fixed (PCM16-LE, mono, 20 ms)."""

_TOP_LEVEL_FIELDS = ("callId", "from", "to")


def webhook_content(timestamp: int, body: bytes) -> bytes:
    """What a ``POST`` webhook signature covers: ``"{t}." + raw body``."""
    return f"{timestamp}.".encode() + body


def get_content(timestamp: int, url: str) -> bytes:
    """What a ``GET`` webhook or socket-handshake signature covers: ``"{t}.GET.{url}"``."""
    return f"{timestamp}.GET.{url}".encode()


def signature_digest(secret: str, content: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``content`` keyed with the UTF-8 bytes of ``secret``."""
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def sign_webhook(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """``X-Callbridge-Signature`` value for a ``POST`` webhook with this exact ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature_digest(secret, webhook_content(t, body))}"


def sign_get(secret: str, url: str, timestamp: int | None = None) -> str:
    """``X-Callbridge-Signature`` value for a ``GET`` of ``url`` (webhook or socket handshake).

    ``url`` is exactly the URL requested: for the media socket, the answer's ``socketUrl``.
    """
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature_digest(secret, get_content(t, url))}"


async def simulate_custom_call(options: CallOptions) -> Summary:
    """Play a custom-protocol client for one call against a callbridge server.

    ``options.credentials["signingSecret"]`` signs the webhook and the handshake;
    ``options.extra_params`` may override ``callId``, ``from`` and ``to``, every other entry is
    sent in ``metadata``.

    Outcomes: ``completed`` (the client sent ``stop`` after ``options.seconds``), ``completed
    (server closed)``, ``webhook failed: HTTP <code>`` or ``webhook failed: <reason>``,
    ``rejected: <message>``, ``invalid answer: <reason>``, ``refused: HTTP <code>`` (socket
    handshake refused) and ``failed: <reason>``.
    """
    return await _CustomCall(options).run()


@dataclass
class _Answer:
    socket_url: str
    call_id: str
    room_id: str
    sample_rate: int


class _CustomCall(SimulatedCall):
    def __init__(self, options: CallOptions) -> None:
        super().__init__(options, 8000)
        extra = dict(options.extra_params)
        self.call_id = extra.pop("callId", None) or "sim-" + secrets.token_hex(12)
        self.from_number = extra.pop("from", None) or options.from_number
        self.to_number = extra.pop("to", None) or options.to_number
        self.metadata = extra
        self.secret = options.credentials.get("signingSecret")
        self.frame_bytes = 320
        self.playback = PlaybackBuffer()
        self.server_stopped = False

    async def run(self) -> Summary:
        answer = await self._post_webhook()
        if isinstance(answer, Summary):
            return answer
        self.frame_bytes = answer.sample_rate // 50 * 2
        self.recorder = Recorder(answer.sample_rate)
        try:
            self.source = AudioSource(
                answer.sample_rate, tone_hz=self.options.tone_hz, play_path=self.options.play_path
            )
        except (OSError, ValueError) as exc:
            return self.summary(f"failed: cannot read the audio to play ({exc})")
        headers = (
            {SIGNATURE_HEADER: sign_get(self.secret, answer.socket_url)} if self.secret else {}
        )
        outcome = await self.open_media_socket(
            answer.socket_url,
            self._stream,
            headers=headers,
            user_agent_header="callbridge-custom-client/1",
        )
        return self.summary(outcome)

    async def _post_webhook(self) -> _Answer | Summary:
        options = self.options
        headers = {"User-Agent": "callbridge-custom-client/1", "Accept": "application/json"}
        url = options.webhook_url
        body = b""
        if options.method.upper() == "GET":
            query = {"callId": self.call_id, "from": self.from_number, "to": self.to_number}
            url += ("&" if "?" in url else "?") + urlencode(query)
            if self.secret:
                headers[SIGNATURE_HEADER] = sign_get(self.secret, url)
        else:
            document: dict[str, Any] = {
                "callId": self.call_id,
                "from": self.from_number,
                "to": self.to_number,
            }
            if self.metadata:
                document["metadata"] = self.metadata
            body = json.dumps(document, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            if self.secret:
                headers[SIGNATURE_HEADER] = sign_webhook(self.secret, body)
        if options.method.upper() == "GET":
            response = await fetch_webhook("GET", url, headers=headers)
        else:
            response = await fetch_webhook("POST", url, headers=headers, content=body)
        if isinstance(response, str):
            return self.summary(response)
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/json":
            return self.summary(f"webhook failed: content type {content_type!r} is not JSON")
        try:
            data = response.json()
        except ValueError:
            return self.summary("webhook failed: the answer is not JSON")
        return self._read_answer(data)

    def _read_answer(self, data: Any) -> _Answer | Summary:
        if not isinstance(data, dict):
            return self.summary("invalid answer: not a JSON object")
        action = data.get("action")
        if action == "reject":
            message = data.get("message")
            if not isinstance(message, str):
                self.protocol_error("reject answer without a message")
            return self.summary(f"rejected: {message or ''}".rstrip())
        if action != "connect":
            return self.summary(f"invalid answer: unknown action {action!r}")
        socket_url = data.get("socketUrl")
        if not isinstance(socket_url, str) or urlsplit(socket_url).scheme not in ("ws", "wss"):
            return self.summary("invalid answer: socketUrl must be a ws:// or wss:// URL")
        audio = data.get("audio")
        rate = audio.get("sampleRate") if isinstance(audio, dict) else None
        if not isinstance(rate, int) or rate not in AUDIO_FORMATS:
            return self.summary("invalid answer: audio.sampleRate must be 8000 or 16000")
        expected = {"encoding": "pcm_s16le", "sampleRate": rate, "channels": 1, "frameMs": 20}
        if audio != expected:
            return self.summary(f"invalid answer: audio must be {json.dumps(expected)}")
        if data.get("callId") != self.call_id:
            self.protocol_error(f"answer callId {data.get('callId')!r} is not the one sent")
        room_id = data.get("roomId")
        if not isinstance(room_id, str) or not room_id:
            self.protocol_error("answer without roomId")
        expires = data.get("expiresInSeconds")
        if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
            self.protocol_error("answer without a positive expiresInSeconds")
        answer = _Answer(socket_url, self.call_id, str(room_id or ""), rate)
        self.events.append(
            {
                "event": "answer",
                "callId": answer.call_id,
                "roomId": answer.room_id,
                "sampleRate": rate,
            }
        )
        return answer

    async def _stream(self, socket: ClientConnection) -> str:
        try:
            await self._send_json({"event": "start", "callId": self.call_id})
        except ConnectionClosed:
            return "completed (server closed)"
        hung_up = await self.exchange_media(
            socket,
            handle=self._handle,
            send=send_frames(self.options, dtmf=self._send_dtmf, frame=self._send_frame),
            play=play_out(
                self.playback,
                self.frame_bytes,
                hear=self._hear,
                reached=lambda name: self.echo_mark(name, cleared=False),
            ),
            hang_up=lambda: self._send_json({"event": "stop"}),
        )
        if not hung_up and not self.server_stopped:
            self.protocol_error("the server closed the socket without a stop message")
        return "completed" if hung_up else "completed (server closed)"

    async def _send_json(self, message: dict[str, Any]) -> None:
        assert self.socket is not None
        async with self.send_lock:
            await self.socket.send(json.dumps(message, separators=(",", ":")))

    async def _send_dtmf(self, tick: int, digit: str) -> None:
        await self._send_json({"event": "dtmf", "digit": digit})

    async def _send_frame(self, tick: int) -> None:
        assert self.socket is not None
        samples = self.frame_bytes // 2
        frame = self.source.next_frame(samples).astype("<i2", copy=False).tobytes()
        async with self.send_lock:
            await self.socket.send(frame)
        self.frames_sent += 1

    def _hear(self, audio: bytes) -> None:
        usable = len(audio) & ~1
        if usable:
            self.recorder.append(np.frombuffer(audio[:usable], dtype="<i2").astype(np.int16))

    async def echo_mark(self, name: str, *, cleared: bool) -> None:
        self.events.append({"event": "mark", "name": name, "cleared": cleared})
        with contextlib.suppress(ConnectionClosed):
            await self._send_json({"event": "mark", "name": name, "cleared": cleared})

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.frames_received += 1
            self.frame_sizes[len(message)] += 1
            self.playback.add_audio(message)
            return
        data = self.json_object(message)
        if data is None:
            return
        event = data.get("event")
        if event == "mark":
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.protocol_error("mark message without a name")
            else:
                await self.place_mark(self.playback, name)
        elif event == "clear":
            await self.clear_playback(self.playback)
        elif event == "stop":
            self.server_stopped = True
            self.events.append({"event": "stop", "reason": data.get("reason")})
        else:
            self.protocol_error(f"unknown or missing event {event!r}")

    def closing_events(self) -> list[dict[str, Any]]:
        return self.bad_frame_size_events(lambda size: size != self.frame_bytes)
