"""Telnyx TeXML media streaming: webhook, TeXML ``<Stream>``, Ed25519 signatures, REST hang-up
and the media-socket adapter (with a reorder buffer: Telnyx may deliver frames out of order).

Wire format: ``/work/shared/PROTOCOLS.md`` §4. Streams are bidirectional in ``rtp`` mode
(Telnyx's default ``mp3`` mode would treat our raw audio as MP3 files), in PCMU or PCMA at
8 kHz.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from callbridge import hookimpl
from callbridge.media.arrivals import FrameArrivals
from callbridge.media.reorder import ReorderBuffer
from callbridge.plugin_types import ProviderPlugin
from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    CredentialsError,
    DtmfIn,
    HangupResult,
    HangupTarget,
    Markup,
    PluginContext,
    ProviderCredentials,
    Route,
    SocketChannel,
    StreamEvent,
    StreamOptions,
    StreamStarted,
    StreamStopped,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers._markup import render, speak_and_hang_up, xml_text
from callbridge_plugins.providers._rest import API_TIMEOUT_SECONDS as API_TIMEOUT_SECONDS
from callbridge_plugins.providers._rest import RestClient
from callbridge_plugins.providers._stream import (
    DTMF_DIGITS,
    MAX_MESSAGE_CHARS,
    JsonMediaStream,
    PendingMarks,
    wire_counter,
)
from callbridge_plugins.providers._webhook import MAX_PARAM_CHARS, kept_params
from callbridge_plugins.simulators.telnyx import simulate_telnyx_call

log = structlog.get_logger("callbridge.providers.telnyx")

PCMU = CodecSpec("PCMU", 8000)
PCMA = CodecSpec("PCMA", 8000)
MARKUP_STYLES = ("connect", "start")
"""``connect``: ``<Connect><Stream>``, the call ends with the stream. ``start``:
``<Start><Stream>`` + ``<Pause>``, the call outlives the stream (callbridge hangs up by REST)."""

SIGNATURE_TOLERANCE_SECONDS = 300
"""Largest accepted distance between ``telnyx-timestamp`` and now (the Telnyx SDK default)."""
PAUSE_SECONDS = 86400
"""``<Pause length>`` that keeps a ``start``-style call up while the stream runs."""
ALREADY_ENDED_CODE = "90018"
"""Telnyx error code of a hang-up for a call that has already ended (HTTP 422)."""

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"

_CODECS = {"PCMU": PCMU, "PCMA": PCMA}
# Printable ASCII, no spaces: Telnyx call-control ids look like ``v3:u5OAKGEPT3Dx8SZSS…``.
_CALL_ID = re.compile(r"[\x21-\x7e]{1,256}")
_E164_DIGITS = re.compile(r"\+?([1-9][0-9]{6,14})")
_COUNTER = re.compile(r"[0-9]{1,18}")
_EXTRA_FIELDS = ("CallSidLegacy", "CallStatus", "ConnectionId", "ApiVersion", "CallerName")
_MAX_EARLY_EVENTS = 50
_LOGGED_ERRORS = 5


class TelnyxConfig(BaseModel):
    """Options of the ``telnyx`` provider (section ``providers.config.telnyx``)."""

    model_config = ConfigDict(extra="forbid")

    markup_style: Literal["connect", "start"] = Field(
        default="connect",
        description="TeXML answer style when the connector sets none: `connect` "
        "(<Connect><Stream>; the call ends with the stream) or `start` (<Start><Stream> plus "
        "<Pause>, as VideoSDK emits; callbridge hangs the call up by REST when the stream "
        "ends, so the connector needs credentials).",
    )
    api_base_url: str = Field(
        default="https://api.telnyx.com",
        description="Base URL of the Telnyx REST API used for hang-ups; tests point it at a "
        "fake API.",
    )
    reject_message: str = Field(
        default="Sorry, this call cannot be connected.",
        description="What the caller hears (TeXML <Say>) when a call cannot be connected and "
        "no more specific message is given.",
    )
    reorder_depth: int = Field(
        default=4,
        ge=1,
        le=50,
        description="How many later media frames to wait for a missing one before giving up "
        "on it (Telnyx does not guarantee frame order); each step adds up to 20 ms of delay "
        "only while a frame is missing.",
    )


class TelnyxProvider(RestClient):
    """The server side of Telnyx TeXML: parses the webhook, answers TeXML, checks Ed25519
    signatures, adapts the media socket and hangs up through the Call Control API.

    Satisfies :class:`callbridge.protocols.Provider`.
    """

    name = "telnyx"
    supported_codecs = (PCMU, PCMA)
    credential_fields = ("apiKey", "publicKey")
    # base64 of 32 bytes, as validate_credentials accepts it
    credential_patterns: Mapping[str, str] = {"publicKey": r"^[A-Za-z0-9+/]{43}=$"}
    echoes_marks_on_clear = True

    def __init__(self, config: TelnyxConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.markup_styles: tuple[str, ...] = (
            config.markup_style,
            *(style for style in MARKUP_STYLES if style != config.markup_style),
        )

    # ------------------------------------------------------------------ webhook and markup

    def parse_webhook(self, request: WebhookRequest) -> CallInfo:
        """Read Telnyx's TeXML instruction fetch (POST form body or GET query).

        ``CallSid`` (the ``v3:…`` call-control id, used for the REST hang-up) is required.
        ``From``/``To`` digits are normalised to E.164 (``+`` added when missing); SIP URIs
        and other identities are kept as given. ``AccountSid`` becomes ``account_id``;
        ``CallSidLegacy``, ``CallStatus``, ``ConnectionId``, ``ApiVersion`` and ``CallerName``
        are kept in ``extra``.

        Raises:
            WebhookError: (400) naming ``CallSid`` when it is missing or malformed.
        """
        call_sid = request.param("CallSid")
        if call_sid is None or not _CALL_ID.fullmatch(call_sid):
            raise WebhookError("CallSid is missing or malformed", 400)
        return CallInfo(
            provider=self.name,
            provider_call_id=call_sid,
            from_number=_e164(request.param("From")),
            to_number=_e164(request.param("To")),
            direction=request.param("Direction") or None,
            account_id=(request.param("AccountSid") or "")[:MAX_PARAM_CHARS] or None,
            extra=kept_params(request, _EXTRA_FIELDS),
        )

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """``{ingest_base_url}/telnyx/{ref}``: the ref travels in the path."""
        return f"{ingest_base_url.rstrip('/')}/telnyx/{quote(ref, safe='')}"

    def markup_style(self, options: StreamOptions) -> str:
        """The style in effect: the connector's (``options.markup_style``), else the YAML one."""
        style = options.markup_style
        if style is None:
            return self.config.markup_style
        if style not in MARKUP_STYLES:
            log.warning("unknown markup style; using the configured one", markup_style=style)
            return self.config.markup_style
        return style

    def answer_markup(
        self, call: CallInfo, stream_url: str, route: Route, options: StreamOptions
    ) -> Markup:
        """TeXML that opens a bidirectional ``rtp`` stream to ``stream_url``.

        ``connect`` style::

            <Response><Connect><Stream url="…" bidirectionalMode="rtp" bidirectionalCodec="PCMU"
              bidirectionalSamplingRate="8000" codec="PCMU" track="inbound_track"
              enableReconnect="false"/></Connect></Response>

        ``start`` style: the same ``<Stream>`` inside ``<Start>``, followed by
        ``<Pause length="86400"/>`` so the call stays up while the stream runs.

        ``codec`` (what Telnyx sends) and ``bidirectionalCodec`` (what we send) are both
        ``options.codec``. ``track`` is ``inbound_track``: ``both_tracks`` would add
        ``outbound`` frames, which the socket adapter drops anyway. ``enableReconnect`` is off
        because the ref in the URL is single-use.
        """
        codec = options.codec if options.codec in self.supported_codecs else PCMU
        response = ET.Element("Response")
        style = self.markup_style(options)
        verb = ET.SubElement(response, "Connect" if style == "connect" else "Start")
        ET.SubElement(
            verb,
            "Stream",
            {
                "url": xml_text(stream_url),
                "bidirectionalMode": "rtp",
                "bidirectionalCodec": codec.name,
                "bidirectionalSamplingRate": str(codec.sample_rate),
                "codec": codec.name,
                "track": "inbound_track",
                "enableReconnect": "false",
            },
        )
        if style == "start":
            ET.SubElement(response, "Pause", length=str(PAUSE_SECONDS))
        return Markup(body=render(response), media_type="text/xml")

    def reject_markup(self, message: str) -> Markup:
        """TeXML that says ``message`` (or the configured default when empty), then hangs up."""
        return speak_and_hang_up("Say", message or self.config.reject_message, "text/xml")

    def call_ends_with_stream(self, options: StreamOptions) -> bool:
        """``connect``: yes (no verb follows ``</Connect>``). ``start``: no, the ``<Pause>``
        keeps the call up, so the bridge hangs up by REST when the stream ends."""
        return self.markup_style(options) == "connect"

    # ------------------------------------------------------------------ signatures

    def validate_credentials(self, values: Mapping[str, str]) -> None:
        """``publicKey`` must be a base64 32-byte Ed25519 public key (Mission Control → Keys &
        Credentials → Public Key); otherwise every signed webhook would be refused.

        Raises:
            CredentialsError: naming ``publicKey``.
        """
        if _public_key(values.get("publicKey")) is None:
            raise CredentialsError("publicKey", "expected a base64 32-byte Ed25519 public key")

    def verify_webhook(self, request: WebhookRequest, credentials: ProviderCredentials) -> None:
        """Check Telnyx's Ed25519 signature over ``"{telnyx-timestamp}|{raw body}"``.

        The key is the connector's ``publicKey`` (base64, 32 bytes: Mission Control → Keys &
        Credentials → Public Key). The timestamp must be within 300 s of the server clock,
        either way. A GET fetch has no body, so its signature covers ``"{timestamp}|"`` only
        and not the query parameters: configure the TeXML application to fetch by POST.

        Raises:
            WebhookError: (403) with the reason: missing headers, a malformed or stale
                timestamp, an invalid ``publicKey``, or a signature that does not verify.
        """
        signature_b64 = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature_b64 or not timestamp:
            raise WebhookError(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header", 403)
        if not _COUNTER.fullmatch(timestamp):
            raise WebhookError(f"{TIMESTAMP_HEADER} is not Unix seconds", 403)
        skew = abs(self.context.clock() - int(timestamp))
        if skew > SIGNATURE_TOLERANCE_SECONDS:
            raise WebhookError(
                f"{TIMESTAMP_HEADER} is {int(skew)} s away from now "
                f"(tolerance {SIGNATURE_TOLERANCE_SECONDS} s)",
                403,
            )
        public_key = _public_key(credentials.get("publicKey"))
        if public_key is None:
            raise WebhookError("credentials.publicKey is not a base64 32-byte Ed25519 key", 403)
        signature = _b64decode(signature_b64)
        if signature is None or len(signature) != 64:
            raise WebhookError(f"{SIGNATURE_HEADER} is not a base64 64-byte signature", 403)
        try:
            public_key.verify(signature, timestamp.encode("ascii") + b"|" + request.body)
        except InvalidSignature:
            raise WebhookError(f"{SIGNATURE_HEADER} does not match the request", 403) from None

    def verify_handshake(
        self, public_url: str, headers: Mapping[str, str], credentials: ProviderCredentials
    ) -> None:
        """Accept: Telnyx documents no signature on the media-socket handshake. The
        single-use, unguessable ref in the URL path authenticates the socket."""
        return None

    # ------------------------------------------------------------------ media socket

    def open_stream(self, channel: SocketChannel, options: StreamOptions) -> TelnyxMediaStream:
        """Adapt an accepted Telnyx media socket."""
        return TelnyxMediaStream(channel, options, reorder_depth=self.config.reorder_depth)

    # ------------------------------------------------------------------ REST

    async def hangup(self, target: HangupTarget, credentials: ProviderCredentials) -> HangupResult:
        """End the call through the Call Control API (works for TeXML calls too).

        Sends ``POST {api_base_url}/v2/calls/{call_control_id}/actions/hangup`` with
        ``Authorization: Bearer {apiKey}`` and the JSON body ``{}``. 2xx is success; 422 with
        an error code ``90018`` means the call had already ended, which is success too.
        Anything else, or a request that fails, is returned as not ``ok``. Never raises.
        """
        api_key = credentials.get("apiKey")
        if not api_key:
            return HangupResult(ok=False, detail="credentials: apiKey is required")
        url = (
            f"{self.config.api_base_url.rstrip('/')}/v2/calls/"
            f"{quote(target.provider_call_id, safe=':')}/actions/hangup"
        )
        return await self._hangup_request(
            "POST", url, _hangup_refusal, json={}, headers={"Authorization": f"Bearer {api_key}"}
        )


class TelnyxMediaStream(JsonMediaStream):
    """A Telnyx media socket as provider-neutral events and commands.

    Satisfies :class:`callbridge.protocols.MediaStream`. ``stream_id`` is Telnyx's
    ``stream_id`` and ``provider_call_id`` the ``start.call_control_id``, both from ``start``;
    ``connected`` is consumed silently. With ``enableReconnect="false"`` Telnyx does not
    reconnect a closed socket; in ``connect`` style it then runs the TeXML after
    ``</Connect>`` (none).

    Inbound media is put back in order by ``media.chunk`` (else ``sequence_number``) through a
    :class:`~callbridge.media.reorder.ReorderBuffer`; what it still holds is released when the
    stream stops. Media that arrives before ``start`` (delivery order is not guaranteed) is
    kept, up to 50 events, and delivered after :class:`StreamStarted`. Each frame is observed
    by :attr:`arrivals` as it comes off the wire, before the buffer, so the call's figures
    count the frames that arrived out of order (and late) although the bridge receives them in
    order; its sequence is ``media.chunk`` only (``sequence_number`` also counts DTMF and
    marks, whose numbers would look like lost frames).

    Counters:
        ``malformed``: messages that break the protocol and are dropped: binary frames,
        messages over 64 KiB, text that is not a JSON object, a missing or non-string
        ``event``, ``media``/``dtmf``/``mark`` with missing or invalid fields (bad base64, no
        usable ``chunk``/``sequence_number``, an unknown DTMF key), ``mark`` before ``start``,
        a second ``start``, messages naming another ``stream_id``, and early events beyond
        the limit.
        ``ignored``: well-formed messages with nothing for us: unknown events and media of a
        track other than ``inbound``.
        ``errors``: Telnyx ``error`` events (logged; the call goes on).
        ``reorder``: the buffer, with its ``dropped`` (late, duplicate) and ``missing`` counts.
        ``arrivals``: lost, reordered, duplicate and late frames and jitter, as they arrived.

    Mark echoes of marks that were pending when :meth:`send_clear` ran are reported with
    ``cleared=True`` (Telnyx echoes every pending mark on ``clear``).
    """

    _stream_id_field = "stream_id"
    _label = "Telnyx"

    def __init__(
        self,
        channel: SocketChannel,
        options: StreamOptions,
        *,
        reorder_depth: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(channel)
        self.errors = 0
        self.reorder: ReorderBuffer[AudioIn] = ReorderBuffer(reorder_depth)
        self.arrivals = FrameArrivals()
        self._clock = clock
        self._options = options
        self._codec = options.codec
        self._ready: deque[StreamEvent] = deque()
        self._early: list[StreamEvent] = []
        self._marks = PendingMarks()

    @property
    def codec(self) -> CodecSpec:
        """The stream's codec: ``start.media_format.encoding`` when given, else the option's."""
        return self._codec

    async def receive(self) -> StreamEvent:
        """Next event; :class:`StreamStopped` once the stream ends (then keeps returning it).

        What the reorder buffer holds is delivered before the stop; malformed and ignored
        messages are skipped.
        """
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._stopped is not None:
                return self._stopped
            message = await self._channel.receive()
            if message is None:
                self._finish(StreamStopped("closed"))
            elif not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
                self.malformed += 1
            else:
                self._parse(message)

    def _finish(self, stopped: StreamStopped) -> None:
        if self._stream_id is not None:
            self._ready.extend(self.reorder.flush())
        self._stopped = stopped

    def _emit(self, event: StreamEvent) -> None:
        if self._stream_id is not None:
            self._ready.append(event)
        elif len(self._early) < _MAX_EARLY_EVENTS:
            self._early.append(event)
        else:
            self.malformed += 1

    def _media(self, data: dict[str, Any]) -> None:
        media = data.get("media")
        if not isinstance(media, dict) or self._foreign(data):
            self.malformed += 1
            return
        audio = self._inbound_audio(media)
        if audio is None:
            return
        chunk = wire_counter(media.get("chunk"))
        seq = chunk if chunk is not None else wire_counter(data.get("sequence_number"))
        if seq is None:
            self.malformed += 1
            return
        self.arrivals.observe(chunk, self._clock())
        for released in self.reorder.push(seq, AudioIn(audio, chunk)):
            self._emit(released)

    def _connected(self, data: dict[str, Any]) -> None:
        # The version is not checked: a new version is no reason to drop the call.
        return None

    def _start(self, data: dict[str, Any]) -> None:
        start = data.get("start")
        if self._stream_id is not None or not isinstance(start, dict):
            self.malformed += 1
            return
        stream_id = data.get("stream_id") or start.get("stream_id")
        call_id = start.get("call_control_id")
        if not isinstance(stream_id, str) or not isinstance(call_id, str | None):
            self.malformed += 1
            return
        self._codec = self._stream_codec(start.get("media_format"))
        self._stream_id = stream_id
        self._provider_call_id = call_id
        self._ready.append(
            StreamStarted(
                stream_id=stream_id,
                provider_call_id=call_id,
                codec=self._codec,
                custom_parameters=_custom_parameters(start.get("custom_parameters")),
            )
        )
        self._ready.extend(self._early)
        self._early.clear()

    def _stream_codec(self, media_format: Any) -> CodecSpec:
        wanted = self._options.codec
        encoding = media_format.get("encoding") if isinstance(media_format, dict) else None
        if encoding is None:
            return wanted
        codec = _CODECS.get(str(encoding).upper())
        rate = media_format.get("sample_rate", 8000)
        if codec is None or str(rate) != str(codec.sample_rate):
            log.warning(
                "Telnyx stream encoding not supported; decoding as the requested codec",
                encoding=str(encoding)[:32],
                sample_rate=str(rate)[:16],
                requested=wanted.name,
            )
            return wanted
        if codec != wanted:
            # media_format says what Telnyx really sends; the bridge uses one codec both ways.
            log.warning(
                "Telnyx stream encoding differs from the requested codec; using Telnyx's",
                encoding=codec.name,
                requested=wanted.name,
            )
        return codec

    def _dtmf(self, data: dict[str, Any]) -> None:
        dtmf = data.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or digit not in DTMF_DIGITS or self._foreign(data):
            self.malformed += 1
            return
        self._emit(DtmfIn(digit))

    def _mark(self, data: dict[str, Any]) -> None:
        mark = data.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if self._stream_id is None or not isinstance(name, str) or self._foreign(data):
            self.malformed += 1
            return
        self._ready.append(self._marks.echo(name))

    def _error(self, data: dict[str, Any]) -> None:
        payload = data.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        self.errors += 1
        # Telnyx may answer every frame we send with an error: log the first few, then samples.
        if self.errors > _LOGGED_ERRORS and self.errors % 100:
            return
        log.warning(
            "Telnyx media stream error",
            errors=self.errors,
            code=str(payload.get("code", ""))[:16],
            title=str(payload.get("title", ""))[:64],
            detail=str(payload.get("detail", ""))[:200],
        )

    def _stop_and_flush(self, data: dict[str, Any]) -> None:
        self._finish(StreamStopped("stop"))

    _handlers: ClassVar[dict[str, Callable[[TelnyxMediaStream, dict[str, Any]], None]]] = {
        "connected": _connected,
        "start": _start,
        "dtmf": _dtmf,
        "mark": _mark,
        "error": _error,
        "stop": _stop_and_flush,
    }

    def _foreign(self, data: dict[str, Any]) -> bool:
        # Media and DTMF may come before start: until then no stream id is foreign.
        stream_id = data.get("stream_id")
        return (
            stream_id is not None and self._stream_id is not None and stream_id != self._stream_id
        )

    def send_audio(self, payload: bytes) -> None:
        """Send one 20 ms frame (160 bytes of PCMU or PCMA) as ``{"event":"media",...}``."""
        encoded = binascii.b2a_base64(payload, newline=False).decode("ascii")
        self._channel.send_text(
            '{"event":"media","media":{"payload":"' + encoded + '"}}', droppable=True
        )

    def send_mark(self, name: str) -> None:
        """Ask Telnyx to echo ``name`` once the audio sent before it has played."""
        self._marks.sent(name)
        message = {"event": "mark", "mark": {"name": name}}
        self._channel.send_text(json.dumps(message, separators=(",", ":")))

    def send_clear(self) -> None:
        """Stop playback and drop what Telnyx has queued; it echoes every pending mark."""
        self._marks.clear()
        self._channel.drop_pending()
        self._channel.send_text('{"event":"clear"}')


def _custom_parameters(value: Any) -> dict[str, str]:
    # The JSON key and shape of <Parameter> values in `start` are unconfirmed (PROTOCOLS §4.2):
    # accept an object, or Call Control's list of {name, value}.
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {
            str(item["name"]): str(item.get("value", ""))
            for item in value
            if isinstance(item, dict) and "name" in item
        }
    return {}


def _e164(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    match = _E164_DIGITS.fullmatch(value)
    return f"+{match.group(1)}" if match else value


def _b64decode(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _public_key(value: str | None) -> Ed25519PublicKey | None:
    raw = _b64decode(value)
    if raw is None or len(raw) != 32:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def _hangup_refusal(response: httpx.Response) -> tuple[bool, str]:
    codes, detail = _error_codes(response)
    return response.status_code == 422 and ALREADY_ENDED_CODE in codes, detail


def _error_codes(response: httpx.Response) -> tuple[set[str], str]:
    try:
        body = response.json()
    except ValueError:
        return set(), f"HTTP {response.status_code}"
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set(), f"HTTP {response.status_code}"
    codes = {str(e.get("code")) for e in errors if isinstance(e, dict) and "code" in e}
    titles = [str(e.get("title", ""))[:80] for e in errors if isinstance(e, dict)]
    listed = "; ".join(sorted(codes))
    return codes, f"HTTP {response.status_code} {listed} {' / '.join(titles)}".strip()


@hookimpl
def callbridge_providers() -> Iterator[ProviderPlugin]:
    """Register the ``telnyx`` provider."""
    yield ProviderPlugin(
        name="telnyx",
        factory=TelnyxProvider,
        config_model=TelnyxConfig,
        description="Telnyx TeXML media streaming (<Connect>/<Start><Stream>, rtp mode)",
        simulator=simulate_telnyx_call,
    )
