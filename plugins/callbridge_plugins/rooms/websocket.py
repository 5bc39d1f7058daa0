"""The ``websocket`` room transport: voice agents as room members over an outbound WebSocket.

Rooms are ``local`` rooms (same media clock, playout buffers, direct forwarding and mixing); this
transport adds one more member to them, an *agent*: a WebSocket server somewhere (a voice bot)
that callbridge connects out to. The agent joins as ``Participant(kind="agent",
playout="queue")``, so it may stream synthesized speech faster than real time: the room plays it
in order at real time, and ``mark``/``clear`` manage it exactly as for a participant that joined
with ``playout=queue``.

When an agent is started (``mode``):

- ``per_call`` (default): one agent connection per phone call, started when a participant of
  kind ``caller`` joins (its ``participant_id`` is the call id) and stopped when that call's leg
  leaves the room.
- ``per_room``: one agent connection per room, started when the first member that is not an
  agent joins and stopped when the last such member leaves.

The URL is a template: ``{roomId}``, ``{callId}`` (empty in ``per_room`` mode), ``{tenant}`` and
``{participantId}`` (the agent's own member id) are substituted, URL-quoted. ``headers`` (e.g.
``Authorization``) are sent with the handshake and never logged.

Protocol, from callbridge to the agent:

1. One JSON text message when the socket opens::

     {"event": "start", "callId": "call_…", "roomId": "support", "caller": "+14155550100",
      "callee": "+14155550199", "metadata": {"callId": "call_…", "provider": "twilio"},
      "sampleRate": 16000, "encoding": "pcm_s16le", "frameMs": 20}

   ``caller`` and ``callee`` are the call's ``from`` and ``to`` (``null`` when unknown),
   ``metadata`` the call participant's other metadata. In ``per_room`` mode ``callId``,
   ``caller`` and ``callee`` are ``null`` and ``metadata`` is empty. The tenant (API key) is
   never sent.
2. Right after it, one ``participant-joined`` event per member already in the room (in
   ``per_call`` mode that includes the agent's own call).
3. Binary messages: what the agent hears, 20 ms of mono PCM16-LE at ``sampleRate`` each (the
   call's audio, or the mix of every other member), 50 a second.
4. JSON text events: every room event the agent's member is told of: ``participant-joined``,
   ``participant-left``, ``{"event": "dtmf", "digit": "5", "callId": …}`` from a caller,
   ``{"event": "mark", "name": …, "status": "played" | "cleared", "callId": …}`` for the
   agent's own marks, and so on.
5. ``{"event": "stop", "reason": …}`` just before callbridge closes the socket (close code
   1000; 1001 when the server shuts down).

From the agent to callbridge:

- Binary messages: what the agent says, mono PCM16-LE at ``sampleRate``, chunks of any size
  (re-framed into 20 ms; an odd trailing byte waits for the next chunk), as fast as it likes:
  the room plays them at real time, in order, up to ``room.queue_max_frames``.
- JSON text commands, exactly as on the participant socket: ``{"event": "clear"}``,
  ``{"event": "mark", "name": "utt-7"}``, ``{"event": "hangup", "reason"?}``,
  ``{"event": "transfer", "roomId": …, "transport"?}``, ``{"event": "dtmf", "digits": "12#"}``.
  In ``per_call`` mode a command without ``callId`` is addressed to the agent's own call.
  Anything else is counted as malformed and dropped; a message larger than
  ``max_message_bytes`` closes the connection (1009), which then reconnects.

Failures: a connect that fails, or a socket that drops, is retried with exponential backoff
(0.2 s doubling to 2 s) until ``reconnect_deadline_seconds`` have passed since the failure began;
every successful connect sends a fresh ``start``. While disconnected the agent is not a member
of the room (a caller alone hears silence). When the deadline passes, the call (``per_call``)
or every member of the room (``per_room``) is told ``{"event": "transfer", "roomId":
fallback_room, "transport"?: fallback_transport, "callId": …}`` if ``fallback_room`` is set,
else ``{"event": "hangup", "reason": "agent unavailable", "callId": …}``; the call bridge acts
on it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import structlog
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from callbridge import hookimpl
from callbridge.media.framing import FrameAssembler
from callbridge.plugin_types import RoomTransportPlugin
from callbridge.protocols import LegSink, Participant, Pcm, PluginContext, PluginError, RoomLeg
from callbridge.redaction import remember_secrets
from callbridge.room_events import parse_command
from callbridge.store.ids import is_room_id
from callbridge_plugins.rooms.local import LocalLeg, LocalRooms, LocalRoomsConfig

log = structlog.get_logger("callbridge.rooms.websocket")

PLACEHOLDERS = frozenset({"roomId", "callId", "tenant", "participantId"})
"""The names the URL template may use."""
MAX_PENDING_FRAMES = 50
"""Audio frames (1 s) that may wait for an agent's socket; beyond, the oldest is dropped."""
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 2.0
"""How long the closing handshake with an agent may take."""
UNAVAILABLE = "agent unavailable"

_PCM = np.dtype("<i2")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RoomKey = tuple[str, str]
_AgentKey = tuple[str, str, str | None]


class WebSocketRoomsConfig(BaseModel):
    """Options of the ``websocket`` room transport."""

    # The URL's query string may hold a token: validation errors do not quote values.
    model_config = {"extra": "forbid", "hide_input_in_errors": True}

    url: str = Field(
        ...,
        description="The agent's WebSocket URL (ws:// or wss://), a template: {roomId}, "
        "{callId}, {tenant} and {participantId} are substituted, URL-quoted.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="HTTP headers sent with the handshake (e.g. Authorization, as {$env} or "
        "{$file}); never logged.",
    )
    mode: Literal["per_call", "per_room"] = Field(
        default="per_call",
        description="per_call: one agent connection per phone call in the room; per_room: one "
        "per room, while it has members other than agents.",
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Longest wait for one connect and handshake."
    )
    reconnect_deadline_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How long to keep retrying (backoff 0.2 s doubling to 2 s) after a failed "
        "connect or a dropped socket before giving up on the agent.",
    )
    fallback_room: str | None = Field(
        default=None,
        description="Room the call is transferred to when the agent cannot be reached; without "
        "it the call is hung up.",
    )
    fallback_transport: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Room transport of fallback_room; default: rooms.default.",
    )
    display_name: str = Field(
        default="agent",
        max_length=100,
        description="The agent member's display name, shown to the room in participant-joined.",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest message the agent may send; a larger one closes the connection "
        "(1009).",
    )
    room: LocalRoomsConfig = Field(
        default_factory=LocalRoomsConfig,
        description="Options of the local rooms the agents join (sample_rate, playout, …); "
        "the agent's audio is exchanged at room.sample_rate.",
    )

    @field_validator("url")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            fields = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"url: not a valid template ({exc})") from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                choices = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
                raise ValueError(f"url: unknown placeholder {{{name}}}; choose from {choices}")
            if spec or conversion:
                raise ValueError(f"url: placeholder {{{name}}} takes no format or conversion")
        sample = render_url(value, dict.fromkeys(PLACEHOLDERS, "x"))
        if urlsplit(sample).scheme.lower() not in ("ws", "wss"):
            raise ValueError("url: must be a ws:// or wss:// URL")
        try:
            parse_uri(sample)
        except InvalidURI:
            raise ValueError("url: not a valid WebSocket URL") from None
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if any(c in value.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"headers: the value of {name} has a line break or NUL")
        return headers

    @field_validator("fallback_room")
    @classmethod
    def _valid_room(cls, value: str | None) -> str | None:
        if value is not None and not is_room_id(value):
            raise ValueError("fallback_room: not a valid room id")
        return value

    @model_validator(mode="after")
    def _transport_needs_room(self) -> WebSocketRoomsConfig:
        if self.fallback_transport is not None and self.fallback_room is None:
            raise ValueError("fallback_transport is set without fallback_room")
        return self


def render_url(template: str, values: Mapping[str, str]) -> str:
    """``template`` with its placeholders replaced by URL-quoted ``values``."""
    return template.format_map({name: quote(value, safe="") for name, value in values.items()})


def loggable_url(url: str) -> str:
    """Scheme, host, port and path of ``url``: no credentials, query string or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class AgentStats:
    """Counters of one agent (over all its connections).

    Attributes:
        connects: successful connects.
        frames_sent: audio frames written to the agent.
        frames_received: 20 ms frames the agent's audio made, put into the room.
        events_sent: text events written to the agent.
        commands: commands from the agent put into the room.
        malformed: text messages from the agent that were no command (dropped).
        dropped: audio frames to the agent dropped because its socket fell behind.
    """

    connects: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    events_sent: int = 0
    commands: int = 0
    malformed: int = 0
    dropped: int = 0


class _Member:
    __slots__ = ("participant", "sink")

    def __init__(self, participant: Participant, sink: LegSink) -> None:
        self.participant = participant
        self.sink = sink


class _TrackedLeg:
    """A member's :class:`LocalLeg` whose ``leave`` the transport hears of (to stop agents)."""

    def __init__(self, leg: LocalLeg, on_leave: Callable[[], None]) -> None:
        self.inner = leg
        self.participant_id = leg.participant_id
        self.sample_rate = leg.sample_rate
        # Bound methods, not wrappers: no extra call per frame.
        self.send_audio: Callable[[Pcm], None] = leg.send_audio
        self.send_event: Callable[[Mapping[str, Any]], None] = leg.send_event
        self.media_stats: Callable[[], Mapping[str, int]] = leg.media_stats
        self._on_leave: Callable[[], None] | None = on_leave

    @property
    def closed_reason(self) -> str | None:
        return self.inner.closed_reason

    @closed_reason.setter
    def closed_reason(self, reason: str | None) -> None:
        self.inner.closed_reason = reason

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def leave(self) -> None:
        await self.inner.leave()
        on_leave, self._on_leave = self._on_leave, None
        if on_leave is not None:
            on_leave()


class _Outbox:
    """The agent member's sink for one connection: what it hears, queued for its socket.

    ``hear`` and ``notify`` run on the media clock's tick and cannot await, so messages wait
    in a deque that one writer task per connection drains. That costs one task wake-up per
    message batch per agent (an ``asyncio.Event``), not per room or per member; audio beyond
    :data:`MAX_PENDING_FRAMES` (the agent's socket fell a second behind) is dropped oldest
    first, text events never.
    """

    def __init__(self, agent: _Agent) -> None:
        self._agent = agent
        self._stats = agent.stats
        self._pending: deque[str | bytes] = deque()
        self._audio = 0
        self._wake = asyncio.Event()
        self.live = True

    def hear(self, frame: Pcm) -> None:
        if not self.live:
            return
        if self._audio >= MAX_PENDING_FRAMES:
            self._drop_oldest_audio()
        self._pending.append(frame.astype(_PCM, copy=False).tobytes())
        self._audio += 1
        self._wake.set()

    def notify(self, event: Mapping[str, Any]) -> None:
        if self.live:
            self.send_text(json.dumps(event))

    def leg_closed(self, reason: str | None) -> None:
        if self.live:
            self.live = False
            self._agent.room_closed(reason)

    def send_text(self, text: str) -> None:
        self._pending.append(text)
        self._wake.set()

    def _drop_oldest_audio(self) -> None:
        for index, message in enumerate(self._pending):
            if isinstance(message, bytes):
                del self._pending[index]
                self._audio -= 1
                self._stats.dropped += 1
                return

    async def drain(self, socket: ClientConnection) -> None:
        """Write what is pending, in order, until the socket closes."""
        pending = self._pending
        try:
            while True:
                if not pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                message = pending.popleft()
                if isinstance(message, bytes):
                    self._audio -= 1
                    self._stats.frames_sent += 1
                else:
                    self._stats.events_sent += 1
                await socket.send(message)
        except ConnectionClosed:
            return


class _Agent:
    """One agent: connects out, joins the room while connected, reconnects, gives up."""

    def __init__(
        self,
        rooms: WebSocketRooms,
        tenant: str,
        room_id: str,
        call: Participant | None,
        fallback_sinks: Callable[[], list[LegSink]],
    ) -> None:
        config = rooms.config
        self.stats = AgentStats()
        self.participant = Participant(
            participant_id="agent_" + secrets.token_hex(6),
            kind="agent",
            display_name=config.display_name,
            playout="queue",
        )
        self.tenant = tenant
        self.room_id = room_id
        self.call_id = call.participant_id if call is not None else None
        self._rooms = rooms
        self._config = config
        self._call = call
        self._fallback_sinks = fallback_sinks
        self._url = render_url(
            config.url,
            {
                "roomId": room_id,
                "callId": self.call_id or "",
                "tenant": tenant,
                "participantId": self.participant.participant_id,
            },
        )
        self._log = log.bind(
            room_id=room_id, call_id=self.call_id, agent_url=loggable_url(self._url)
        )
        self._stop: tuple[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        """Whether the agent was stopped or gave up."""
        return self._task is not None and self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"agent {self.participant.participant_id}"
        )

    async def stop(self, reason: str, code: int = 1000) -> None:
        """Leave the room, tell the agent ``stop`` and close its socket; idempotent."""
        task = self._task
        if self._stop is None:
            self._stop = (reason, code)
            if task is not None:
                task.cancel()
        if task is not None:
            await asyncio.wait({task})

    def room_closed(self, reason: str | None) -> None:
        """The room ended the agent's leg (the room was closed or its mixer failed)."""
        self._rooms.spawn(self.stop(reason or "room closed"))

    async def _run(self) -> None:
        try:
            await self._connect_and_serve()
        except Exception:
            # A bug, not the network: the call must not stay silent with nobody to answer.
            self._log.exception("agent failed")
            self._give_up()

    async def _connect_and_serve(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST_SECONDS
        failing_since: float | None = None
        while True:
            attempt = loop.time()
            try:
                socket = await connect(
                    self._url,
                    additional_headers={
                        name: value.get_secret_value()
                        for name, value in self._config.headers.items()
                    },
                    open_timeout=self._config.connect_timeout_seconds,
                    close_timeout=CLOSE_TIMEOUT_SECONDS,
                    max_size=self._config.max_message_bytes,
                    compression=None,  # PCM does not compress; deflate would only cost CPU
                )
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if failing_since is None:
                    failing_since = attempt
                self._log.warning("agent connect failed", error=_describe(exc))
                remaining = self._config.reconnect_deadline_seconds - (loop.time() - failing_since)
                if remaining <= 0:
                    self._give_up()
                    return
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            backoff = BACKOFF_FIRST_SECONDS
            failing_since = None
            self.stats.connects += 1
            if not await self._session(socket):
                return
            failing_since = loop.time()

    async def _session(self, socket: ClientConnection) -> bool:
        """Be a member of the room while ``socket`` is open; whether to reconnect."""
        outbox = _Outbox(self)
        outbox.send_text(json.dumps(self._start_message()))
        for member in self._rooms.members(self.tenant, self.room_id):
            outbox.send_text(json.dumps(_joined_event(member)))
        try:
            leg = await self._rooms.local.join(self.tenant, self.room_id, self.participant, outbox)
        except PluginError as exc:
            self._log.warning("agent cannot join the room", error=str(exc))
            await socket.close(1011, "cannot join the room")
            return False
        self._log.info("agent connected", participant_id=self.participant.participant_id)
        writer = asyncio.create_task(outbox.drain(socket))
        reader = asyncio.create_task(self._read(socket, leg))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            outbox.live = False
            await leg.leave()
            reader.cancel()
            writer.cancel()
            for result in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(result, Exception):
                    self._log.error("agent session failed", exc_info=result)
            if self._stop is not None:
                await self._goodbye(socket, *self._stop)
            else:
                code = socket.close_code
                self._log.warning(
                    "agent connection lost",
                    close_code=None if code is None else int(code),
                    **asdict(self.stats),
                )
                await socket.close()
        return True

    async def _goodbye(self, socket: ClientConnection, reason: str, code: int) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await socket.send(json.dumps({"event": "stop", "reason": reason}))
        except (ConnectionClosed, TimeoutError):
            pass
        await socket.close(code, reason)
        self._log.info("agent stopped", reason=reason, **asdict(self.stats))

    async def _read(self, socket: ClientConnection, leg: LocalLeg) -> None:
        frame_samples = leg.sample_rate // 50
        frame_bytes = frame_samples * 2
        assembler = FrameAssembler(frame_samples)
        odd = b""
        stats = self.stats
        call_id = self.call_id
        try:
            async for message in socket:
                if isinstance(message, bytes):
                    if odd:
                        message, odd = odd + message, b""
                    if len(message) == frame_bytes and not assembler.pending:
                        leg.send_audio(np.frombuffer(message, dtype=_PCM))
                        stats.frames_received += 1
                        continue
                    usable = len(message) & ~1
                    odd = message[usable:]
                    if usable:
                        pcm = np.frombuffer(message, dtype=_PCM, count=usable // 2)
                        for frame in assembler.push(pcm):
                            leg.send_audio(frame)
                            stats.frames_received += 1
                    continue
                command = parse_command(message)
                if command is None:
                    stats.malformed += 1
                    continue
                event: dict[str, Any] = dict(command)
                if call_id is not None and "callId" not in event:
                    event["callId"] = call_id
                if event["event"] == "clear":
                    assembler.clear()  # the unfinished frame belongs to the cleared audio
                    odd = b""
                stats.commands += 1
                leg.send_event(event)
        except ConnectionClosed:
            return

    def _start_message(self) -> dict[str, Any]:
        metadata = dict(self._call.metadata) if self._call is not None else {}
        return {
            "event": "start",
            "callId": self.call_id,
            "roomId": self.room_id,
            "caller": metadata.pop("from", None),
            "callee": metadata.pop("to", None),
            "metadata": metadata,
            "sampleRate": self._rooms.sample_rate,
            "encoding": "pcm_s16le",
            "frameMs": 20,
        }

    def _give_up(self) -> None:
        event: dict[str, Any]
        if self._config.fallback_room is not None:
            event = {"event": "transfer", "roomId": self._config.fallback_room}
            if self._config.fallback_transport is not None:
                event["transport"] = self._config.fallback_transport
        else:
            event = {"event": "hangup", "reason": UNAVAILABLE, "unavailable": True}
        if self.call_id is not None:
            event["callId"] = self.call_id
        self._log.warning(UNAVAILABLE, fallback=event["event"])
        for sink in self._fallback_sinks():
            try:
                sink.notify(dict(event))
            except Exception:
                self._log.exception("member's sink failed")


def _describe(exc: BaseException) -> str:
    """What went wrong connecting, without the URL (its query string may hold a secret)."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _joined_event(participant: Participant) -> dict[str, Any]:
    return {
        "event": "participant-joined",
        "participantId": participant.participant_id,
        "kind": participant.kind,
        "displayName": participant.display_name,
        "metadata": dict(participant.metadata),
    }


class WebSocketRooms:
    """Local rooms with a voice agent connected over WebSocket as one more member (a
    :class:`~callbridge.protocols.RoomTransport`; see the module docstring for the protocol)."""

    name = "websocket"

    def __init__(self, config: WebSocketRoomsConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.local = LocalRooms(config.room, context)
        self.sample_rate: int = self.local.sample_rate
        self._members: dict[_RoomKey, dict[str, _Member]] = {}
        self._agents: dict[_AgentKey, _Agent] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        remember_secrets(value.get_secret_value() for value in config.headers.values())

    def members_by_kind(self) -> dict[str, int]:
        """How many members the agents' rooms have, by kind (for metrics)."""
        return self.local.members_by_kind()

    async def start(self) -> None:
        await self.local.start()

    async def aclose(self) -> None:
        """Stop every agent (``stop``, close code 1001), then end every room."""
        self._closed = True
        agents = list(self._agents.values())
        self._agents.clear()
        await asyncio.gather(*(agent.stop("shutdown", 1001) for agent in agents))
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.local.aclose()
        self._members.clear()

    async def join(
        self, tenant: str, room_id: str, participant: Participant, sink: LegSink
    ) -> RoomLeg:
        """Join ``room_id`` of ``tenant`` and start the agent this member brings, if any.

        Raises:
            PluginError: the transport is closed, or ``participant_id`` is already in the room.
        """
        if self._closed:
            raise PluginError("the websocket room transport is closed")
        leg = await self.local.join(tenant, room_id, participant, sink)
        key = (tenant, room_id)
        self._members.setdefault(key, {})[participant.participant_id] = _Member(participant, sink)
        if participant.kind == "caller" and self.config.mode == "per_call":
            agent_key: _AgentKey = (tenant, room_id, participant.participant_id)
            self._start_agent(agent_key, participant, lambda: [sink])
        elif participant.kind != "agent" and self.config.mode == "per_room":
            agent_key = (tenant, room_id, None)
            agent = self._agents.get(agent_key)
            if agent is None or agent.finished:
                self._start_agent(agent_key, None, lambda: self._member_sinks(key))
        return _TrackedLeg(leg, lambda: self._left(key, participant))

    def members(self, tenant: str, room_id: str) -> list[Participant]:
        """Members of the room that joined through :meth:`join` (agents of this transport are
        not among them)."""
        return [member.participant for member in self._members.get((tenant, room_id), {}).values()]

    def agent_stats(
        self, tenant: str, room_id: str, call_id: str | None = None
    ) -> AgentStats | None:
        """Counters of the room's agent (``per_room``) or of ``call_id``'s (``per_call``)."""
        agent = self._agents.get((tenant, room_id, call_id))
        return None if agent is None else agent.stats

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; :meth:`aclose` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_agent(
        self,
        key: _AgentKey,
        call: Participant | None,
        fallback_sinks: Callable[[], list[LegSink]],
    ) -> None:
        agent = _Agent(self, key[0], key[1], call, fallback_sinks)
        self._agents[key] = agent
        agent.start()

    def _stop_agent(self, key: _AgentKey, reason: str) -> None:
        agent = self._agents.pop(key, None)
        if agent is not None:
            self.spawn(agent.stop(reason))

    def _member_sinks(self, key: _RoomKey) -> list[LegSink]:
        return [
            m.sink for m in self._members.get(key, {}).values() if m.participant.kind != "agent"
        ]

    def _left(self, key: _RoomKey, participant: Participant) -> None:
        members = self._members.get(key, {})
        members.pop(participant.participant_id, None)
        if not members:
            self._members.pop(key, None)
        if self.config.mode == "per_call":
            if participant.kind == "caller":
                self._stop_agent((*key, participant.participant_id), "call ended")
        elif not any(m.participant.kind != "agent" for m in members.values()):
            self._stop_agent((*key, None), "room empty")


@hookimpl
def callbridge_room_transports() -> Iterator[RoomTransportPlugin]:
    """Register the ``websocket`` room transport."""
    yield RoomTransportPlugin(
        name="websocket",
        factory=WebSocketRooms,
        config_model=WebSocketRoomsConfig,
        description="Local rooms with a voice agent connected over an outbound WebSocket",
    )
