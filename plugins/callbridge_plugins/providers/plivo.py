"""Plivo Audio Streaming: answer-URL request, Plivo XML ``<Stream>``, the media-socket adapter,
``X-Plivo-Signature-V3`` checks and the REST hang-up.

Wire format: ``/work/shared/PROTOCOLS.md`` §3. Plivo streams μ-law at 8 kHz or little-endian
L16 at 8 or 16 kHz, as the XML's ``contentType`` asks; it sends no ``connected`` message, counts
with JSON numbers, answers ``checkpoint`` with ``playedStream`` only once the audio really
played, and confirms ``clearAudio`` with ``clearedAudio``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlparse, urlunparse

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from callbridge import hookimpl, safe_json
from callbridge.plugin_types import ProviderPlugin
from callbridge.protocols import (
    CallInfo,
    ClearDone,
    CodecSpec,
    HangupResult,
    HangupTarget,
    MarkEcho,
    Markup,
    PluginContext,
    PluginError,
    ProviderCredentials,
    Route,
    SocketChannel,
    StreamOptions,
    StreamStarted,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers._markup import render, speak_and_hang_up
from callbridge_plugins.providers._rest import RestClient
from callbridge_plugins.providers._stream import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
from callbridge_plugins.providers._stream import JsonMediaStream
from callbridge_plugins.providers._webhook import is_form, kept_params
from callbridge_plugins.simulators.plivo import simulate_plivo_call

log = structlog.get_logger("callbridge.providers.plivo")

PLIVO_CODECS = (CodecSpec("PCMU", 8000), CodecSpec("L16", 8000), CodecSpec("L16", 16000))
"""What a Plivo stream can carry; the first is the default."""

CONTENT_TYPES: dict[CodecSpec, str] = {
    CodecSpec("PCMU", 8000): "audio/x-mulaw;rate=8000",
    CodecSpec("L16", 8000): "audio/x-l16;rate=8000",
    CodecSpec("L16", 16000): "audio/x-l16;rate=16000",
}
"""The XML ``contentType`` of each supported codec."""

SIGNATURE_HEADER = "x-plivo-signature-v3"
MAIN_ACCOUNT_SIGNATURE_HEADER = "x-plivo-signature-ma-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"

_ENCODINGS = {"audio/x-mulaw": "PCMU", "audio/x-l16": "L16"}
_MEDIA_TYPES = {"PCMU": "audio/x-mulaw", "L16": "audio/x-l16"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"\+?([1-9][0-9]{1,14})")
_EXTRA_FIELDS = ("CallStatus", "ForwardedFrom", "CallerName", "ALegUUID", "ALegRequestUUID")
_MAX_NONCE_CHARS = 128
_MAX_EXTRA_HEADERS_CHARS = 4096
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class PlivoConfig(BaseModel):
    """Options of the ``plivo`` provider (section ``providers.config.plivo``)."""

    model_config = ConfigDict(extra="forbid")

    api_base_url: str = Field(
        default="https://api.plivo.com",
        description="Base URL of Plivo's REST API, used for hang-ups "
        "(DELETE {api_base_url}/v1/Account/{authId}/Call/{CallUUID}/). Tests point it at a "
        "local fake.",
    )
    api_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of one REST request to Plivo (connect, read and write each).",
    )
    reject_message: str = Field(
        default="Sorry, this call cannot be connected.",
        description="What the caller hears (Plivo XML <Speak>) when a call cannot be connected "
        "and no more specific message is given.",
    )
    nonce_ttl_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a signature nonce is remembered; a signed request reusing a "
        "remembered nonce is refused as a replay.",
    )
    nonce_cache_size: int = Field(
        default=100_000,
        ge=1,
        description="Most nonces remembered at once; the oldest are forgotten first.",
    )


# --------------------------------------------------------------------------- signatures


def v3_signing_string(method: str, url: str, params: Mapping[str, list[str]] | None = None) -> str:
    """The string Plivo's V3 signature covers, before ``.`` + nonce (PROTOCOLS §3.5).

    ``url`` is the exact public URL (its query included); ``params`` are the POST body
    parameters (ignored for GET, whose parameters ride in the query). Built exactly as the
    official SDKs do, ``?`` and ``.`` separators included; values are decoded, never re-encoded.
    """
    # urlparse (not urlsplit), as the SDK: it cuts ";params" off the last path segment.
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    query = parse_qs(parts.query, keep_blank_values=True)
    query_text = "&".join(f"{key}={value}" for key in sorted(query) for value in sorted(query[key]))
    if method.upper() == "GET" or not params:
        return f"{base}?{query_text}" if query_text else base
    head = f"{base}?{query_text}." if query_text else f"{base}?"
    return head + "".join(key + value for key in sorted(params) for value in sorted(params[key]))


def v3_signature(auth_token: str, signing_string: str, nonce: str) -> str:
    """base64(HMAC-SHA256(auth_token, ``signing_string + "." + nonce``))."""
    message = f"{signing_string}.{nonce}".encode()
    digest = hmac.new(auth_token.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class NonceCache:
    """Nonces of accepted signed requests, remembered for ``ttl`` seconds, at most ``size``."""

    def __init__(self, clock: Callable[[], float], ttl: float, size: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, nonce: str) -> bool:
        """Whether ``nonce`` was remembered and has not expired."""
        self._expire()
        return nonce in self._seen

    def remember(self, nonce: str) -> None:
        """Remember ``nonce`` until ``ttl`` from now, forgetting the oldest when full."""
        self._seen[nonce] = self._clock() + self._ttl
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        while self._seen:
            nonce, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[nonce]


# --------------------------------------------------------------------------- provider


class PlivoProvider(RestClient):
    """The server side of Plivo: parses the answer-URL request, answers Plivo XML, adapts the
    media socket, checks V3 signatures and hangs up by REST.

    Satisfies :class:`callbridge.protocols.Provider`.
    """

    name = "plivo"
    supported_codecs = PLIVO_CODECS
    markup_styles = ()
    credential_fields = ("authId", "authToken")
    credential_patterns: Mapping[str, str] = {}
    echoes_marks_on_clear = False

    def __init__(self, config: PlivoConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.nonces = NonceCache(context.clock, config.nonce_ttl_seconds, config.nonce_cache_size)

    def parse_webhook(self, request: WebhookRequest) -> CallInfo:
        """Read Plivo's answer-URL request (POST form body or GET query).

        ``CallUUID`` (a UUID) is required. ``From`` and ``To`` become E.164: Plivo may write
        numbers without ``+`` (``14155550100`` → ``+14155550100``); anything that is not a
        number (``sip:`` URIs, ``anonymous``) is kept as given. The webhook names no account,
        so ``account_id`` is ``None`` (a hang-up uses the credentials' ``authId``).

        Raises:
            WebhookError: (400) naming the missing or malformed field.
        """
        call_uuid = request.param("CallUUID")
        if call_uuid is None or not _UUID.fullmatch(call_uuid):
            raise WebhookError("CallUUID is missing or malformed", 400)
        return CallInfo(
            provider=self.name,
            provider_call_id=call_uuid,
            from_number=_e164(request.param("From")),
            to_number=_e164(request.param("To")),
            direction=request.param("Direction") or None,
            account_id=None,
            extra=kept_params(request, _EXTRA_FIELDS),
        )

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """``{ingest_base_url}/plivo/{ref}``: the ref travels in the path."""
        return f"{ingest_base_url.rstrip('/')}/plivo/{quote(ref, safe='')}"

    def answer_markup(
        self, call: CallInfo, stream_url: str, route: Route, options: StreamOptions
    ) -> Markup:
        """Plivo XML that opens a bidirectional stream to ``stream_url`` (PROTOCOLS §3.2).

        ``<Stream bidirectional="true" audioTrack="inbound" keepCallAlive="true"
        contentType="…">URL</Stream>``: the URL is the element's text (``&`` escaped, no
        surrounding whitespace) and ``contentType`` names ``options.codec``; nothing follows
        the stream, so the call ends when it does.

        Raises:
            PluginError: ``options.codec`` is not one of ``supported_codecs``.
        """
        content_type = CONTENT_TYPES.get(options.codec)
        if content_type is None:
            raise PluginError(
                f"plivo cannot stream {options.codec.name}/{options.codec.sample_rate}"
            )
        response = ET.Element("Response")
        stream = ET.SubElement(
            response,
            "Stream",
            bidirectional="true",
            audioTrack="inbound",
            keepCallAlive="true",
            contentType=content_type,
        )
        stream.text = stream_url
        return Markup(body=render(response), media_type="application/xml")

    def reject_markup(self, message: str) -> Markup:
        """``<Response><Speak>message</Speak><Hangup/></Response>`` (the configured default
        message when ``message`` is empty)."""
        return speak_and_hang_up("Speak", message or self.config.reject_message, "application/xml")

    def call_ends_with_stream(self, options: StreamOptions) -> bool:
        """Nothing follows ``<Stream>`` in the XML, so the call ends with the stream."""
        return True

    def open_stream(self, channel: SocketChannel, options: StreamOptions) -> PlivoMediaStream:
        """Adapt an accepted Plivo media socket carrying ``options.codec``."""
        return PlivoMediaStream(channel, options.codec)

    def validate_credentials(self, values: Mapping[str, str]) -> None:
        """Nothing beyond presence: Plivo's ids and tokens are only checked by Plivo."""

    def verify_webhook(self, request: WebhookRequest, credentials: ProviderCredentials) -> None:
        """Check ``X-Plivo-Signature-V3`` over the public URL and, for POST, the form body.

        The signature is keyed with ``authToken``; a match in ``X-Plivo-Signature-Ma-V3``
        (signed with the main account's token) is accepted too, for connectors holding the
        main account's credentials. A nonce already accepted within ``nonce_ttl_seconds`` is
        refused as a replay.

        Raises:
            WebhookError: (403) with the reason.
        """
        params: dict[str, list[str]] = {}
        if request.method.upper() == "POST" and is_form(request):
            params = parse_qs(
                request.body.decode("utf-8", errors="replace"), keep_blank_values=True
            )
        signing_string = v3_signing_string(request.method, request.public_url, params)
        self._verify([signing_string], request.headers, credentials)

    def verify_handshake(
        self, public_url: str, headers: Mapping[str, str], credentials: ProviderCredentials
    ) -> None:
        """Check the V3 signature of the media-socket upgrade.

        Plivo's official stream SDK validates the upgrade as a GET over the ``https://`` form
        of the URL (``ws`` → ``http``, ``wss`` → ``https``) with no parameters; that is what is
        checked first. A signature over the URL exactly as written in the XML (``wss://``) is
        accepted too, since which form Plivo signs is unconfirmed against live traffic.

        Raises:
            WebhookError: (403) with the reason.
        """
        parts = urlparse(public_url)
        http_url = urlunparse(parts._replace(scheme=_HTTP_SCHEMES.get(parts.scheme, parts.scheme)))
        candidates = [v3_signing_string("GET", http_url)]
        if http_url != public_url:
            candidates.append(v3_signing_string("GET", public_url))
        self._verify(candidates, headers, credentials)

    def _verify(
        self,
        signing_strings: list[str],
        headers: Mapping[str, str],
        credentials: ProviderCredentials,
    ) -> None:
        try:
            token = credentials.require("authToken")
        except PluginError as exc:
            raise WebhookError(str(exc), 403) from None
        offered = [
            part.strip()
            for name in (SIGNATURE_HEADER, MAIN_ACCOUNT_SIGNATURE_HEADER)
            for part in (headers.get(name) or "").split(",")
            if part.strip()
        ]
        nonce = headers.get(NONCE_HEADER) or ""
        if not headers.get(SIGNATURE_HEADER):
            raise WebhookError("X-Plivo-Signature-V3 header is missing", 403)
        if not nonce or len(nonce) > _MAX_NONCE_CHARS:
            raise WebhookError("X-Plivo-Signature-V3-Nonce header is missing or too long", 403)
        expected = [v3_signature(token, text, nonce).encode() for text in signing_strings]
        # Compare every pair, without stopping early, so timing says nothing about which failed.
        matched = False
        for signature in offered:
            for candidate in expected:
                matched |= hmac.compare_digest(signature.encode(), candidate)
        if not matched:
            raise WebhookError("X-Plivo-Signature-V3 does not match", 403)
        if self.nonces.seen(nonce):
            raise WebhookError("nonce replayed", 403)
        self.nonces.remember(nonce)

    async def hangup(self, target: HangupTarget, credentials: ProviderCredentials) -> HangupResult:
        """``DELETE {api_base_url}/v1/Account/{authId}/Call/{CallUUID}/`` with HTTP Basic auth.

        204 (any 2xx) means hung up; 404 means the call had already ended (both ``ok``).
        Never raises: a missing credential or a failed request is a result with ``ok=False``.
        """
        auth_id, auth_token = credentials.get("authId"), credentials.get("authToken")
        if not auth_id or not auth_token:
            return HangupResult(ok=False, detail="credentials need authId and authToken")
        url = (
            f"{self.config.api_base_url.rstrip('/')}/v1/Account/{quote(auth_id, safe='')}"
            f"/Call/{quote(target.provider_call_id, safe='')}/"
        )
        return await self._hangup_request(
            "DELETE", url, _hangup_refusal, success_detail="hung up", auth=(auth_id, auth_token)
        )

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.config.api_timeout_seconds,
            headers={"User-Agent": "callbridge"},
        )


# --------------------------------------------------------------------------- media socket


class PlivoMediaStream(JsonMediaStream):
    """A Plivo media socket as provider-neutral events and commands.

    Satisfies :class:`callbridge.protocols.MediaStream`. ``stream_id`` is Plivo's ``streamId``
    and ``provider_call_id`` its ``callId`` (the CallUUID), both from ``start``. Plivo's usual
    end is a socket close (reason ``closed``); with nothing after ``<Stream>``, closing the
    socket ends the call. Each frame's ``media.chunk`` is its
    :attr:`~callbridge.protocols.AudioIn.sequence` (``None`` when missing or not a number).

    Audio flows in the codec the XML asked for; if ``start.mediaFormat`` names another
    supported codec, the ``start`` is trusted (and the disagreement logged), since that is what
    Plivo actually sends.

    Counting rules:
        ``malformed`` counts messages that break the protocol and are dropped: binary frames,
        messages over 64 KiB, text that is not a JSON object, a missing or non-string
        ``event``, ``media``/``dtmf``/``playedStream``/``clearedAudio`` before ``start`` or
        with missing or invalid fields (bad base64, empty payload, an unknown DTMF key, a
        checkpoint name that is not a string), a second ``start``, and messages whose
        ``streamId`` differs from the stream's.
        ``ignored`` counts well-formed messages with nothing for us: ``playFailed``,
        ``error``, ``muteStream``, ``unmuteStream``, unknown events, and media of a track
        other than ``inbound``.
    """

    _stream_id_field = "streamId"
    _label = "Plivo"

    def __init__(self, channel: SocketChannel, codec: CodecSpec = PLIVO_CODECS[0]) -> None:
        super().__init__(channel)
        self._codec = codec
        self._logged_kinds: set[str] = set()

    @property
    def codec(self) -> CodecSpec:
        """The codec audio flows in (``start.mediaFormat`` once received)."""
        return self._codec

    def _ignore(self, kind: str, data: dict[str, Any]) -> None:
        self.ignored += 1
        if kind in ("playFailed", "error"):
            reason = data.get("reason")
            log.warning("plivo stream event", kind=kind, reason=str(reason)[:200])
        elif kind not in self._logged_kinds and len(self._logged_kinds) < 16:
            # Once per kind: an unknown event repeated per frame must not flood the logs.
            self._logged_kinds.add(kind)
            log.info("plivo stream event ignored", kind=kind[:64])

    def _start(self, data: dict[str, Any]) -> StreamStarted | None:
        start = data.get("start")
        if self._stream_id is not None or not isinstance(start, dict):
            self.malformed += 1
            return None
        stream_id = start.get("streamId") or data.get("streamId")
        call_id = start.get("callId")
        if not isinstance(stream_id, str) or not stream_id or not isinstance(call_id, str | None):
            self.malformed += 1
            return None
        announced = _media_format_codec(start.get("mediaFormat"))
        if announced is not None and announced != self._codec:
            log.warning(
                "plivo start.mediaFormat differs from the XML contentType; using start",
                expected=f"{self._codec.name}/{self._codec.sample_rate}",
                announced=f"{announced.name}/{announced.sample_rate}",
            )
            self._codec = announced
        self._stream_id = stream_id
        self._provider_call_id = call_id
        media = {
            "contentType": _MEDIA_TYPES[self._codec.name],
            "sampleRate": self._codec.sample_rate,
        }
        encoded = json.dumps({"event": "playAudio", "media": media}, separators=(",", ":"))
        self._audio_prefix = encoded[:-2] + ',"payload":"'
        return StreamStarted(
            stream_id=stream_id,
            provider_call_id=call_id,
            codec=self._codec,
            custom_parameters=_extra_headers(data.get("extra_headers")),
        )

    def _played(self, data: dict[str, Any]) -> MarkEcho | None:
        name = data.get("name")
        if self._stream_id is None or not isinstance(name, str) or self._foreign(data):
            self.malformed += 1
            return None
        return MarkEcho(name)

    def _cleared(self, data: dict[str, Any]) -> ClearDone | None:
        if self._stream_id is None or self._foreign(data):
            self.malformed += 1
            return None
        return ClearDone()

    _handlers: ClassVar[dict[str, Callable[[PlivoMediaStream, dict[str, Any]], Any]]] = {
        "start": _start,
        "dtmf": JsonMediaStream._dtmf,
        "playedStream": _played,
        "played": _played,  # the older name in Plivo's support FAQ
        "clearedAudio": _cleared,
        "stop": JsonMediaStream._stop,
    }

    def send_mark(self, name: str) -> None:
        """Send a ``checkpoint``; Plivo answers ``playedStream`` once the audio before it has
        played (never, if a ``clearAudio`` flushes it first).

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "checkpoint", "streamId": self._require_stream(), "name": name}
        self._channel.send_text(json.dumps(message, separators=(",", ":")))

    def send_clear(self) -> None:
        """Send ``clearAudio``: Plivo drops its queued audio and answers ``clearedAudio``.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "clearAudio", "streamId": self._require_stream()}
        self._channel.drop_pending()
        self._channel.send_text(json.dumps(message, separators=(",", ":")))

    def send_dtmf(self, digits: str) -> None:
        """Play ``digits`` to the caller with ``sendDTMF`` (the shape Plivo Labs sends; Plivo's
        own documentation lists the event without its fields).

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        message = {"event": "sendDTMF", "dtmf": digits}
        self._channel.send_text(json.dumps(message, separators=(",", ":")))


# --------------------------------------------------------------------------- helpers


def _e164(value: str | None) -> str | None:
    if not value:
        return None
    match = _NUMBER.fullmatch(value)
    return "+" + match.group(1) if match else value


def _media_format_codec(media_format: object) -> CodecSpec | None:
    """The supported codec ``start.mediaFormat`` names, or ``None`` if absent or unknown."""
    if not isinstance(media_format, dict):
        return None
    encoding = media_format.get("encoding")
    if not isinstance(encoding, str):
        return None
    mime, _, parameters = encoding.partition(";")
    name = _ENCODINGS.get(mime.strip().lower())
    rate: object = media_format.get("sampleRate")
    if rate is None and parameters.strip().startswith("rate="):
        rate = parameters.strip()[5:]
    try:
        sample_rate = int(str(rate)) if rate is not None else 8000
    except ValueError:
        return None
    codec = CodecSpec(name, sample_rate) if name else None
    return codec if codec in CONTENT_TYPES else None


def _extra_headers(value: object) -> dict[str, str]:
    """``extra_headers`` as a dict: a JSON object, or ``;``- or ``,``-separated ``k=v`` pairs
    (Plivo's docs, SDKs and clones disagree on the format)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_EXTRA_HEADERS_CHARS:
        return {}
    text = value.strip()
    if text.startswith("{"):
        try:
            decoded = safe_json.decode(text, safe_json.SOCKET_LIMITS)
        except safe_json.JsonInputError:
            return {}
        return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
    separator = ";" if ";" in text else ","
    pairs = (item.partition("=") for item in text.split(separator))
    return {key.strip(): val.strip() for key, sep, val in pairs if sep and key.strip()}


def _hangup_refusal(response: httpx.Response) -> tuple[bool, str]:
    if response.status_code == 404:
        return True, "not found"
    return False, f"HTTP {response.status_code}"


@hookimpl
def callbridge_providers() -> Iterator[ProviderPlugin]:
    """Register the ``plivo`` provider."""
    yield ProviderPlugin(
        name="plivo",
        factory=PlivoProvider,
        config_model=PlivoConfig,
        description="Plivo Audio Streaming (Plivo XML <Stream bidirectional>)",
        simulator=simulate_plivo_call,
    )
