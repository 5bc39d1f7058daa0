"""WebRTC signalling: ``WS /v2/rooms/{roomId}/rtc``, our own JSON over one WebSocket (the model
of seed 003), terminating the browser's peer connection with aiortc.

Client → server (``type``):

- ``login`` ``{token}``: an API token (``callbridge token``); refused → ``error`` 401, closed 4401.
- ``join`` ``{displayName?, headers?}``: who joins; ``headers`` (string values, at most
  :data:`MAX_HEADERS`) become the member's metadata, which the room's other members see.
- ``offer`` ``{sdp}``: the browser offers (first, or to renegotiate); the server answers
  ``answer`` ``{sdp}`` with all its candidates (aiortc does not trickle). After the first
  answer the member is in the room: ``joined`` ``{participantId, roomId, codec, resumeToken}``.
- ``candidate`` ``{candidate: {candidate, sdpMid, sdpMLineIndex} | null}``: trickled ICE; mDNS
  (``.local``) names are skipped (the server learns the address from the browser's checks).
- ``mute`` / ``unmute``: the member's audio stops / resumes reaching the room; announced to the
  room as ``participant-muted`` / ``participant-unmuted``.
- ``hold`` / ``unhold``: silent both ways until unhold (the page renegotiates ``sendonly`` /
  ``sendrecv`` too); announced as ``participant-held`` / ``participant-unheld``.
- ``dtmf`` ``{digits}``: keypad digits into the room (phone legs play them to their callers).
- ``leave``: the member leaves; the socket closes.
- ``resume`` ``{resumeToken}`` (after ``login``, on a new socket): a member whose socket was
  lost (closed without ``leave``) stays in its room, media flowing, for
  ``rtc.reconnect_grace_seconds``; resuming within it carries on as the same member (``joined``
  with ``resumed: true`` and a new ``resumeToken``; the room sees no left/joined), else it
  leaves.

Server → client: ``login-ok``, ``answer``, ``joined``, ``event`` ``{event: …}`` for every room
event (``participant-joined``/``-left`` with callers' numbers in ``metadata``, ``dtmf``,
``speaking``…), ``speaking`` ``{participantId, level}`` (its own level, dBFS, every
:data:`LEVEL_SECONDS`), ``levels`` ``{levels: {participantId: dBFS}}`` (every member's, callers
included, at the same pace, where the room can tell), and ``error`` ``{code, message}`` for a
message it cannot take (the socket stays open unless the login failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final

import aioice.ice
import structlog
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from litestar import asgi
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from callbridge import safe_json
from callbridge.api.auth import Principal, authenticate_token
from callbridge.api.channel import AsgiSocketChannel
from callbridge.api.errors import ApiError
from callbridge.api.raw_socket import accept, not_a_websocket, server_send
from callbridge.protocols import Participant, PluginError, RoomLeg
from callbridge.rtc.member import RtcMember
from callbridge.runtime import Runtime
from callbridge.store.ids import is_room_id

log = structlog.get_logger("callbridge.rtc")

MAX_HEADERS: Final = 20
MAX_HEADER_CHARS: Final = 256
MAX_DISPLAY_NAME_CHARS: Final = 100
LEVEL_SECONDS: Final = 0.25
_DIGITS = re.compile(r"^[0-9*#A-D]{1,32}$")
_LIMITS: Final = safe_json.JsonLimits(max_bytes=64 * 1024, max_depth=6)
_MIME: Final = {"opus": "audio/opus", "PCMU": "audio/PCMU", "PCMA": "audio/PCMA"}


def use_host_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on ``addresses`` only (``rtc.host_addresses``). aioice has no
    option for it, so its address finder is replaced, for the whole process."""
    if addresses:
        chosen = list(addresses)

        def host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
            return chosen

        aioice.ice.get_host_addresses = host_addresses


@asgi("/v2/rooms/{room_id:str}/rtc")
async def room_rtc(scope: Scope, receive: Receive, send: Send) -> None:
    """WebRTC signalling for one browser member of a room (module docstring)."""
    if scope["type"] != ScopeType.WEBSOCKET:
        await not_a_websocket(scope, receive, send)
        return
    runtime: Runtime = scope["app"].state.runtime
    room_id: str = scope["path_params"]["room_id"]
    if (
        not is_room_id(room_id)
        or runtime.room_transports.get(runtime.settings.participant_transport) is None
    ):
        await send({"type": "websocket.close", "code": 4404, "reason": ""})
        return
    if not await accept(receive, send):
        return
    channel = AsgiSocketChannel(receive, server_send(scope, send))
    session = RtcSession(runtime, room_id, channel)
    with structlog.contextvars.bound_contextvars(room_id=room_id):
        lost = False
        try:
            lost = await session.run()
            if session.resumed is not None:  # this socket took over a parked member
                session = session.resumed
                lost = await session.run()
        finally:
            grace = runtime.settings.rtc.reconnect_grace_seconds
            if lost and session.leg is not None and grace > 0:
                session.park(grace)
            else:
                await session.close()


_PARKED: dict[str, RtcSession] = {}
"""Members whose socket was lost, by resume token, while their grace period runs."""
_DETACHED: set[asyncio.Task[None]] = set()


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RtcSession:
    """One signalling socket and the member it makes."""

    def __init__(self, runtime: Runtime, room_id: str, channel: AsgiSocketChannel) -> None:
        self.runtime = runtime
        self.room_id = room_id
        self.channel = channel
        self.principal: Principal | None = None
        self.participant_id = "w_" + secrets.token_hex(6)
        self.display_name = ""
        self.metadata: dict[str, str] = {}
        self.joined_requested = False
        self.pc: RTCPeerConnection | None = None
        self.member: RtcMember | None = None
        self.leg: RoomLeg | None = None
        self._early_candidates: list[dict[str, Any] | None] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        self.resume_token = secrets.token_urlsafe(24)
        self.resumed: RtcSession | None = None
        """The parked session this socket resumed (it carries on as that member)."""
        self._grace: asyncio.TimerHandle | None = None

    async def run(self) -> bool:
        """Serve the socket; ``True`` when it was lost (closed without ``leave``)."""
        while not self._ended.is_set():
            receiving = asyncio.ensure_future(self.channel.receive())
            ended = asyncio.ensure_future(self._ended.wait())
            done, _ = await asyncio.wait({receiving, ended}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                ended.cancel()
                return False
            ended.cancel()
            message = receiving.result()
            if message is None:
                return True
            try:
                if not await self._handle(message):
                    return False
            except _Refused as refused:
                self._send({"type": "error", "code": refused.code, "message": refused.message})
                if refused.code in (401, 403):
                    return False
        return False

    # ------------------------------------------------------------------ reconnection

    def park(self, grace: float) -> None:
        """The socket was lost: keep the member (in its room, its media flowing) for
        ``grace`` seconds, for a new socket to ``resume`` it."""
        _PARKED[self.resume_token] = self
        log.info("rtc member parked", participant_id=self.participant_id, grace_s=grace)

        def expire() -> None:
            if _PARKED.pop(self.resume_token, None) is self:
                log.info("rtc member not resumed in time", participant_id=self.participant_id)
                self._spawn_detached(self.close())

        self._grace = asyncio.get_running_loop().call_later(grace, expire)

    def _resume(self, data: Mapping[str, Any]) -> bool:
        token = data.get("resumeToken")
        parked = _PARKED.get(token) if isinstance(token, str) else None
        principal = self.principal
        if (
            parked is None
            or principal is None
            or parked.principal is None
            or parked.principal.apikey != principal.apikey
            or parked.room_id != self.room_id
        ):
            raise _Refused(404, "nothing to resume (too late, or another room)")
        del _PARKED[parked.resume_token]
        if parked._grace is not None:
            parked._grace.cancel()
        parked.channel = self.channel
        parked.resume_token = secrets.token_urlsafe(24)
        self.resumed = parked
        log.info("rtc member resumed", participant_id=parked.participant_id)
        parked._send_joined(resumed=True)
        return False

    async def _handle(self, message: str | bytes) -> bool:
        """Handle one message; ``False`` ends the session."""
        try:
            data = safe_json.decode(message, _LIMITS)
        except safe_json.JsonInputError:
            raise _Refused(400, "not a JSON object") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise _Refused(400, "a message is a JSON object with a type")
        kind = data["type"]
        if kind == "login":
            await self._login(data)
            return True
        if self.principal is None:
            raise _Refused(401, "login first")
        if kind == "leave":
            return False
        if kind == "resume":
            return self._resume(data)
        if kind == "join":
            self._join(data)
        elif kind == "offer":
            await self._offer(data)
        elif kind == "candidate":
            await self._candidate(data.get("candidate"))
        elif kind in ("mute", "unmute", "hold", "unhold"):
            self._toggle(kind)
        elif kind == "dtmf":
            self._dtmf(data.get("digits"))
        else:
            raise _Refused(400, f"unknown message type {kind[:32]!r}")
        return True

    # ------------------------------------------------------------------ steps

    async def _login(self, data: Mapping[str, Any]) -> None:
        token = data.get("token")
        if not isinstance(token, str):
            raise _Refused(401, "login needs a token")
        try:
            principal = await authenticate_token(token, self.runtime.db, self.runtime.clock)
        except ApiError as exc:
            log.info("rtc login refused", reason=exc.message)
            raise _Refused(401, exc.message) from None
        if not principal.may_join(self.room_id):
            log.info("rtc login refused", reason="the token may not join this room")
            raise _Refused(403, "this token may not join this room")
        self.principal = principal
        self._send({"type": "login-ok"})

    def _join(self, data: Mapping[str, Any]) -> None:
        if self.joined_requested:
            raise _Refused(409, "already joined")
        name = data.get("displayName", "")
        if not isinstance(name, str):
            raise _Refused(400, "displayName: a string")
        self.display_name = "".join(c for c in name if c.isprintable())[:MAX_DISPLAY_NAME_CHARS]
        headers = data.get("headers", {})
        if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
            raise _Refused(400, f"headers: an object of at most {MAX_HEADERS} strings")
        for key, value in headers.items():
            if not isinstance(value, str) or len(key) > 64 or len(value) > MAX_HEADER_CHARS:
                raise _Refused(400, f"headers: string values of at most {MAX_HEADER_CHARS} chars")
        self.metadata = {str(key): value for key, value in headers.items()}
        self.joined_requested = True

    async def _offer(self, data: Mapping[str, Any]) -> None:
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise _Refused(400, "offer needs an sdp")
        if not self.joined_requested:
            raise _Refused(409, "join first")
        first = self.pc is None
        if first:
            self.pc = self._peer_connection()
        pc = self.pc
        assert pc is not None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if first:
                for candidate in self._early_candidates:
                    await self._add_candidate(candidate)
                self._early_candidates.clear()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises plain ValueError/RuntimeError/… on bad SDP
            log.info("rtc offer refused", reason=str(exc)[:200])
            raise _Refused(400, "the offer cannot be taken") from None
        local = pc.localDescription
        self._send({"type": "answer", "sdp": local.sdp})
        if first:
            await self._enter_room()

    def _peer_connection(self) -> RTCPeerConnection:
        settings = self.runtime.settings.rtc
        servers = [
            RTCIceServer(
                urls=server.urls,
                username=server.username,
                credential=server.credential.get_secret_value() if server.credential else None,
            )
            for server in settings.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        transport = self.runtime.room_transports[self.runtime.settings.participant_transport]
        self.member = RtcMember(transport.sample_rate, self._room_event, self._room_closed)
        transceiver = pc.addTransceiver("audio", direction="sendrecv")
        available = RTCRtpSender.getCapabilities("audio").codecs
        preferred = [
            codec
            for name in settings.codecs
            for codec in available
            if codec.mimeType.lower() == _MIME[name].lower()
        ]
        if preferred:
            transceiver.setCodecPreferences(preferred)
        transceiver.sender.replaceTrack(self.member.track)
        member = self.member

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self._spawn(member.consume(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                log.info("rtc connection ended", state=pc.connectionState)
                self._ended.set()

        return pc

    async def _enter_room(self) -> None:
        runtime, member = self.runtime, self.member
        assert self.principal is not None and member is not None
        transport = runtime.room_transports[runtime.settings.participant_transport]
        participant = Participant(
            self.participant_id,
            "client",
            display_name=self.display_name,
            metadata={**self.metadata, "via": "webrtc"},
        )
        try:
            self.leg = await transport.join(
                self.principal.apikey, self.room_id, participant, member
            )
        except PluginError as exc:
            log.warning("rtc room join failed", reason=str(exc))
            raise _Refused(409, "the room refused the member") from None
        member.leg = self.leg
        log.info("rtc member joined", participant_id=self.participant_id, codec=self._codec())
        self._send_joined(resumed=False)
        others = getattr(self.leg, "others", None)  # a local room lists who is there already
        if others is not None:
            for event in others():
                self._room_event(event)
        self._spawn(self._report_levels())

    def _send_joined(self, *, resumed: bool) -> None:
        self._send(
            {
                "type": "joined",
                "participantId": self.participant_id,
                "roomId": self.room_id,
                "codec": self._codec(),
                "resumeToken": self.resume_token,
                "resumed": resumed,
            }
        )

    def _codec(self) -> str | None:
        pc = self.pc
        if pc is None:
            return None
        for transceiver in pc.getTransceivers():
            codecs = getattr(transceiver, "_codecs", None) or []
            if codecs:
                return str(codecs[0].mimeType).split("/", 1)[1]
        return None

    async def _candidate(self, candidate: Any) -> None:
        if candidate is not None and not isinstance(candidate, dict):
            raise _Refused(400, "candidate: an object or null")
        if self.pc is None or self.pc.remoteDescription is None:
            self._early_candidates.append(candidate)
            return
        await self._add_candidate(candidate)

    async def _add_candidate(self, data: dict[str, Any] | None) -> None:
        assert self.pc is not None
        text = (data or {}).get("candidate")
        if not text:
            with contextlib.suppress(Exception):
                await self.pc.addIceCandidate(None)
            return
        try:
            candidate = candidate_from_sdp(str(text).split(":", 1)[-1])
        except (ValueError, IndexError):
            raise _Refused(400, "candidate: not an ICE candidate line") from None
        if candidate.ip.endswith(".local"):
            return  # no mDNS lookups: the browser's checks teach us its address
        candidate.sdpMid = (data or {}).get("sdpMid")
        candidate.sdpMLineIndex = (data or {}).get("sdpMLineIndex")
        await self.pc.addIceCandidate(candidate)

    def _toggle(self, kind: str) -> None:
        member, leg = self.member, self.leg
        if member is None or leg is None:
            raise _Refused(409, "not in the room yet")
        if kind in ("mute", "unmute"):
            member.muted = kind == "mute"
        else:
            member.held = kind == "hold"
        event = {"mute": "muted", "unmute": "unmuted", "hold": "held", "unhold": "unheld"}[kind]
        leg.send_event({"event": f"participant-{event}", "participantId": self.participant_id})
        self._send({"type": event})

    def _dtmf(self, digits: Any) -> None:
        if self.leg is None:
            raise _Refused(409, "not in the room yet")
        if not isinstance(digits, str) or not _DIGITS.match(digits):
            raise _Refused(400, "digits: 1-32 of 0-9 * # A-D")
        self.leg.send_event({"event": "dtmf", "digits": digits})

    # ------------------------------------------------------------------ server → client

    def _send(self, message: Mapping[str, Any]) -> None:
        if not self.channel.closed:
            self.channel.send_text(json.dumps(message, separators=(",", ":")))

    def _room_event(self, event: Mapping[str, Any]) -> None:
        self._send({"type": "event", "event": dict(event)})

    def _room_closed(self, reason: str | None) -> None:
        log.info("rtc member's leg closed by the room", reason=reason)
        self._ended.set()

    async def _report_levels(self) -> None:
        member = self.member
        assert member is not None
        while True:
            await asyncio.sleep(LEVEL_SECONDS)
            level = round(member.level_dbfs, 1)
            message = {"participantId": self.participant_id, "level": level}
            self._send({"type": "speaking", **message})
            levels = getattr(self.leg, "levels", None)  # a local room knows everyone's
            if levels is not None:
                self._send({"type": "levels", "levels": levels()})
            elif self.leg is not None:
                self.leg.send_event({"event": "speaking", **message})

    @staticmethod
    def _spawn_detached(work: Any) -> None:
        task = asyncio.ensure_future(work)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leg is not None:
            await self.leg.leave()
            log.info(
                "rtc member left",
                participant_id=self.participant_id,
                frames_in=self.member.frames_in if self.member else 0,
                frames_out=self.member.frames_out if self.member else 0,
            )
        if self.member is not None:
            self.member.track.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        await self.channel.close()
