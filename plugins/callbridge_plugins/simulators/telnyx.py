"""A faithful Telnyx simulator: plays Telnyx's side of one TeXML call against a callbridge server.

It behaves as Telnyx does (``/work/shared/PROTOCOLS.md`` §4): fetches the TeXML by POST (form)
or GET (query) with Telnyx's parameters, signs the fetch with Ed25519 when given a private key,
follows ``<Connect><Stream>`` or ``<Start><Stream>`` + ``<Pause>``, opens the media socket,
sends ``connected`` and ``start``, streams audio every 20 ms with snake_case keys and string
counters, **delivers some frames out of order** (adjacent pairs swapped every few frames, from
a fixed seed) so the server's reorder buffer is exercised, sends DTMF with ``occurred_at``,
plays the server's audio through a playback buffer that starts once 60 ms are queued, like a
jitter buffer (marks echo when reached, or at once when nothing is queued; ``clear`` drops the
queue and echoes every pending mark), and ends with
``stop``. In ``start`` style the simulated call stays up after the stream ends, as on Telnyx,
where only a REST hang-up (or the caller) ends it.

Signing: put the Ed25519 private key (base64 of the 32-byte seed) in
``CallOptions.credentials["privateKey"]``; the connector holds the matching ``publicKey``
(:func:`public_key_of` derives it).

Events recorded in the summary:

- ``{"event": "protocol-error", "reason": ...}``: a server message that is binary, not a JSON
  object, an unknown command, names another ``stream_id``, or carries a bad
  ``media``/``mark`` body (the simulator also answers Telnyx's ``error`` event, as Telnyx
  does); also TeXML problems (an unknown ``track``, a sampling rate G.711 cannot carry,
  nothing keeping a ``start``-style call up);
- ``{"event": "warning", "reason": ...}``: TeXML that works but is risky (``enableReconnect``
  not ``false``);
- ``{"event": "bad-frame-size", "count", "sizes"}``: outbound payloads that are not whole
  20 ms frames (multiples of 160 bytes), once at the end;
- ``{"event": "mark", "name", "cleared"}`` and ``{"event": "clear", "droppedBytes"}``;
- ``{"event": "stream", "style", "codec", "bidirectionalCodec", "track"}``: the TeXML stream;
- ``{"event": "reordered", "pairs"}``: how many adjacent frame pairs were swapped;
- ``{"event": "call-continues"}``: ``start`` style, the call outlived its stream;
- ``{"event": "closed", "code", "reason"}``: the server closed the socket.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callbridge.clients.audio import AudioSource, Summary
from callbridge.clients.call import CallOptions
from callbridge.clients.playback import PlaybackBuffer
from callbridge.clients.simulated_call import (
    FRAME_SECONDS,
    SimulatedCall,
    fetch_webhook,
    send_frames,
)
from callbridge.media.codecs import Codec, get_codec
from callbridge.media.framing import Pacer
from callbridge.protocols import CodecSpec

SAMPLE_RATE = 8000
FRAME_BYTES = 160
PREBUFFER_FRAMES = 3
"""Playback starts (and restarts after an underrun) once this many frames are queued."""
SWAP_EVERY = (3, 7)
"""A pair of adjacent frames is swapped every 3 to 7 frames when reordering is on."""

_TRACKS = {"inbound_track", "outbound_track", "both_tracks"}
_SIMULATED_CODECS = ("PCMU", "PCMA")


def private_key_from_seed(seed_b64: str) -> Ed25519PrivateKey:
    """The Ed25519 key of a base64 seed (32 bytes; a 64-byte seed+public key is accepted too).

    Raises:
        ValueError: not base64, or not 32/64 bytes.
    """
    try:
        raw = base64.b64decode(seed_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("privateKey is not base64") from None
    if len(raw) not in (32, 64):
        raise ValueError(f"privateKey must be a 32-byte Ed25519 seed, got {len(raw)} bytes")
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


def public_key_of(seed_b64: str) -> str:
    """The base64 public key a connector needs (``publicKey``) for the seed ``seed_b64``."""
    public = private_key_from_seed(seed_b64).public_key()
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def telnyx_signature_headers(seed_b64: str, body: bytes, timestamp: int) -> dict[str, str]:
    """``telnyx-signature-ed25519`` and ``telnyx-timestamp`` for ``body`` sent at ``timestamp``.

    The signature is Ed25519 over ``b"{timestamp}|" + body`` (raw bytes), base64-encoded.
    """
    message = str(timestamp).encode("ascii") + b"|" + body
    signature = private_key_from_seed(seed_b64).sign(message)
    return {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode("ascii"),
        "telnyx-timestamp": str(timestamp),
    }


async def simulate_telnyx_call(
    options: CallOptions, *, reorder: bool = True, seed: int = 1
) -> Summary:
    """Play Telnyx's side of one TeXML call against a callbridge server and report it.

    ``reorder`` swaps adjacent media frames now and then (deterministically from ``seed``),
    as Telnyx's unordered delivery may.

    Outcomes: ``completed`` (the caller's stream ended after ``options.seconds``),
    ``completed (server closed)``, ``webhook failed: HTTP <code>`` or ``webhook failed:
    <reason>``, ``rejected: <Say text>`` (TeXML without a ``<Stream>``), ``invalid texml:
    <reason>`` (e.g. ``bidirectionalMode`` left at ``mp3``), ``unsupported: <reason>``,
    ``invalid stream url: <reason>``, ``refused: HTTP <code>`` and ``failed: <reason>``.
    """
    return await _TelnyxCall(options, reorder=reorder, seed=seed).run()


@dataclass
class _Texml:
    style: str | None = None
    stream: dict[str, str] = field(default_factory=dict)
    say: str = ""
    pause_after_start: bool = False


def _parse_texml(text: str) -> _Texml:
    root = ET.fromstring(text)
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, not <Response>")
    texml = _Texml(say=" ".join((say.text or "").strip() for say in root.iter("Say")).strip())
    verbs = list(root)
    for index, verb in enumerate(verbs):
        stream = verb.find("Stream")
        if verb.tag in ("Connect", "Start") and stream is not None:
            texml.style = "connect" if verb.tag == "Connect" else "start"
            texml.stream = dict(stream.attrib)
            texml.pause_after_start = any(v.tag == "Pause" for v in verbs[index + 1 :])
            break
    return texml


@dataclass
class _StreamSetup:
    style: str
    url: str
    inbound: Codec
    outbound: Codec
    send_inbound: bool
    send_outbound: bool


class _TelnyxCall(SimulatedCall):
    def __init__(self, options: CallOptions, *, reorder: bool, seed: int) -> None:
        super().__init__(options, SAMPLE_RATE)
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.account_sid = options.extra_params.get("AccountSid") or str(uuid.uuid4())
        self.call_sid = options.extra_params.get("CallSid") or "v3:" + secrets.token_urlsafe(24)
        self.stream_id = str(uuid.uuid4())
        self.user_id = str(uuid.uuid4())
        self.private_key = options.credentials.get("privateKey")
        self.pairs_swapped = 0
        self.playback = PlaybackBuffer()
        self._sequence = 0
        self._chunks: Counter[str] = Counter()
        self._next_swap = 0
        self._held: str | None = None
        self.setup: _StreamSetup | None = None

    async def run(self) -> Summary:
        options = self.options
        try:
            self.source = AudioSource(
                SAMPLE_RATE, tone_hz=options.tone_hz, play_path=options.play_path
            )
        except (OSError, ValueError) as exc:
            return self.summary(f"failed: cannot read the audio to play ({exc})")
        if self.private_key is not None:
            try:
                private_key_from_seed(self.private_key)
            except ValueError as exc:
                return self.summary(f"failed: credentials.{exc}")
        answer = await self._fetch_texml()
        if isinstance(answer, str):
            return self.summary(answer)
        setup = self._stream_setup(answer)
        if isinstance(setup, str):
            return self.summary(setup)
        self.setup = setup
        outcome = await self.open_media_socket(
            setup.url, lambda socket: self._stream(socket, setup)
        )
        # Only a stream that ran leaves a call behind (refused and failed ones end it).
        if setup.style == "start" and outcome.startswith("completed"):
            self.events.append({"event": "call-continues"})
        return self.summary(outcome)

    # ------------------------------------------------------------------ TeXML

    async def _fetch_texml(self) -> _Texml | str:
        options = self.options
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallSidLegacy": str(uuid.uuid4()),
            "CallStatus": "ringing",
            "ConnectionId": str(self.rng.randrange(10**18, 10**19)),
            "Direction": "inbound",
            "From": options.from_number,
            "To": options.to_number,
            **options.extra_params,
        }
        method = options.method.upper()
        url = options.webhook_url
        body = b""
        headers = {"Accept": "*/*"}
        if method == "GET":
            url += ("&" if "?" in url else "?") + urlencode(params)
        else:
            body = urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.private_key:
            headers.update(telnyx_signature_headers(self.private_key, body, int(time.time())))
        response = await fetch_webhook(method, url, headers=headers, content=body or None)
        if isinstance(response, str):
            return response
        content_type = response.headers.get("content-type", "")
        if "xml" not in content_type:
            return f"webhook failed: content type {content_type!r} is not TeXML"
        try:
            texml = _parse_texml(response.text)
        except (ET.ParseError, ValueError) as exc:
            return f"webhook failed: invalid TeXML ({exc})"
        if texml.style is None:
            return f"rejected: {texml.say or 'no <Connect>/<Start> <Stream> in the TeXML'}"
        return texml

    def _stream_setup(self, texml: _Texml) -> _StreamSetup | str:
        attrs = texml.stream
        mode = attrs.get("bidirectionalMode")
        if mode != "rtp":
            shown = f'"{mode}"' if mode is not None else 'absent, so "mp3"'
            return (
                f"invalid texml: bidirectionalMode is {shown}; raw audio needs "
                '"rtp" (in mp3 mode Telnyx plays each message as an MP3 file)'
            )
        outbound_name = attrs.get("bidirectionalCodec", "PCMU").upper()
        inbound_name = attrs.get("codec", "default").upper()
        if inbound_name == "DEFAULT":
            inbound_name = "PCMU"  # the simulated call's own codec
        for attribute, name in (("bidirectionalCodec", outbound_name), ("codec", inbound_name)):
            if name not in _SIMULATED_CODECS:
                return f"unsupported: {attribute}={name} (the simulator plays PCMU and PCMA)"
        rate = attrs.get("bidirectionalSamplingRate", "8000")
        if rate != "8000":
            self.protocol_error(f"bidirectionalSamplingRate={rate} with G.711 (8000 only)")
        track = attrs.get("track", "inbound_track")
        if track not in _TRACKS:
            self.protocol_error(f"unknown track {track!r}; using inbound_track")
            track = "inbound_track"
        if attrs.get("enableReconnect", "true").lower() != "false":
            self.events.append(
                {
                    "event": "warning",
                    "reason": "enableReconnect is not false: Telnyx may reconnect after the "
                    "server closes the socket",
                }
            )
        if texml.style == "start" and not texml.pause_after_start:
            self.protocol_error("nothing keeps the call up after <Start>: it would end at once")
        url = urljoin(self.options.webhook_url, attrs.get("url", ""))
        if urlsplit(url).scheme not in ("wss", "ws") or not attrs.get("url"):
            return "invalid stream url: scheme must be wss (ws for local testing)"
        assert texml.style is not None
        self.events.append(
            {
                "event": "stream",
                "style": texml.style,
                "codec": inbound_name,
                "bidirectionalCodec": outbound_name,
                "track": track,
            }
        )
        return _StreamSetup(
            style=texml.style,
            url=url,
            inbound=get_codec(CodecSpec(inbound_name, SAMPLE_RATE)),
            outbound=get_codec(CodecSpec(outbound_name, SAMPLE_RATE)),
            send_inbound=track in ("inbound_track", "both_tracks"),
            send_outbound=track in ("outbound_track", "both_tracks"),
        )

    # ------------------------------------------------------------------ media socket

    async def _stream(self, socket: ClientConnection, setup: _StreamSetup) -> str:
        start = {
            "user_id": self.user_id,
            "call_control_id": self.call_sid,
            "call_session_id": str(uuid.uuid4()),
            "from": self.options.from_number,
            "to": self.options.to_number,
            "tags": [],
            "client_state": "",
            "media_format": {
                "encoding": setup.inbound.name,
                "sample_rate": SAMPLE_RATE,
                "channels": 1,
            },
        }
        try:
            await socket.send('{"event":"connected","version":"1.0.0"}')
            await self._send("start", {"start": start})
        except ConnectionClosed:
            return "completed (server closed)"
        hung_up = await self.exchange_media(
            socket,
            handle=self._handle,
            send=self._send_media(setup),
            play=self._playout(setup),
            hang_up=self._send_stop,
        )
        return "completed" if hung_up else "completed (server closed)"

    def _message(self, event: str, body: dict[str, Any]) -> str:
        self._sequence += 1
        message = {
            "event": event,
            "sequence_number": str(self._sequence),
            "stream_id": self.stream_id,
            **body,
        }
        return json.dumps(message, separators=(",", ":"))

    async def _send(self, event: str, body: dict[str, Any]) -> None:
        assert self.socket is not None
        async with self.send_lock:
            await self.socket.send(self._message(event, body))

    def _media_message(self, track: str, payload: bytes) -> str:
        self._chunks[track] += 1
        chunk = self._chunks[track]
        media = {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(chunk * 20),
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        return self._message("media", {"media": media})

    async def _send_media(self, setup: _StreamSetup) -> None:
        assert self.socket is not None
        self._next_swap = self.rng.randint(*SWAP_EVERY)
        self._held = None
        await send_frames(
            self.options,
            dtmf=self._send_dtmf,
            frame=lambda tick: self._send_frame(tick, setup),
            media=setup.send_inbound,
        )
        if self._held is not None:
            async with self.send_lock:
                await self.socket.send(self._held)

    async def _send_dtmf(self, tick: int, digit: str) -> None:
        occurred_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await self._send("dtmf", {"occurred_at": occurred_at, "dtmf": {"digit": digit}})

    async def _send_frame(self, tick: int, setup: _StreamSetup) -> None:
        assert self.socket is not None
        payload = setup.inbound.encode(self.source.next_frame(FRAME_BYTES))
        async with self.send_lock:
            message = self._media_message("inbound", payload)
            self.frames_sent += 1
            if self.reorder and self._held is None and tick == self._next_swap:
                self._held = message  # delivered after the next frame
                self._next_swap = tick + 1 + self.rng.randint(*SWAP_EVERY)
                return
            await self.socket.send(message)
            if self._held is not None:
                await self.socket.send(self._held)
                self._held = None
                self.pairs_swapped += 1

    async def _send_stop(self) -> None:
        stop = {"user_id": self.user_id, "call_control_id": self.call_sid}
        await self._send("stop", {"stop": stop})

    async def _playout(self, setup: _StreamSetup) -> None:
        pacer = Pacer(FRAME_SECONDS, lead=0)
        primed, waited = False, 0
        while True:
            await pacer.wait()
            if not primed:
                # A jitter buffer: start playing once 60 ms are queued, or the queue stops growing.
                waited = waited + 1 if self.playback.buffered_bytes else 0
                buffered = self.playback.buffered_bytes
                primed = buffered >= PREBUFFER_FRAMES * FRAME_BYTES or waited > PREBUFFER_FRAMES
            audio, reached = self.playback.play(FRAME_BYTES) if primed else (b"", [])
            if primed and len(audio) < FRAME_BYTES:
                primed, waited = False, 0
            heard = np.zeros(FRAME_BYTES, dtype=np.int16)
            if audio:
                pcm = setup.outbound.decode(audio)
                self.recorder.append(pcm)
                heard[: len(pcm)] = pcm
            if setup.send_outbound:
                # With track outbound_track/both_tracks Telnyx also streams what the caller hears.
                with contextlib.suppress(ConnectionClosed):
                    async with self.send_lock:
                        assert self.socket is not None
                        message = self._media_message("outbound", setup.inbound.encode(heard))
                        await self.socket.send(message)
            for name in reached:
                await self.echo_mark(name, cleared=False)

    async def echo_mark(self, name: str, *, cleared: bool) -> None:
        self.events.append({"event": "mark", "name": name, "cleared": cleared})
        with contextlib.suppress(ConnectionClosed):
            await self._send("mark", {"mark": {"name": name}})

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._reject(100003, "malformed_frame", "binary frame (Telnyx takes JSON text)")
            return
        try:
            data = json.loads(message)
        except ValueError:
            await self._reject(100003, "malformed_frame", "message is not JSON")
            return
        if not isinstance(data, dict):
            await self._reject(100003, "malformed_frame", "message is not a JSON object")
            return
        event = data.get("event")
        if event not in ("media", "mark", "clear"):
            self.protocol_error(f"unknown or missing event {event!r}")
            return
        stream_id = data.get("stream_id")
        if stream_id is not None and stream_id != self.stream_id:
            self.protocol_error(f"{event} message for another stream {stream_id!r}")
            return
        if event == "media":
            media = data.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                await self._reject(100003, "malformed_frame", "media message without payload")
                return
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except ValueError:
                await self._reject(100004, "invalid_media", "Media provided was not base64 encoded")
                return
            self.frames_received += 1
            self.frame_sizes[len(audio)] += 1
            self.playback.add_audio(audio)
        elif event == "mark":
            mark = data.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self.protocol_error("mark message without mark.name")
            else:
                await self.place_mark(self.playback, name)
        else:
            await self.clear_playback(self.playback)

    async def _reject(self, code: int, title: str, reason: str) -> None:
        """Record the problem and answer with Telnyx's ``error`` event."""
        self.protocol_error(reason)
        error = {
            "event": "error",
            "stream_id": self.stream_id,
            "payload": {"code": code, "title": title, "detail": reason},
        }
        assert self.socket is not None
        with contextlib.suppress(ConnectionClosed):
            async with self.send_lock:
                await self.socket.send(json.dumps(error, separators=(",", ":")))

    def closing_events(self) -> list[dict[str, Any]]:
        events = self.bad_frame_size_events(lambda size: size == 0 or size % FRAME_BYTES != 0)
        if self.pairs_swapped:
            events.append({"event": "reordered", "pairs": self.pairs_swapped})
        return events
