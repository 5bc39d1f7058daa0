"""The contracts plugin objects satisfy, and the records that flow between them.

A plugin record's factory (see :mod:`callbridge.plugin_types`) builds an object satisfying one
of the protocols below. Everything here is provider-neutral: provider-specific parsing and
formatting lives in the provider plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

import numpy as np
import numpy.typing as npt

from callbridge.media.clock import MediaClock
from callbridge.routing.rules import CallFacts, RoutingRule, RuleVerdict

Pcm = npt.NDArray[np.int16]
"""Signed 16-bit mono PCM samples."""


# --------------------------------------------------------------------------- shared context


@dataclass(frozen=True)
class PluginContext:
    """What every plugin factory receives beside its own config.

    Attributes:
        data_dir: folder where a plugin may keep files (keys, caches).
        clock: wall-clock seconds (``time.time`` in production; tests inject a fake).
        public_api_url: the public base URL of the REST API, e.g. ``https://cb.example.com``.
        public_ingest_url: the public base URL of media sockets, e.g. ``wss://cb.example.com/ingest``.
        ref_ttl_seconds: how long a ref stays claimable after the answer (``refs.ttl_seconds``).
        media_clock: the process's one 20 ms media clock; room transports register their rooms
            with it (the runtime passes its own; a context built by hand gets a fresh one).
        rules: read access to the routing rules (the YAML's and the store's), for routing
            strategies; ``None`` in a context built without a store.
    """

    data_dir: Path
    clock: Callable[[], float]
    public_api_url: str
    public_ingest_url: str
    ref_ttl_seconds: float = 90.0
    media_clock: MediaClock = field(default_factory=lambda: MediaClock())
    rules: RuleReader | None = None


class PluginError(Exception):
    """A plugin could not do what was asked; the message is safe to show to the caller."""


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class WebhookRequest:
    """A provider's voice-webhook request, as the provider plugin sees it.

    Attributes:
        method: ``GET`` or ``POST``.
        public_url: the URL the provider called, rebuilt from the configured public API URL
            (what signatures are computed over), including the query string.
        headers: request headers, lower-case names.
        params: form (POST) and query parameters merged, every value kept in order.
        body: the raw body bytes.
    """

    method: str
    public_url: str
    headers: Mapping[str, str]
    params: Mapping[str, list[str]]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None


class WebhookError(Exception):
    """A voice webhook that cannot be accepted. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CallInfo:
    """A call as described by the provider's voice webhook.

    Attributes:
        provider: provider name (``twilio``).
        provider_call_id: the provider's call id (Twilio ``CallSid``).
        from_number: caller, E.164 where the provider gives a number.
        to_number: callee, E.164 where the provider gives a number.
        direction: provider's direction value (``inbound``, ``outbound-api``...).
        account_id: the provider account the call belongs to, if given.
        extra: any other provider fields worth keeping (small, no secrets).
    """

    provider: str
    provider_call_id: str
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    account_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Markup:
    """A provider answer document (TwiML, Plivo XML, TeXML...)."""

    body: str
    media_type: str = "text/xml"


@dataclass(frozen=True)
class CodecSpec:
    """Audio codec on the provider leg: ``PCMU``, ``PCMA`` or ``L16`` at ``sample_rate`` Hz."""

    name: str = "PCMU"
    sample_rate: int = 8000


@dataclass(frozen=True)
class StreamOptions:
    """How one call's media stream is set up, decided at intake and carried in the ref.

    Attributes:
        codec: codec on the provider leg (one of the provider's ``supported_codecs``).
        markup_style: provider-specific answer style (Telnyx: ``connect`` or ``start``);
            ``None`` means the provider's default.
    """

    codec: CodecSpec = CodecSpec()
    markup_style: str | None = None


class ProviderCredentials:
    """A connector's decrypted provider credentials (camelCase names, e.g. ``authToken``).

    Never logged: ``repr`` shows the names only.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def require(self, name: str) -> str:
        value = self._values.get(name)
        if not value:
            raise PluginError(f"credentials: {name} is not set")
        return value

    def names(self) -> list[str]:
        return sorted(self._values)

    def __repr__(self) -> str:
        return f"ProviderCredentials({', '.join(self.names())})"


class CredentialsError(ValueError):
    """Provider credentials that cannot work, found before they are stored.

    Attributes:
        field: the credential's name (``publicKey``).
        problem: what is wrong with it; never quotes the value.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class HangupTarget:
    """The call a provider REST hang-up ends.

    Attributes:
        provider_call_id: Twilio ``CallSid``, Plivo ``CallUUID``, Telnyx ``call_control_id``.
        account_id: the provider account id from the webhook or stream, when given.
    """

    provider_call_id: str
    account_id: str | None = None


@dataclass(frozen=True)
class HangupResult:
    """What the provider's REST API answered.

    Attributes:
        ok: the call is over (hung up now, or it had already ended).
        already_ended: the provider said the call no longer existed (404, 20404, 90018...).
        status: HTTP status code, 0 when the request failed before an answer.
        detail: short reason for logs (no secrets).
    """

    ok: bool
    already_ended: bool = False
    status: int = 0
    detail: str = ""


@dataclass(slots=True)
class StreamStarted:
    """The provider socket said which stream and call it carries."""

    stream_id: str
    provider_call_id: str | None
    codec: CodecSpec
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AudioIn:
    """One frame of caller audio, still encoded in the stream codec.

    Attributes:
        payload: the frame's bytes.
        sequence: the provider's media counter for the frame (Twilio, Plivo and Telnyx
            ``media.chunk``), which tells lost, reordered and duplicate frames apart; ``None``
            when the protocol numbers no frames (the custom protocol) or the message lacked it.
    """

    payload: bytes
    sequence: int | None = None


@dataclass(slots=True)
class DtmfIn:
    """The caller pressed a key."""

    digit: str


@dataclass(slots=True)
class MarkEcho:
    """The provider reports a mark we placed as reached (``cleared`` when flushed by a clear).

    The bridge decides the status it reports to the room from its own record of the clears
    it sent; ``cleared`` is the provider adapter's hint only.
    """

    name: str
    cleared: bool = False


@dataclass(slots=True)
class ClearDone:
    """The provider confirms a clear (Plivo ``clearedAudio``); not every provider sends one."""


@dataclass(slots=True)
class StreamStopped:
    """The provider ended the stream (``stop`` message or socket close)."""

    reason: str = "stop"


StreamEvent = StreamStarted | AudioIn | DtmfIn | MarkEcho | ClearDone | StreamStopped


@runtime_checkable
class SocketChannel(Protocol):
    """The accepted media WebSocket, reduced to what a provider adapter needs.

    Sends never block: a message is written to the socket at once, or, when the peer is not
    reading fast enough, queued in order behind the ones still waiting. ``droppable`` messages
    (audio) may be discarded while they wait, by :meth:`drop_pending` (a ``clear``) or when the
    queue is full; control messages (marks, clears) are never dropped.
    """

    async def receive(self) -> str | bytes | None:
        """Next message (text or binary); ``None`` once the socket is closed."""
        ...

    def send_text(self, data: str, droppable: bool = False) -> None: ...

    def send_bytes(self, data: bytes, droppable: bool = False) -> None: ...

    def drop_pending(self) -> int:
        """Discard droppable messages not yet written; returns how many."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@runtime_checkable
class MediaStream(Protocol):
    """A provider's media socket adapted to provider-neutral events and commands.

    ``receive`` yields :data:`StreamEvent` records; the first meaningful one is always
    :class:`StreamStarted`. Malformed messages are counted in ``malformed`` and skipped. The
    ``send_*`` commands never block (see :class:`SocketChannel`) and keep their order on the
    wire: a mark sent after some audio reaches the provider after that audio.
    """

    malformed: int

    async def receive(self) -> StreamEvent:
        """Next event; :class:`StreamStopped` once the stream ends (then keeps returning it)."""
        ...

    def send_audio(self, payload: bytes) -> None:
        """Send one whole 20 ms frame, already encoded in the stream codec."""
        ...

    def send_mark(self, name: str) -> None: ...

    def send_clear(self) -> None:
        """Drop audio still waiting to be written, then tell the provider to clear its buffer."""
        ...

    # Optional: ``send_dtmf(digits: str) -> None`` plays keypad digits to the caller, on
    # streams whose protocol can (Plivo ``sendDTMF``, custom clients); the bridge counts
    # digits it cannot send as ``dtmf_out_unsupported``.
    # Optional: ``arrivals: FrameArrivals`` (callbridge.media.arrivals), on a stream that
    # changes the order or timing of frames before it delivers them (Telnyx's reorder buffer):
    # it observes each frame there, as it comes off the wire, and the bridge reports those
    # figures instead of observing the frames it receives.

    async def close(self) -> None: ...


@runtime_checkable
class Provider(Protocol):
    """A telephony provider: voice-webhook parsing, answer markup, media-socket adapter,
    request signatures and REST hang-up.

    Attributes:
        name: the provider's registered name (``twilio``), also the URL segment.
        supported_codecs: codecs this provider can stream; the first is the default.
        markup_styles: answer styles the provider offers; the first is the default (empty when
            there is only one).
        credential_fields: camelCase names of the credentials a connector may hold
            (Twilio: ``accountSid``, ``authToken``).
        credential_patterns: for the credentials whose values :meth:`validate_credentials`
            restricts, the JSON-Schema pattern of what it accepts (documented in the OpenAPI
            document, so API clients and fuzzers know); empty when it restricts none.
        echoes_marks_on_clear: the provider echoes every pending mark when it clears
            (Twilio, Telnyx); otherwise pending marks are reported cleared on :class:`ClearDone`.
    """

    name: str
    supported_codecs: tuple[CodecSpec, ...]
    markup_styles: tuple[str, ...]
    credential_fields: tuple[str, ...]
    credential_patterns: Mapping[str, str]
    echoes_marks_on_clear: bool

    def parse_webhook(self, request: WebhookRequest) -> CallInfo:
        """Turn the voice webhook into a :class:`CallInfo`; raise :class:`WebhookError` if bad."""
        ...

    def validate_credentials(self, values: Mapping[str, str]) -> None:
        """Check the values of credentials a connector is given, before they are stored (the
        core has already checked that exactly :attr:`credential_fields` are present, each a
        non-empty string). Raise :class:`CredentialsError` for a value that can never work,
        e.g. a Telnyx ``publicKey`` that is not an Ed25519 key; do nothing otherwise."""
        ...

    def verify_webhook(self, request: WebhookRequest, credentials: ProviderCredentials) -> None:
        """Check the provider's signature on the voice webhook; raise ``WebhookError(…, 403)``
        with the reason when it is missing or wrong."""
        ...

    def verify_handshake(
        self, public_url: str, headers: Mapping[str, str], credentials: ProviderCredentials
    ) -> None:
        """Check the provider's signature on the media-socket upgrade request (``public_url`` is
        the configured public ingest URL of the request, ``wss://…``); raise
        ``WebhookError(…, 403)`` when wrong. Providers that do not sign handshakes do nothing."""
        ...

    def stream_url(self, ingest_base_url: str, ref: str) -> str:
        """The media-socket URL carrying ``ref`` that the markup points the provider to."""
        ...

    def answer_markup(
        self, call: CallInfo, stream_url: str, route: Route, options: StreamOptions
    ) -> Markup:
        """Markup that makes the provider open a bidirectional media socket to ``stream_url``."""
        ...

    def reject_markup(self, message: str) -> Markup:
        """Markup that tells the caller the call cannot be connected, then hangs up."""
        ...

    def call_ends_with_stream(self, options: StreamOptions) -> bool:
        """Whether the provider ends the call when the media stream ends; if not, the bridge
        hangs up by REST when the stream ends (Telnyx ``start`` style)."""
        ...

    def open_stream(self, channel: SocketChannel, options: StreamOptions) -> MediaStream:
        """Adapt an accepted media socket; audio flows in ``options.codec``."""
        ...

    async def hangup(self, target: HangupTarget, credentials: ProviderCredentials) -> HangupResult:
        """End the call through the provider's REST API; "already ended" answers are ``ok``."""
        ...

    async def aclose(self) -> None:
        """Release HTTP clients and the like."""
        ...


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class ConnectorView:
    """The parts of a connector routing may look at."""

    id: str
    apikey: str
    provider: str
    default_room_id: str | None
    default_rule_id: str | None
    region: str | None


@runtime_checkable
class RuleReader(Protocol):
    """Read access to routing rules."""

    async def rules_for(self, apikey: str) -> Sequence[RoutingRule]:
        """Every rule that applies to ``apikey``'s calls (order them with
        :func:`callbridge.routing.rules.precedence`)."""
        ...

    async def rule(self, apikey: str, rule_id: str) -> RoutingRule | None:
        """One rule of ``apikey``, or ``None``."""
        ...


@dataclass(frozen=True)
class RoutingContext:
    """Everything a routing strategy may decide on.

    Attributes:
        call: the call from the provider's webhook.
        connector: the connector whose URL received the webhook.
        query: query parameters of the webhook URL (e.g. ``roomId``).
        facts: what rules match on: the caller and callee normalised to E.164 (with the
            connector's region's country for national formats), the connector, the provider
            and the moment of the call.
    """

    call: CallInfo
    connector: ConnectorView
    query: Mapping[str, str]
    facts: CallFacts | None = None


@dataclass(frozen=True)
class Route:
    """Where a call goes.

    Attributes:
        room_id: the room the call joins.
        strategy: name of the strategy that decided.
        transport: room transport name; ``None`` means ``rooms.default``.
        codec: codec on the provider leg; ``None`` means the connector's or provider's default.
        metadata: small extra data passed to the room as participant metadata.
        rule_id: the routing rule that decided, if one did.
        region: the region the rule pins, if it does.
    """

    room_id: str
    strategy: str
    transport: str | None = None
    codec: CodecSpec | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    rule_id: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """A strategy's answer with its reasoning: the route (``None``: it passes to the next
    strategy), what it looked at and why it did or did not decide, and, for rule-based
    strategies, every rule it checked."""

    route: Route | None
    reasons: tuple[str, ...] = ()
    rules: tuple[RuleVerdict, ...] = ()


@runtime_checkable
class RoutingStrategy(Protocol):
    """Decides which room a call joins, or passes to the next strategy.

    ``route`` returns a :class:`RouteDecision` (a plain :class:`Route`, or ``None`` to pass,
    is accepted too, with no reasoning), so the chain can explain every call.
    """

    name: str

    async def route(self, context: RoutingContext) -> RouteDecision | Route | None: ...


# --------------------------------------------------------------------------- rooms


@dataclass(frozen=True)
class Participant:
    """Who joins a room.

    Attributes:
        participant_id: unique within the room.
        kind: ``caller`` (a bridged phone call) or ``client`` (a room participant).
        display_name: human-readable label.
        metadata: small extra data other participants see in ``participant-joined``.
        playout: how the room buffers what this member says. ``adaptive`` (the default) suits
            a real-time source (a phone, a person): a small playout buffer whose standing delay
            is drained. ``queue`` suits a source that sends faster than real time on purpose (an
            agent's synthesized speech): everything is played in order at real time, up to the
            transport's queue limit, and ``mark``/``clear`` manage it.
    """

    participant_id: str
    kind: str
    display_name: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    playout: Literal["adaptive", "queue"] = "adaptive"


# The room event vocabulary: what members send each other through ``RoomLeg.send_event`` and
# receive through ``LegSink.notify``, as JSON objects named by ``event``. The participant socket
# and the ``websocket`` transport speak exactly these (parsed by :mod:`callbridge.room_events`).


class MarkEvent(TypedDict):
    """A named point in a member's audio. Sent without ``status`` it travels with the audio
    sent before it; the call answers with ``status`` ``played`` (the caller heard everything
    before it) or ``cleared`` (a clear dropped it)."""

    event: Literal["mark"]
    name: str
    status: NotRequired[Literal["played", "cleared"]]
    callId: NotRequired[str]


class ClearEvent(TypedDict):
    """Drop the sender's audio still waiting in the room and in the call's buffers."""

    event: Literal["clear"]
    callId: NotRequired[str]


class HangupEvent(TypedDict):
    """End the call (every call in the room, or ``callId``'s). ``unavailable`` is set by a
    transport whose member could not be reached (members cannot send it): the call fails."""

    event: Literal["hangup"]
    callId: NotRequired[str]
    reason: NotRequired[str]
    unavailable: NotRequired[bool]


class TransferEvent(TypedDict):
    """Move the call (every call in the room, or ``callId``'s) to room ``roomId``, on
    ``transport`` or the default transport."""

    event: Literal["transfer"]
    roomId: str
    transport: NotRequired[str]
    callId: NotRequired[str]


class DtmfEvent(TypedDict):
    """Keypad digits: ``digit`` as a caller pressed it (from a call), or ``digits`` for the
    call to play to the caller where its provider can (from a member)."""

    event: Literal["dtmf"]
    digit: NotRequired[str]
    digits: NotRequired[str]
    callId: NotRequired[str]


class ParticipantJoinedEvent(TypedDict):
    """A member joined the room (sent to every other member)."""

    event: Literal["participant-joined"]
    participantId: str
    kind: str
    displayName: str
    metadata: dict[str, str]


class ParticipantLeftEvent(TypedDict):
    """A member left the room (sent to every other member)."""

    event: Literal["participant-left"]
    participantId: str


RoomEvent = (
    MarkEvent
    | ClearEvent
    | HangupEvent
    | TransferEvent
    | DtmfEvent
    | ParticipantJoinedEvent
    | ParticipantLeftEvent
)
"""Every message of the room event vocabulary."""


@runtime_checkable
class LegSink(Protocol):
    """Where a room delivers what one member hears: implemented by whatever carries the member
    (the call bridge toward a provider socket, the participant socket, later agents, RTP and
    WebRTC). Every method is called on the event loop, from the media clock's tick or from
    another member's receive loop, and must return without blocking or awaiting.
    """

    def hear(self, frame: Pcm) -> None:
        """One 20 ms frame at the room's rate. The array is only lent for the duration of the
        call: convert or copy it, never keep it."""
        ...

    def notify(self, event: Mapping[str, Any]) -> None:
        """A room event (another member's command, ``participant-joined``, …); a copy of its
        own."""
        ...

    def leg_closed(self, reason: str | None) -> None:
        """The transport ended the leg (room closed, mixer failed); ``reason`` says why."""
        ...


@runtime_checkable
class RoomLeg(Protocol):
    """One member's connection to a room.

    Audio is exchanged as 20 ms frames of int16 mono PCM at ``sample_rate``: the member pushes
    what it says with :meth:`send_audio`; the room pushes what it hears to the member's
    :class:`LegSink`, paced by the process's media clock.
    """

    participant_id: str
    sample_rate: int
    closed_reason: str | None
    """Why the transport ended this leg (the room closed, its mixer failed), when it did."""

    def send_audio(self, frame: Pcm) -> None:
        """Put one 20 ms frame into the room (never blocks; the frame is copied or used at
        once, so the caller may reuse its array)."""
        ...

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send a JSON-able event to every other member. A ``mark`` travels with this
        member's audio (delivered after the audio sent before it); a ``clear`` first drops this
        member's audio still waiting in the room."""
        ...

    def media_stats(self) -> Mapping[str, int]:
        """Counters of this member's inbound audio (frames in and out, drained, underruns…)."""
        ...

    async def leave(self) -> None:
        """Leave the room; idempotent. The sink hears nothing more."""
        ...


@runtime_checkable
class RoomTransport(Protocol):
    """Carries call legs into rooms."""

    name: str
    sample_rate: int

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def join(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> RoomLeg:
        """Join ``room_id`` of ``tenant`` (the API key owning the call); what the member hears
        goes to ``sink``."""
        ...


# --------------------------------------------------------------------------- refs


@dataclass(frozen=True)
class RefRecord:
    """Everything the media-socket claim needs, carried by the single-use ref.

    The webhook request and the media socket may land on different replicas, so this record is
    self-contained.
    """

    call_id: str
    apikey: str
    connector_id: str
    provider: str
    provider_call_id: str
    room_id: str
    transport: str | None = None
    options: StreamOptions = StreamOptions()
    account_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    verify_signatures: bool = False
    trace_parent: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    region: str | None = None
    ingest_url: str | None = None
    """The base URL of the call's media socket (its region's); ``None``: the server's."""


class RefStoreFull(PluginError):
    """The ref store holds as many outstanding refs as it may; try again later."""


@runtime_checkable
class RefStore(Protocol):
    """Issues and atomically claims single-use, expiring call references.

    A ref is consumed only by a claim on its own provider's path; a claim that presents it on
    another provider's path is refused and leaves it claimable.
    """

    name: str

    async def start(self) -> None:
        """Start background work (e.g. a timer sweeping expired refs); called once at start."""
        ...

    async def issue(self, record: RefRecord, ttl_seconds: float, idempotency_key: str) -> str:
        """Return a fresh ref (>=128 bits) for ``record``, valid ``ttl_seconds`` from now.

        If a live, unclaimed ref was already issued under ``idempotency_key`` (a provider
        retrying the same webhook), return that ref instead of issuing a second one.

        Raises:
            RefStoreFull: the store holds as many outstanding refs as it may.
        """
        ...

    async def find(self, idempotency_key: str) -> tuple[str, RefRecord] | None:
        """The live, unclaimed ref issued under ``idempotency_key`` and its record, or
        ``None`` (never issued, claimed, or expired). Nothing is consumed."""
        ...

    async def claim(self, ref: str, provider: str) -> RefRecord | None:
        """Atomically consume ``ref`` if its record belongs to ``provider``; ``None`` if it is
        unknown, expired, already claimed, or another provider's (that ref stays claimable)."""
        ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- webhook signers


@dataclass(frozen=True)
class SignedMessage:
    """What a webhook signature may cover besides the body.

    Attributes:
        id: the event's id (``webhook-id``), the same on every attempt.
        timestamp: Unix seconds of this attempt (``webhook-timestamp``).
        secret: the subscription's own secret (``whsec_…`` for HMAC schemes), if it has one.
    """

    id: str
    timestamp: int
    secret: str | None = None


@runtime_checkable
class KeyStore(Protocol):
    """Keys shared by every replica (kept in the store), by name."""

    async def get_or_create(self, name: str, create: Callable[[], str]) -> str:
        """The key stored under ``name``; if there is none, ``create()``'s, stored first (the
        first replica to store one wins; the others read it)."""
        ...


@runtime_checkable
class WebhookSigner(Protocol):
    """Signs lifecycle-webhook deliveries."""

    name: str

    async def start(self, keys: KeyStore) -> None:
        """Load (or create once, in ``keys``) the signing keys every replica shares; called
        once at start, before the first :meth:`sign`."""
        ...

    def sign(self, body: bytes, message: SignedMessage) -> Mapping[str, str]:
        """Headers to send with ``body`` (exactly these bytes are what is signed). During a
        key rotation's grace period the old key signs alongside the new one."""
        ...

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        secret: str | None = None,
        now: int | None = None,
    ) -> bool:
        """Whether ``headers`` carry a valid signature of ``body`` (for tests and the
        ``callbridge webhooks verify`` tool): ``secret`` for HMAC schemes; timestamped schemes
        refuse a ``webhook-timestamp`` more than 300 s from ``now``."""
        ...

    def new_endpoint_secret(self) -> str | None:
        """A fresh secret for a new subscription (``whsec_…``), or ``None`` when the scheme
        uses no per-endpoint secret."""
        ...

    def public_key_pem(self) -> str | None:
        """The public key receivers verify with, or ``None`` for symmetric schemes."""
        ...
