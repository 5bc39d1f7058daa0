"""Twilio Media Streams: voice webhook, TwiML ``<Connect><Stream>`` and the media-socket adapter.

Wire format: ``/work/shared/PROTOCOLS.md`` §2. Twilio's bidirectional streams carry only μ-law
(PCMU) at 8 kHz, so every stream this provider opens uses that codec.
"""

from __future__ import annotations

import binascii
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from callbridge import hookimpl
from callbridge.plugin_types import ProviderPlugin
from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    DtmfIn,
    MarkEcho,
    Markup,
    PluginContext,
    Route,
    SocketChannel,
    StreamEvent,
    StreamStarted,
    StreamStopped,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.simulators.twilio import simulate_twilio_call

TWILIO_CODEC = CodecSpec("PCMU", 8000)
"""The only codec a bidirectional Twilio stream carries."""

MAX_MESSAGE_CHARS = 64 * 1024
"""Media-socket messages longer than this are counted as malformed and dropped."""

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
# Webhook fields worth keeping on the call; CallToken and StirPassportToken are credentials-like.
_EXTRA_FIELDS = (
    "CallStatus",
    "ApiVersion",
    "ForwardedFrom",
    "CallerName",
    "ParentCallSid",
    "FromCountry",
    "ToCountry",
    "StirVerstat",
)
_MAX_EXTRA_CHARS = 256
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


class TwilioConfig(BaseModel):
    """Options of the ``twilio`` provider (section ``providers.twilio``)."""

    model_config = ConfigDict(extra="forbid")

    reject_message: str = Field(
        default="Sorry, this call cannot be connected.",
        description="What the caller hears (TwiML <Say>) when a call cannot be connected and "
        "no more specific message is given.",
    )
    stream_name: str | None = Field(
        default=None,
        description="Optional `name` attribute of the TwiML <Stream>; Twilio reports it as "
        "StreamName in stream status callbacks. Omitted when unset (Twilio then uses the "
        "StreamSid).",
    )


class TwilioProvider:
    """The server side of Twilio: parses the voice webhook, answers TwiML, adapts the socket.

    Satisfies :class:`callbridge.protocols.Provider`.
    """

    name = "twilio"

    def __init__(self, config: TwilioConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    def parse_webhook(self, request: WebhookRequest) -> CallInfo:
        """Read Twilio's form-encoded voice webhook (POST body or GET query).

        ``CallSid`` (``CA`` + 32 hex digits) is required; ``AccountSid``, when present, must be
        ``AC`` + 32 hex digits. ``From`` and ``To`` are kept exactly as given (E.164,
        ``client:name`` or a SIP URI).

        Raises:
            WebhookError: (400) naming the missing or malformed field.
        """
        call_sid = request.param("CallSid")
        if call_sid is None or not _CALL_SID.fullmatch(call_sid):
            raise WebhookError("CallSid is missing or malformed", 400)
        account_sid = request.param("AccountSid") or None
        if account_sid is not None and not _ACCOUNT_SID.fullmatch(account_sid):
            raise WebhookError("AccountSid is malformed", 400)
        extra = {
            name: value[:_MAX_EXTRA_CHARS]
            for name in _EXTRA_FIELDS
            if (value := request.param(name))
        }
        return CallInfo(
            provider=self.name,
            provider_call_id=call_sid,
            from_number=request.param("From") or None,
            to_number=request.param("To") or None,
            direction=request.param("Direction") or None,
            account_id=account_sid,
            extra=extra,
        )

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """``{ingest_base_url}/twilio/{ref}``: the ref travels in the path.

        Twilio does not support query strings in ``<Stream url>`` (they are dropped), so
        nothing may ride in one.
        """
        return f"{ingest_base_url.rstrip('/')}/twilio/{quote(ref, safe='')}"

    def answer_markup(self, call: CallInfo, stream_url: str, route: Route) -> Markup:
        """TwiML that opens a bidirectional stream to ``stream_url``.

        The stream carries ``<Parameter>`` elements ``callId`` (the CallSid), ``roomId``, and
        ``from``/``to`` when known; they reach the socket as ``start.customParameters``.
        ``route.codec`` is ignored: Twilio's bidirectional streams only carry PCMU at 8 kHz,
        so any other requested codec falls back to that one.
        """
        response = ET.Element("Response")
        connect = ET.SubElement(response, "Connect")
        stream = ET.SubElement(connect, "Stream", url=stream_url)
        if self.config.stream_name:
            stream.set("name", _xml_text(self.config.stream_name))
        parameters = {
            "callId": call.provider_call_id,
            "roomId": route.room_id,
            "from": call.from_number,
            "to": call.to_number,
        }
        for name, value in parameters.items():
            if value:
                ET.SubElement(stream, "Parameter", name=name, value=_xml_text(value))
        return Markup(body=_render(response), media_type="text/xml")

    def reject_markup(self, message: str) -> Markup:
        """TwiML that says ``message`` (or the configured default when empty), then hangs up."""
        response = ET.Element("Response")
        say = ET.SubElement(response, "Say")
        say.text = _xml_text(message or self.config.reject_message)
        ET.SubElement(response, "Hangup")
        return Markup(body=_render(response), media_type="text/xml")

    def open_stream(self, channel: SocketChannel) -> TwilioMediaStream:
        """Adapt an accepted Twilio media socket."""
        return TwilioMediaStream(channel)


class TwilioMediaStream:
    """A Twilio media socket as provider-neutral events and commands.

    Satisfies :class:`callbridge.protocols.MediaStream`.

    Counting rules:
        ``malformed`` counts messages that break the protocol and are dropped: binary frames,
        messages over 64 KiB, text that is not a JSON object, a missing or non-string
        ``event``, ``media``/``dtmf``/``mark`` before ``start`` or with missing or invalid
        fields (bad base64, empty payload, an unknown DTMF key), a second ``start``, and
        messages whose ``streamSid`` differs from the stream's.
        ``ignored`` counts well-formed messages with nothing for us: unknown events (Twilio
        may add some) and media of a track other than ``inbound``.

    Mark echoes of marks that were pending when :meth:`send_clear` ran are reported with
    ``cleared=True`` (Twilio echoes every pending mark on ``clear``). An echo that was
    already in flight when the clear was sent is indistinguishable and also reported as
    cleared.
    """

    def __init__(self, channel: SocketChannel) -> None:
        self.malformed = 0
        self.ignored = 0
        self._channel = channel
        self._stream_id: str | None = None
        self._provider_call_id: str | None = None
        self._media_prefix = ""
        self._stopped: StreamStopped | None = None
        self._closed = False
        self._pending_marks: Counter[str] = Counter()
        self._cleared_marks: Counter[str] = Counter()

    @property
    def stream_id(self) -> str | None:
        """Twilio's ``streamSid`` once ``start`` has been received, else ``None``."""
        return self._stream_id

    @property
    def provider_call_id(self) -> str | None:
        """Twilio's ``CallSid`` from ``start``, else ``None``."""
        return self._provider_call_id

    async def receive(self) -> StreamEvent:
        """Next event; :class:`StreamStopped` once the stream ends (then keeps returning it).

        ``connected`` is consumed silently; malformed and ignored messages are skipped.
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
            data = msgspec.json.decode(message)
        except msgspec.DecodeError:
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
            self.ignored += 1
            return None
        event: StreamEvent | None = handler(self, data)
        return event

    def _media(self, data: dict[str, Any]) -> AudioIn | None:
        media = data.get("media")
        if self._stream_id is None or not isinstance(media, dict) or self._foreign(data):
            self.malformed += 1
            return None
        track = media.get("track")
        if track is not None and track != "inbound":
            self.ignored += 1
            return None
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            self.malformed += 1
            return None
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:  # binascii.Error, and non-ASCII text
            self.malformed += 1
            return None
        return AudioIn(audio)

    def _connected(self, data: dict[str, Any]) -> None:
        # protocol/version are not checked: a new version is no reason to drop the call.
        return None

    def _start(self, data: dict[str, Any]) -> StreamStarted | None:
        start = data.get("start")
        if self._stream_id is not None or not isinstance(start, dict):
            self.malformed += 1
            return None
        stream_id = start.get("streamSid") or data.get("streamSid")
        call_id = start.get("callSid")
        parameters = start.get("customParameters") or {}
        if (
            not isinstance(stream_id, str)
            or not isinstance(call_id, str | None)
            or not isinstance(parameters, dict)
        ):
            self.malformed += 1
            return None
        self._stream_id = stream_id
        self._provider_call_id = call_id
        self._media_prefix = (
            '{"event":"media","streamSid":' + json.dumps(stream_id) + ',"media":{"payload":"'
        )
        return StreamStarted(
            stream_id=stream_id,
            provider_call_id=call_id,
            codec=TWILIO_CODEC,
            custom_parameters={str(k): str(v) for k, v in parameters.items()},
        )

    def _dtmf(self, data: dict[str, Any]) -> DtmfIn | None:
        dtmf = data.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        valid = isinstance(digit, str) and digit in _DTMF_DIGITS
        if self._stream_id is None or not valid or self._foreign(data):
            self.malformed += 1
            return None
        return DtmfIn(digit)

    def _mark(self, data: dict[str, Any]) -> MarkEcho | None:
        mark = data.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if self._stream_id is None or not isinstance(name, str) or self._foreign(data):
            self.malformed += 1
            return None
        if self._cleared_marks[name] > 0:
            self._cleared_marks[name] -= 1
            return MarkEcho(name, cleared=True)
        if self._pending_marks[name] > 0:
            self._pending_marks[name] -= 1
        return MarkEcho(name)

    def _stop(self, data: dict[str, Any]) -> StreamStopped:
        self._stopped = StreamStopped("stop")
        return self._stopped

    _handlers: ClassVar[dict[str, Callable[[TwilioMediaStream, dict[str, Any]], Any]]] = {
        "connected": _connected,
        "start": _start,
        "dtmf": _dtmf,
        "mark": _mark,
        "stop": _stop,
    }

    def _foreign(self, data: dict[str, Any]) -> bool:
        stream_id = data.get("streamSid")
        return stream_id is not None and stream_id != self._stream_id

    def _require_stream(self) -> str:
        if self._stream_id is None:
            raise RuntimeError("the Twilio stream has not started yet (no start message)")
        return self._stream_id

    async def send_audio(self, payload: bytes) -> None:
        """Send one 20 ms frame of μ-law audio (160 bytes) as a ``media`` message.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        encoded = binascii.b2a_base64(payload, newline=False).decode("ascii")
        await self._channel.send_text(self._media_prefix + encoded + '"}}')

    async def send_mark(self, name: str) -> None:
        """Ask Twilio to echo ``name`` once the audio sent before it has played.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "mark", "streamSid": self._require_stream(), "mark": {"name": name}}
        self._pending_marks[name] += 1
        await self._channel.send_text(json.dumps(message, separators=(",", ":")))

    async def send_clear(self) -> None:
        """Drop the audio Twilio has buffered but not played yet.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "clear", "streamSid": self._require_stream()}
        self._cleared_marks.update(self._pending_marks)
        self._pending_marks.clear()
        await self._channel.send_text(json.dumps(message, separators=(",", ":")))

    async def close(self) -> None:
        """Close the socket (idempotent); Twilio then runs the TwiML after ``</Connect>``."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close()


def _xml_text(value: str) -> str:
    return _XML_INVALID.sub("", value)


def _render(element: ET.Element) -> str:
    return _XML_DECLARATION + ET.tostring(element, encoding="unicode")


@hookimpl
def callbridge_providers() -> Iterator[ProviderPlugin]:
    """Register the ``twilio`` provider."""
    yield ProviderPlugin(
        name="twilio",
        factory=TwilioProvider,
        config_model=TwilioConfig,
        description="Twilio Media Streams (TwiML <Connect><Stream>)",
        simulator=simulate_twilio_call,
    )
