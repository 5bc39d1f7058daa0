"""callbridge's own protocol for clients that are not a CPaaS (a PBX gateway, a softphone bridge,
a test rig): a JSON webhook, then a socket with binary PCM16-LE audio and JSON control.

The complete specification, with an example exchange, is the README ("Custom clients"). Audio is
L16 (little-endian) at 8 kHz, or 16 kHz when the connector asks for it; there is no REST API,
so a call ends when its socket closes.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from callbridge import hookimpl, safe_json
from callbridge.media.codecs import get_codec
from callbridge.media.framing import ByteFramer
from callbridge.plugin_types import ProviderPlugin
from callbridge.protocols import (
    AudioIn,
    CallInfo,
    CodecSpec,
    DtmfIn,
    HangupResult,
    HangupTarget,
    MarkEcho,
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
from callbridge_plugins.providers._stream import DTMF_DIGITS
from callbridge_plugins.providers._webhook import is_form
from callbridge_plugins.simulators.custom import (
    SIGNATURE_HEADER,
    get_content,
    signature_digest,
    simulate_custom_call,
    webhook_content,
)

CUSTOM_CODECS = (CodecSpec("L16", 8000), CodecSpec("L16", 16000))
"""PCM16-LE mono at 8 kHz (the default) or 16 kHz."""

MAX_MESSAGE_BYTES = safe_json.SOCKET_LIMITS.max_bytes
"""Socket messages (text or binary) larger than this (64 KiB) are counted as malformed and
dropped."""

MAX_SIGNATURES = 8
"""At most this many ``v1=`` values are checked in one signature header."""

_CALL_ID = re.compile(r"[A-Za-z0-9._:@+=~-]{1,128}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_NUMBER_CHARS = 128
_MAX_METADATA_ENTRIES = 16
_MAX_METADATA_VALUE_CHARS = 256
_MAX_MARK_NAME_CHARS = 128
_MAX_HEADER_CHARS = 4096
_JSON_FIELDS = frozenset({"callId", "from", "to", "metadata"})


class CustomConfig(BaseModel):
    """Options of the ``custom`` provider (section ``providers.config.custom``)."""

    model_config = ConfigDict(extra="forbid")

    reject_message: str = Field(
        default="Sorry, this call cannot be connected.",
        description="`message` of a reject answer when no more specific message is given.",
    )
    signature_tolerance_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="How far the `t=` of an X-Callbridge-Signature may be from the server "
        "clock, either way, before the request is refused (403).",
    )


class CustomProvider:
    """The server side of the custom protocol: JSON webhook and answer, socket adapter,
    ``X-Callbridge-Signature`` checks.

    Satisfies :class:`callbridge.protocols.Provider`.
    """

    name = "custom"
    supported_codecs = CUSTOM_CODECS
    markup_styles = ()
    credential_fields = ("signingSecret",)
    credential_patterns: Mapping[str, str] = {}
    echoes_marks_on_clear = True

    def __init__(self, config: CustomConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    def parse_webhook(self, request: WebhookRequest) -> CallInfo:
        """Read the webhook: a JSON object body, or form/query fields for clients without JSON.

        JSON (any ``POST`` that is not form-encoded): ``callId`` (optional; generated when
        absent), ``from``, ``to`` (optional strings) and ``metadata`` (optional map of strings);
        any other field is refused. Form-encoded ``POST`` or ``GET`` query: ``callId``
        (required, so a stray request never creates a call), ``from``, ``to``; other
        parameters (``roomId``...) are left to routing.

        Raises:
            WebhookError: (400) ``"<field>: <what is wrong>"``.
        """
        if request.method == "GET" or is_form(request):
            fields: dict[str, Any] = {
                name: value
                for name in ("callId", "from", "to")
                if (value := request.param(name)) is not None
            }
            if "callId" not in fields:
                raise WebhookError("callId: required in a form or query webhook", 400)
        else:
            fields = _json_fields(request.body)
        call_id = fields.get("callId")
        if call_id is None:
            call_id = str(uuid.uuid4())
        elif not isinstance(call_id, str) or not _CALL_ID.fullmatch(call_id):
            raise WebhookError(
                "callId: expected 1-128 characters of A-Z a-z 0-9 . _ : @ + = ~ -", 400
            )
        return CallInfo(
            provider=self.name,
            provider_call_id=call_id,
            from_number=_number(fields, "from"),
            to_number=_number(fields, "to"),
            extra=_metadata(fields.get("metadata")),
        )

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """``{ingest_base_url}/custom/{ref}``."""
        return f"{ingest_base_url.rstrip('/')}/custom/{quote(ref, safe='')}"

    def answer_markup(
        self, call: CallInfo, stream_url: str, route: Route, options: StreamOptions
    ) -> Markup:
        """The JSON ``connect`` answer: where to open the socket and the audio format."""
        answer = {
            "action": "connect",
            "socketUrl": stream_url,
            "callId": call.provider_call_id,
            "roomId": route.room_id,
            "expiresInSeconds": round(self.context.ref_ttl_seconds),
            "audio": {
                "encoding": "pcm_s16le",
                "sampleRate": _codec(options).sample_rate,
                "channels": 1,
                "frameMs": 20,
            },
        }
        return Markup(body=_json(answer), media_type="application/json")

    def reject_markup(self, message: str) -> Markup:
        """The JSON ``reject`` answer with ``message`` (or the configured default)."""
        answer = {"action": "reject", "message": message or self.config.reject_message}
        return Markup(body=_json(answer), media_type="application/json")

    def call_ends_with_stream(self, options: StreamOptions) -> bool:
        """A custom call is its socket: when the stream ends, the call has ended."""
        return True

    def open_stream(self, channel: SocketChannel, options: StreamOptions) -> CustomMediaStream:
        """Adapt an accepted custom-protocol socket."""
        return CustomMediaStream(channel, _codec(options))

    def validate_credentials(self, values: Mapping[str, str]) -> None:
        """Nothing beyond presence: any secret the client shares can sign."""

    def verify_webhook(self, request: WebhookRequest, credentials: ProviderCredentials) -> None:
        """Check ``X-Callbridge-Signature``: over ``"{t}." + body`` for a ``POST``, over
        ``"{t}.GET.{public url}"`` for a ``GET``.

        Raises:
            WebhookError: (403) the header is missing, malformed, stale or wrong.
        """
        if request.method == "GET":
            self._verify(request.headers, credentials, lambda t: get_content(t, request.public_url))
        else:
            self._verify(request.headers, credentials, lambda t: webhook_content(t, request.body))

    def verify_handshake(
        self, public_url: str, headers: Mapping[str, str], credentials: ProviderCredentials
    ) -> None:
        """Check ``X-Callbridge-Signature`` over ``"{t}.GET.{public_url}"`` (the ``socketUrl``
        of the answer).

        Raises:
            WebhookError: (403) the header is missing, malformed, stale or wrong.
        """
        self._verify(headers, credentials, lambda t: get_content(t, public_url))

    def _verify(
        self,
        headers: Mapping[str, str],
        credentials: ProviderCredentials,
        content: Callable[[int], bytes],
    ) -> None:
        secret = credentials.get("signingSecret")
        if not secret:
            raise WebhookError("signature: the connector has no signingSecret", 403)
        timestamp, signatures = _parse_signature(headers.get(SIGNATURE_HEADER.lower()))
        tolerance = self.config.signature_tolerance_seconds
        if abs(self.context.clock() - timestamp) > tolerance:
            raise WebhookError(f"signature: timestamp is more than {tolerance} s off", 403)
        expected = signature_digest(secret, content(timestamp))
        if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            raise WebhookError("signature: no v1 signature matches", 403)

    async def hangup(self, target: HangupTarget, credentials: ProviderCredentials) -> HangupResult:
        """Nothing to call: the bridge closes the socket (after a ``stop``), which ends the
        call."""
        return HangupResult(ok=True, detail="closing the socket ends a custom call")

    async def aclose(self) -> None:
        return None


class CustomMediaStream:
    """A custom-protocol socket as provider-neutral events and commands.

    Satisfies :class:`callbridge.protocols.MediaStream`.

    Incoming audio is re-framed into whole 20 ms frames, so a client may send other sizes.
    The protocol numbers no frames: their :attr:`~callbridge.protocols.AudioIn.sequence` is
    ``None`` (one socket keeps them in order).

    Counting rules:
        ``malformed`` counts messages that break the protocol and are dropped: messages over
        64 KiB, empty or odd-length binary frames, text that is not a JSON object, a missing or
        non-string ``event``, audio, ``dtmf`` or ``mark`` before ``start``, a second ``start``,
        and ``start``/``dtmf``/``mark`` with missing or invalid fields.
        ``ignored`` counts well-formed messages with an unknown ``event`` (a newer client).
    """

    def __init__(self, channel: SocketChannel, codec: CodecSpec = CUSTOM_CODECS[0]) -> None:
        self.malformed = 0
        self.ignored = 0
        self.codec = codec
        self._channel = channel
        self._framer = ByteFramer(get_codec(codec).frame_bytes)
        self._ready: deque[AudioIn] = deque()
        self._stream_id: str | None = None
        self._provider_call_id: str | None = None
        self._stopped: StreamStopped | None = None
        self._closed = False

    @property
    def stream_id(self) -> str | None:
        """The server-made stream id once ``start`` has been received, else ``None``."""
        return self._stream_id

    @property
    def provider_call_id(self) -> str | None:
        """The ``callId`` of ``start``, if the client gave one."""
        return self._provider_call_id

    async def receive(self) -> StreamEvent:
        """Next event; :class:`StreamStopped` once the stream ends (then keeps returning it).

        Audio already received is delivered before the stop.
        """
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._stopped is not None:
                return self._stopped
            message = await self._channel.receive()
            if message is None:
                self._stopped = StreamStopped("closed")
            elif _too_big(message):
                self.malformed += 1
            elif isinstance(message, bytes):
                self._audio(message)
            else:
                event = self._parse(message)
                if event is not None:
                    return event

    def _audio(self, data: bytes) -> None:
        if self._stream_id is None or not data or len(data) % 2:
            self.malformed += 1
            return
        self._ready.extend(AudioIn(frame) for frame in self._framer.push(data))

    def _parse(self, message: str) -> StreamEvent | None:
        try:
            data = safe_json.decode(message, safe_json.SOCKET_LIMITS)
        except safe_json.JsonInputError:
            self.malformed += 1
            return None
        kind = data.get("event") if isinstance(data, dict) else None
        if not isinstance(kind, str):
            self.malformed += 1
            return None
        handler = self._handlers.get(kind)
        if handler is None:
            self.ignored += 1
            return None
        if kind != "stop" and (kind == "start") == (self._stream_id is not None):
            self.malformed += 1  # a second start, or dtmf/mark before start
            return None
        event: StreamEvent | None = handler(self, data)
        if event is None:
            self.malformed += 1
        return event

    def _start(self, data: dict[str, Any]) -> StreamStarted | None:
        call_id = data.get("callId")
        valid = call_id is None or (isinstance(call_id, str) and _CALL_ID.fullmatch(call_id))
        if not valid:
            return None
        self._stream_id = "cs_" + secrets.token_hex(8)
        self._provider_call_id = call_id
        return StreamStarted(stream_id=self._stream_id, provider_call_id=call_id, codec=self.codec)

    def _dtmf(self, data: dict[str, Any]) -> DtmfIn | None:
        digit = data.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            return None
        return DtmfIn(digit)

    def _mark(self, data: dict[str, Any]) -> MarkEcho | None:
        name = data.get("name")
        cleared = data.get("cleared", False)
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= _MAX_MARK_NAME_CHARS
            or not isinstance(cleared, bool)
        ):
            return None
        return MarkEcho(name, cleared=cleared)

    def _stop(self, data: dict[str, Any]) -> StreamStopped:
        self._stopped = StreamStopped("stop")
        return self._stopped

    _handlers: ClassVar[dict[str, Callable[[CustomMediaStream, dict[str, Any]], Any]]] = {
        "start": _start,
        "dtmf": _dtmf,
        "mark": _mark,
        "stop": _stop,
    }

    def _require_stream(self) -> None:
        if self._stream_id is None:
            raise RuntimeError("the custom stream has not started yet (no start message)")

    def send_audio(self, payload: bytes) -> None:
        """Send one 20 ms frame of PCM16-LE as a binary message.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        self._channel.send_bytes(payload, droppable=True)

    def send_mark(self, name: str) -> None:
        """Ask the client to echo ``name`` once the audio sent before it has played.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        self._channel.send_text(_json({"event": "mark", "name": name}))

    def send_clear(self) -> None:
        """Ask the client to drop unplayed audio and echo its pending marks as cleared.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        self._channel.drop_pending()
        self._channel.send_text('{"event":"clear"}')

    def send_dtmf(self, digits: str) -> None:
        """Ask the client to play ``digits`` to its caller (``{"event":"dtmf","digits":…}``).

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        self._require_stream()
        self._channel.send_text(_json({"event": "dtmf", "digits": digits}))

    async def close(self, reason: str = "hangup") -> None:
        """Send ``{"event":"stop","reason":…}`` unless the client ended the stream, then close
        the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._stopped is None:
            try:
                self._channel.send_text(_json({"event": "stop", "reason": reason}))
            except Exception:  # best effort: the socket may already be gone
                pass
        await self._channel.close()


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _too_big(message: str | bytes) -> bool:
    if len(message) > MAX_MESSAGE_BYTES:
        return True
    # Only text can grow when counted in bytes; short text cannot reach the limit.
    return (
        isinstance(message, str)
        and len(message) * 4 > MAX_MESSAGE_BYTES
        and len(message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES
    )


def _codec(options: StreamOptions) -> CodecSpec:
    if options.codec in CUSTOM_CODECS:
        return options.codec
    return CUSTOM_CODECS[1] if options.codec.sample_rate == 16000 else CUSTOM_CODECS[0]


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        data = safe_json.decode(body, safe_json.BODY_LIMITS)
    except safe_json.JsonInputError as exc:
        raise WebhookError(f"body: {exc}", 400) from None
    if not isinstance(data, dict):
        raise WebhookError("body: expected a JSON object", 400)
    for name in data:
        if name == "roomId":
            raise WebhookError("roomId: not a body field; add ?roomId= to the webhook URL", 400)
        if name not in _JSON_FIELDS:
            raise WebhookError(f"{name}: unknown field", 400)
    return {name: value for name, value in data.items() if value is not None}


def _number(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_NUMBER_CHARS or _CONTROL_CHARS.search(value):
        raise WebhookError(
            f"{name}: expected a string of at most {_MAX_NUMBER_CHARS} printable characters", 400
        )
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_METADATA_ENTRIES:
        raise WebhookError(
            f"metadata: expected an object of at most {_MAX_METADATA_ENTRIES} strings", 400
        )
    for key, item in value.items():
        if not _METADATA_KEY.fullmatch(key):
            raise WebhookError(f"metadata: key {key[:64]!r} is not 1-64 of A-Z a-z 0-9 _ . -", 400)
        if not isinstance(item, str) or len(item) > _MAX_METADATA_VALUE_CHARS:
            raise WebhookError(
                f"metadata.{key}: expected a string of at most "
                f"{_MAX_METADATA_VALUE_CHARS} characters",
                400,
            )
    return dict(value)


def _parse_signature(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise WebhookError(f"signature: {SIGNATURE_HEADER} is missing", 403)
    if len(header) > _MAX_HEADER_CHARS:
        raise WebhookError(f"signature: {SIGNATURE_HEADER} is too long", 403)
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookError(f"signature: {SIGNATURE_HEADER} is malformed", 403)
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                raise WebhookError("signature: t= must appear once, in unix seconds", 403)
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.lower())
        # Other schemes (v0, a future v2) are skipped, so a client may send several.
    if timestamp is None:
        raise WebhookError("signature: t= is missing", 403)
    if not signatures:
        raise WebhookError("signature: no v1= signature", 403)
    return timestamp, signatures[:MAX_SIGNATURES]


@hookimpl
def callbridge_providers() -> Iterator[ProviderPlugin]:
    """Register the ``custom`` provider."""
    yield ProviderPlugin(
        name="custom",
        factory=CustomProvider,
        config_model=CustomConfig,
        description="callbridge's own protocol: JSON webhook, binary PCM16-LE socket",
        simulator=simulate_custom_call,
    )
