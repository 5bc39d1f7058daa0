"""A faithful Twilio simulator: plays Twilio's side of one call against a callbridge server.

It behaves as Twilio does (``/work/shared/PROTOCOLS.md`` §2): posts the voice webhook, follows
the TwiML ``<Connect><Stream>``, opens the media socket, streams μ-law audio and DTMF in real
time, plays the server's audio through a playback buffer (so marks and ``clear`` behave as on
Twilio), and ends with ``stop``. Given the ``authToken`` credential it signs the webhook and the
socket handshake with ``X-Twilio-Signature`` as Twilio does; a given ``accountSid`` becomes the
call's ``AccountSid``. Along the way it checks what the server does and records
departures from the protocol in the summary's events:

- ``{"event": "protocol-error", "reason": ...}``: a server message that is binary, not a JSON
  object, lacks ``event`` or ``streamSid`` (Twilio lists it on every message), names another
  stream, is an unknown command, or carries a bad ``media``/``mark`` body; also TwiML problems
  (a ``<Parameter>`` without a name or over Twilio's 500-character limit);
- ``{"event": "bad-frame-size", "count", "sizes"}``: outbound media payloads that are not one
  whole 20 ms frame (160 bytes of μ-law), once at the end;
- ``{"event": "mark", "name", "cleared"}``: each mark echoed back, ``cleared`` when a ``clear``
  flushed it rather than playback reaching it;
- ``{"event": "clear", "droppedBytes"}``: each ``clear`` and how much unplayed audio it dropped;
- ``{"event": "stream", "customParameters"}``: the ``<Parameter>`` values of the TwiML;
- ``{"event": "closed", "code", "reason"}``: the server closed the socket with a non-1000 code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callbridge.clients.audio import AudioSource, Summary
from callbridge.clients.call import CallOptions
from callbridge.clients.playback import PlaybackBuffer
from callbridge.clients.simulated_call import (
    SimulatedCall,
    fetch_webhook,
    play_out,
    send_frames,
)
from callbridge.media.g711 import ulaw_decode, ulaw_encode

SAMPLE_RATE = 8000
FRAME_BYTES = 160
MAX_PARAMETER_CHARS = 500
"""Twilio's limit on one ``<Parameter>``'s name plus value."""


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL followed by the sorted POST params."""
    payload = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


async def simulate_twilio_call(options: CallOptions) -> Summary:
    """Play Twilio's side of one call against a callbridge server and report what happened.

    ``options.credentials`` may hold ``authToken`` (sign the webhook and the socket handshake)
    and ``accountSid`` (the webhook's and ``start``'s ``AccountSid``, unless ``extra_params``
    sets one).

    Outcomes: ``completed`` (the caller hung up after ``options.seconds``), ``completed (server
    closed)``, ``webhook failed: HTTP <code>`` or ``webhook failed: <reason>``, ``rejected:
    <Say text>`` (TwiML without ``<Connect><Stream>``), ``invalid stream url: <reason>``,
    ``refused: HTTP <code>`` (media-socket handshake refused) and ``failed: <reason>``.
    """
    return await _TwilioCall(options).run()


def _signed_webhook_url(url: str) -> str:
    # Twilio drops any port from HTTPS voice-callback URLs before signing (PROTOCOLS §2.5).
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.port is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]))


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class _Twiml:
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    say: str = ""
    problems: list[str] = field(default_factory=list)


def _parse_twiml(text: str) -> _Twiml:
    root = ET.fromstring(text)
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, not <Response>")
    twiml = _Twiml(say=" ".join((say.text or "").strip() for say in root.iter("Say")).strip())
    stream = root.find("Connect/Stream")
    if stream is None:
        return twiml
    twiml.stream_url = stream.get("url")
    for parameter in stream.iter("Parameter"):
        name, value = parameter.get("name"), parameter.get("value", "")
        if not name:
            twiml.problems.append("<Parameter> without a name")
        elif len(name) + len(value) >= MAX_PARAMETER_CHARS:
            twiml.problems.append(f"<Parameter name={name!r}> is {MAX_PARAMETER_CHARS}+ chars")
        else:
            twiml.parameters[name] = value
    return twiml


class _TwilioCall(SimulatedCall):
    def __init__(self, options: CallOptions) -> None:
        super().__init__(options, SAMPLE_RATE)
        self.account_sid = (
            options.extra_params.get("AccountSid")
            or options.credentials.get("accountSid")
            or _sid("AC")
        )
        self.call_sid = options.extra_params.get("CallSid") or _sid("CA")
        self.stream_sid = _sid("MZ")
        self.auth_token = options.credentials.get("authToken")
        self.playback = PlaybackBuffer()
        self._sequence = 0
        self.parameters: dict[str, str] = {}

    async def run(self) -> Summary:
        options = self.options
        try:
            self.source = AudioSource(
                SAMPLE_RATE, tone_hz=options.tone_hz, play_path=options.play_path
            )
        except (OSError, ValueError) as exc:
            return self.summary(f"failed: cannot read the audio to play ({exc})")
        answer = await self._post_webhook()
        if isinstance(answer, Summary):
            return answer
        url = urljoin(self.options.webhook_url, answer.stream_url or "")
        parts = urlsplit(url)
        if parts.scheme not in ("wss", "ws"):
            return self.summary("invalid stream url: scheme must be wss (ws for local testing)")
        if parts.query or "?" in url:
            return self.summary("invalid stream url: Twilio does not support query strings")
        headers: dict[str, str] = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, url)
        outcome = await self.open_media_socket(
            url, self._stream, headers=headers, user_agent_header="Twilio.TmeWs/1.0"
        )
        return self.summary(outcome)

    async def _post_webhook(self) -> _Twiml | Summary:
        options = self.options
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": options.from_number,
            "To": options.to_number,
            "Caller": options.from_number,
            "Called": options.to_number,
            **options.extra_params,
        }
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        method = options.method.upper()
        url = options.webhook_url
        if method == "GET":
            url += ("&" if "?" in url else "?") + urlencode(params)
        if self.auth_token:
            signed = params if method != "GET" else None
            headers["X-Twilio-Signature"] = twilio_signature(
                self.auth_token, _signed_webhook_url(url), signed
            )
        if method == "GET":
            response = await fetch_webhook("GET", url, headers=headers)
        else:
            response = await fetch_webhook("POST", url, headers=headers, form=params)
        if isinstance(response, str):
            return self.summary(response)
        content_type = response.headers.get("content-type", "")
        if "xml" not in content_type and "html" not in content_type:
            return self.summary(f"webhook failed: content type {content_type!r} is not TwiML")
        try:
            twiml = _parse_twiml(response.text)
        except (ET.ParseError, ValueError) as exc:
            return self.summary(f"webhook failed: invalid TwiML ({exc})")
        for problem in twiml.problems:
            self.protocol_error(problem)
        if not twiml.stream_url:
            return self.summary(f"rejected: {twiml.say or 'no <Connect><Stream> in the TwiML'}")
        self.events.append({"event": "stream", "customParameters": twiml.parameters})
        self.parameters = twiml.parameters
        return twiml

    async def _stream(self, socket: ClientConnection) -> str:
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": self.parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
        }
        try:
            await socket.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            await self._send("start", {"start": start})
        except ConnectionClosed:
            return "completed (server closed)"
        playout = play_out(
            self.playback,
            FRAME_BYTES,
            hear=lambda audio: self.recorder.append(ulaw_decode(audio)),
            reached=lambda name: self.echo_mark(name, cleared=False),
        )
        hung_up = await self.exchange_media(
            socket,
            handle=self._handle,
            send=send_frames(self.options, dtmf=self._send_dtmf, frame=self._send_frame),
            play=playout,
            hang_up=self._send_stop,
        )
        return "completed" if hung_up else "completed (server closed)"

    async def _send(self, event: str, body: dict[str, Any] | None = None) -> None:
        assert self.socket is not None
        async with self.send_lock:
            self._sequence += 1
            message = {
                "event": event,
                "sequenceNumber": str(self._sequence),
                "streamSid": self.stream_sid,
                **(body or {}),
            }
            await self.socket.send(json.dumps(message, separators=(",", ":")))

    async def _send_dtmf(self, tick: int, digit: str) -> None:
        await self._send("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    async def _send_frame(self, tick: int) -> None:
        payload = ulaw_encode(self.source.next_frame(FRAME_BYTES))
        chunk = tick + 1
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(chunk * 20),
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        await self._send("media", {"media": media})
        self.frames_sent += 1

    async def _send_stop(self) -> None:
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        await self._send("stop", {"stop": stop})

    async def echo_mark(self, name: str, *, cleared: bool) -> None:
        self.events.append({"event": "mark", "name": name, "cleared": cleared})
        with contextlib.suppress(ConnectionClosed):
            await self._send("mark", {"mark": {"name": name}})

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.protocol_error("binary frame (Twilio takes JSON text only)")
            return
        data = self.json_object(message)
        if data is None:
            return
        event = data.get("event")
        if event not in ("media", "mark", "clear"):
            self.protocol_error(f"unknown or missing event {event!r}")
            return
        stream_sid = data.get("streamSid")
        if stream_sid is None:
            self.protocol_error(f"{event} message without streamSid")
        elif stream_sid != self.stream_sid:
            self.protocol_error(f"{event} message for another stream {stream_sid!r}")
            return
        if event == "media":
            self._handle_media(data.get("media"))
        elif event == "mark":
            mark = data.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self.protocol_error("mark message without mark.name")
            else:
                await self.place_mark(self.playback, name)
        else:
            await self.clear_playback(self.playback)

    def _handle_media(self, media: Any) -> None:
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self.protocol_error("media message without media.payload")
            return
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:
            self.protocol_error("media.payload is not valid base64")
            return
        self.frames_received += 1
        self.frame_sizes[len(audio)] += 1
        self.playback.add_audio(audio)

    def closing_events(self) -> list[dict[str, Any]]:
        return self.bad_frame_size_events(lambda size: size != FRAME_BYTES)
