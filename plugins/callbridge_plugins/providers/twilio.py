"""Twilio Media Streams: voice webhook, TwiML ``<Connect><Stream>``, the media-socket adapter,
``X-Twilio-Signature`` checks and the REST hang-up.

Wire format: ``/work/shared/PROTOCOLS.md`` §2. Twilio's bidirectional streams carry only μ-law
(PCMU) at 8 kHz, so every stream this provider opens uses that codec.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit, urlunsplit

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from callbridge import hookimpl
from callbridge.plugin_types import ProviderPlugin
from callbridge.protocols import (
    CallInfo,
    CodecSpec,
    HangupResult,
    HangupTarget,
    MarkEcho,
    Markup,
    PluginContext,
    ProviderCredentials,
    Route,
    SocketChannel,
    StreamOptions,
    StreamStarted,
    WebhookError,
    WebhookRequest,
)
from callbridge_plugins.providers._markup import render, speak_and_hang_up, xml_text
from callbridge_plugins.providers._rest import API_TIMEOUT_SECONDS as API_TIMEOUT_SECONDS
from callbridge_plugins.providers._rest import RestClient
from callbridge_plugins.providers._stream import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
from callbridge_plugins.providers._stream import JsonMediaStream, PendingMarks
from callbridge_plugins.providers._webhook import is_form, kept_params
from callbridge_plugins.simulators.twilio import simulate_twilio_call

TWILIO_CODEC = CodecSpec("PCMU", 8000)
"""The only codec a bidirectional Twilio stream carries."""

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
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
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}

log = structlog.get_logger("callbridge.providers.twilio")


class TwilioConfig(BaseModel):
    """Options of the ``twilio`` provider (section ``providers.config.twilio``)."""

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
    api_base_url: str = Field(
        default="https://api.twilio.com",
        description="Base URL of Twilio's REST API, without a trailing path. The hang-up posts "
        "to `{api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`. Set a "
        "regional host (`https://api.dublin.ie1.twilio.com`) or, in tests, a fake API.",
    )


class TwilioProvider(RestClient):
    """The server side of Twilio: parses the voice webhook, answers TwiML, adapts the socket.

    Satisfies :class:`callbridge.protocols.Provider`.
    """

    name = "twilio"
    supported_codecs = (TWILIO_CODEC,)
    markup_styles = ()
    credential_fields = ("accountSid", "authToken")
    credential_patterns: Mapping[str, str] = {}
    echoes_marks_on_clear = True

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
        return CallInfo(
            provider=self.name,
            provider_call_id=call_sid,
            from_number=request.param("From") or None,
            to_number=request.param("To") or None,
            direction=request.param("Direction") or None,
            account_id=account_sid,
            extra=kept_params(request, _EXTRA_FIELDS),
        )

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """``{ingest_base_url}/twilio/{ref}``: the ref travels in the path.

        Twilio does not support query strings in ``<Stream url>`` (they are dropped), so
        nothing may ride in one.
        """
        return f"{ingest_base_url.rstrip('/')}/twilio/{quote(ref, safe='')}"

    def answer_markup(
        self, call: CallInfo, stream_url: str, route: Route, options: StreamOptions
    ) -> Markup:
        """TwiML that opens a bidirectional stream to ``stream_url``.

        The stream carries ``<Parameter>`` elements ``callId`` (the CallSid), ``roomId``, and
        ``from``/``to`` when known; they reach the socket as ``start.customParameters``.
        ``options.codec`` is always PCMU at 8 kHz: Twilio's bidirectional streams carry nothing
        else (it is the only entry of ``supported_codecs``).
        """
        response = ET.Element("Response")
        connect = ET.SubElement(response, "Connect")
        stream = ET.SubElement(connect, "Stream", url=stream_url)
        if self.config.stream_name:
            stream.set("name", xml_text(self.config.stream_name))
        parameters = {
            "callId": call.provider_call_id,
            "roomId": route.room_id,
            "from": call.from_number,
            "to": call.to_number,
        }
        for name, value in parameters.items():
            if value:
                ET.SubElement(stream, "Parameter", name=name, value=xml_text(value))
        return Markup(body=render(response), media_type="text/xml")

    def reject_markup(self, message: str) -> Markup:
        """TwiML that says ``message`` (or the configured default when empty), then hangs up."""
        return speak_and_hang_up("Say", message or self.config.reject_message, "text/xml")

    def call_ends_with_stream(self, options: StreamOptions) -> bool:
        """``<Connect>`` ends the call when the stream ends (no verb follows it)."""
        return True

    def open_stream(self, channel: SocketChannel, options: StreamOptions) -> TwilioMediaStream:
        """Adapt an accepted Twilio media socket."""
        return TwilioMediaStream(channel)

    def validate_credentials(self, values: Mapping[str, str]) -> None:
        """Nothing beyond presence: Twilio's ids and tokens are only checked by Twilio."""

    def verify_webhook(self, request: WebhookRequest, credentials: ProviderCredentials) -> None:
        """Check ``X-Twilio-Signature`` on the voice webhook (PROTOCOLS §2.5).

        The signed text is ``request.public_url`` (the configured public URL, query included)
        followed, for a form-encoded POST, by every body parameter as name then value, sorted by
        name and then value. The HMAC-SHA1 key is the ``authToken`` credential. As the official
        validator does, the URL is tried as given, without its port and with the scheme's
        default port, since Twilio drops ports on HTTPS callbacks and its back end is not
        consistent. A body Twilio signs by hash (JSON, ``?bodySHA256=`` in the URL) must hash to
        that value; the signature then covers the URL alone.

        Raises:
            WebhookError: (403) the header is missing or does not match, the body hash differs,
                a non-form body carries no ``bodySHA256``, or ``authToken`` is not set.
        """
        token = _auth_token(credentials)
        signature = _signature_header(request.headers)
        params: list[tuple[str, str]] = []
        body_hash = parse_qs(urlsplit(request.public_url).query).get("bodySHA256")
        if body_hash:
            actual = hashlib.sha256(request.body).hexdigest()
            if not hmac.compare_digest(actual.encode(), body_hash[0].lower().encode()):
                raise WebhookError("X-Twilio-Signature: the body does not match bodySHA256", 403)
        elif request.method.upper() == "POST" and request.body:
            if not is_form(request):
                raise WebhookError(
                    "X-Twilio-Signature: a non-form body must come with bodySHA256", 403
                )
            params = parse_qsl(
                request.body.decode("utf-8", errors="replace"), keep_blank_values=True
            )
        urls = _port_variants(request.public_url)
        if not _matches(token, signature, urls, _param_variants(params)):
            raise WebhookError("X-Twilio-Signature does not match", 403)

    def verify_handshake(
        self, public_url: str, headers: Mapping[str, str], credentials: ProviderCredentials
    ) -> None:
        """Check ``X-Twilio-Signature`` on the media-socket upgrade (PROTOCOLS §2.5).

        Twilio signs the ``wss://`` URL exactly as written in the TwiML, with no parameters;
        ``public_url`` is that URL rebuilt from the configured public ingest URL. The variant
        with a trailing ``/`` added (or removed), as Twilio's security page suggests, and the
        port variants of :meth:`verify_webhook` are accepted too.

        Raises:
            WebhookError: (403) the header is missing or does not match, or ``authToken`` is
                not set.
        """
        token = _auth_token(credentials)
        signature = _signature_header(headers)
        urls = [
            variant
            for url in (public_url, _toggle_trailing_slash(public_url))
            for variant in _port_variants(url)
        ]
        if not _matches(token, signature, urls, [""]):
            raise WebhookError("X-Twilio-Signature does not match", 403)

    async def hangup(self, target: HangupTarget, credentials: ProviderCredentials) -> HangupResult:
        """End the call through Twilio's Calls API.

        Sends ``POST {api_base_url}/2010-04-01/Accounts/{accountSid}/Calls/{CallSid}.json``
        with the form ``Status=completed`` and HTTP Basic ``accountSid:authToken``.

        The account is always the credentials' ``accountSid`` (a differing
        ``target.account_id`` is logged). 2xx is success; 404 (Twilio's code ``20404``, or no
        body) means the call had already ended, which is success too. Anything else, or a
        request that fails, is returned as not ``ok`` with the status and a short detail.
        """
        account_sid = credentials.get("accountSid")
        auth_token = credentials.get("authToken")
        if not account_sid or not auth_token:
            return HangupResult(
                ok=False, detail="credentials: accountSid and authToken are required"
            )
        if target.account_id and target.account_id != account_sid:
            log.warning(
                "call belongs to another account than the credentials; using the credentials'",
                call_account_sid=target.account_id,
                credentials_account_sid=account_sid,
            )
        url = (
            f"{self.config.api_base_url.rstrip('/')}/2010-04-01/Accounts/"
            f"{quote(account_sid, safe='')}/Calls/{quote(target.provider_call_id, safe='')}.json"
        )
        return await self._hangup_request(
            "POST",
            url,
            _hangup_refusal,
            data={"Status": "completed"},
            auth=(account_sid, auth_token),
        )


class TwilioMediaStream(JsonMediaStream):
    """A Twilio media socket as provider-neutral events and commands.

    Satisfies :class:`callbridge.protocols.MediaStream`. ``stream_id`` is Twilio's
    ``streamSid`` and ``provider_call_id`` its ``CallSid``, both from ``start``; ``connected``
    is consumed silently. Each frame's ``media.chunk`` (counting from 1) is its
    :attr:`~callbridge.protocols.AudioIn.sequence` (``None`` when missing or not a number).

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
    cleared. Once the socket is closed, Twilio runs the TwiML after ``</Connect>``.
    """

    _stream_id_field = "streamSid"
    _label = "Twilio"

    def __init__(self, channel: SocketChannel) -> None:
        super().__init__(channel)
        self._marks = PendingMarks()

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
        self._audio_prefix = (
            '{"event":"media","streamSid":' + json.dumps(stream_id) + ',"media":{"payload":"'
        )
        return StreamStarted(
            stream_id=stream_id,
            provider_call_id=call_id,
            codec=TWILIO_CODEC,
            custom_parameters={str(k): str(v) for k, v in parameters.items()},
        )

    def _mark(self, data: dict[str, Any]) -> MarkEcho | None:
        mark = data.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if self._stream_id is None or not isinstance(name, str) or self._foreign(data):
            self.malformed += 1
            return None
        return self._marks.echo(name)

    _handlers: ClassVar[dict[str, Callable[[TwilioMediaStream, dict[str, Any]], Any]]] = {
        "connected": _connected,
        "start": _start,
        "dtmf": JsonMediaStream._dtmf,
        "mark": _mark,
        "stop": JsonMediaStream._stop,
    }

    def send_mark(self, name: str) -> None:
        """Ask Twilio to echo ``name`` once the audio sent before it has played.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "mark", "streamSid": self._require_stream(), "mark": {"name": name}}
        self._marks.sent(name)
        self._channel.send_text(json.dumps(message, separators=(",", ":")))

    def send_clear(self) -> None:
        """Drop the audio Twilio has buffered but not played yet.

        Raises:
            RuntimeError: before ``start`` has been received.
        """
        message = {"event": "clear", "streamSid": self._require_stream()}
        self._marks.clear()
        self._channel.drop_pending()
        self._channel.send_text(json.dumps(message, separators=(",", ":")))


def _auth_token(credentials: ProviderCredentials) -> bytes:
    token = credentials.get("authToken")
    if not token:
        raise WebhookError("credentials: authToken is not set", 403)
    return token.encode()


def _signature_header(headers: Mapping[str, str]) -> bytes:
    signature = headers.get("x-twilio-signature") or next(
        (value for name, value in headers.items() if name.lower() == "x-twilio-signature"), None
    )
    if not signature:
        raise WebhookError("X-Twilio-Signature is missing", 403)
    return signature.strip().encode()


def _matches(token: bytes, signature: bytes, urls: list[str], params: list[str]) -> bool:
    # Every candidate is computed and compared, so timing says nothing about which one failed.
    found = False
    for url in dict.fromkeys(urls):
        for text in params:
            digest = hmac.new(token, (url + text).encode(), hashlib.sha1).digest()
            found |= hmac.compare_digest(base64.b64encode(digest), signature)
    return found


def _param_variants(params: list[tuple[str, str]]) -> list[str]:
    """The signed parameter text: names sorted, each name's values sorted; the official Python
    validator also drops repeated identical values, so that form is accepted as well."""
    every = "".join(name + value for name, value in sorted(params))
    unique = "".join(name + value for name, value in sorted(set(params)))
    return list(dict.fromkeys((every, unique)))


def _port_variants(url: str) -> list[str]:
    """``url`` as given, without its port, and with the scheme's default port when it has none."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return [url]
    host = parts.netloc.rpartition("@")[2]
    userinfo = parts.netloc[: len(parts.netloc) - len(host)]
    if port is not None:
        bare = host[: host.rfind(":")]
        return [url, urlunsplit(parts._replace(netloc=userinfo + bare))]
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None:
        return [url]
    return [url, urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{default}"))]


def _toggle_trailing_slash(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit(parts._replace(path=path))


def _hangup_refusal(response: httpx.Response) -> tuple[bool, str]:
    # 404 (Twilio's 20404, or no body): the call had already ended.
    return response.status_code == 404, _error_detail(response)


def _error_detail(response: httpx.Response) -> str:
    """``HTTP 401`` plus Twilio's error code and message when the body is its error JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    parts = [f"HTTP {response.status_code}"]
    if isinstance(body, dict):
        parts += [f"{key} {body[key]}" for key in ("code", "message") if body.get(key)]
    return ", ".join(parts)[:300]


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
