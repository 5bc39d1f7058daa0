"""SIP calls: an authenticated INVITE becomes a call in a room, with the same life as a provider
call (record and state machine, routing, room join, lifecycle events, one trace, metrics), and
its dialog carries the rest (ACK, BYE either way, CANCEL, re-INVITE and UPDATE for hold and
session refresh, INFO key presses).

The room comes from the Request-URI's user part (its host may be a proxy's). A user part that
is a phone number (digits, an optional leading ``+``) goes through the routing chain first, with
the same rules and explain as provider calls; when no strategy routes it, a number that is a
valid room id is that room. The call record's connector is the SIP credential that
authenticated the INVITE and its provider is ``sip``.

Answer: early offer (SDP in the INVITE): the room is joined first and the 200 OK (with our SDP
answer) goes out then, so a room that refuses the call is a 480, not an answered call that
hangs up. Late offer (no SDP): the 200 OK carries our offer at once, the answer comes in the
ACK, and the call joins its room then. The 2xx is retransmitted (UDP) from T1 doubling to T2
until its ACK; without an ACK in 32 s the call ends with BYE (RFC 3261 §13.3.1.4).

Several replicas (``cluster.redis_url``): in ``direct`` room mode an INVITE for a room homed on
another replica is redirected there (302, Contact at that replica's ``sip.address``; trunks and
softphones follow it); in ``relay`` mode the call is taken where it lands and its audio relayed
to the room's home like any other member's.

Refusals, each with a ``Reason`` text: 404 (no room in the Request-URI, no route for a number),
480 (the room refused the call), 486 (``sip.max_calls`` calls are up), 488 (an offer we cannot
take, with ``Warning``), 422 (a session interval under 90 s), 503 (the server drains, no RTP
ports), 487 (cancelled).

Session timers (RFC 4028): a ``Session-Expires`` is accepted and echoed with the caller as
refresher; refreshes (re-INVITE or UPDATE) are answered. The interval is not enforced: an RTP
silence of ``sip.rtp_timeout_seconds`` ends a call whose caller vanished.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from callbridge.calls.intake import call_region, home_elsewhere, routing_context, traced_route
from callbridge.calls.session import CallSession, run_call
from callbridge.calls.state import DuplicateCallError, EndReason
from callbridge.protocols import (
    CallInfo,
    CodecSpec,
    RefRecord,
    Route,
    RoutingContext,
    StreamOptions,
)
from callbridge.runtime import Runtime
from callbridge.sip.auth import SipPrincipal
from callbridge.sip.dialogs import Dialog, new_branch
from callbridge.sip.endpoint import ALLOW, Incoming, SipEndpoint, reason_header
from callbridge.sip.info import InfoRefused, info_digit
from callbridge.sip.media import RtpStream
from callbridge.sip.message import Parsed
from callbridge.sip.ports import PortsExhausted, RtpPortAllocator
from callbridge.sip.sdp import SdpError, SdpSession
from callbridge.sip.transactions import T1, T2, TIMER_H, Key
from callbridge.store.ids import is_room_id, new_call_id
from callbridge.telemetry import current_trace_parent

log = structlog.get_logger("callbridge.sip.calls")

PROVIDER: Final = "sip"
MIN_SESSION_EXPIRES: Final = 90
"""RFC 4028's smallest session interval; a smaller one is refused with 422."""
RETRY_AFTER_SECONDS: Final = 5
LATE_OFFER_CODEC: Final = CodecSpec(name="PCMU", sample_rate=8000)
"""What a late-offer call's record names until the ACK's answer says (our offer's first)."""
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
_SESSION_EXPIRES = re.compile(r"^\s*([0-9]{1,10})")
_REFUSALS: Final = {
    EndReason.NO_ROOM: (480, "Temporarily Unavailable"),
    EndReason.AGENT_UNAVAILABLE: (480, "Temporarily Unavailable"),
    EndReason.SHUTDOWN: (503, "Service Unavailable"),
    EndReason.CANCELLED: (487, "Request Terminated"),
    EndReason.API_HANGUP: (480, "Temporarily Unavailable"),
    EndReason.ROOM_HANGUP: (480, "Temporarily Unavailable"),
}
"""The final response to an INVITE whose call ended before it was answered, by end reason."""


@dataclass(frozen=True)
class SipConnector:
    """What the routing chain knows of a SIP call's "connector": the credential."""

    id: str
    apikey: str
    provider: str = PROVIDER
    default_room_id: str | None = None
    default_rule_id: str | None = None
    region: str | None = None


class SipCalls:
    """Every SIP call of one endpoint: new INVITEs, CANCELs and the requests of dialogs."""

    def __init__(self, runtime: Runtime, endpoint: SipEndpoint) -> None:
        self.runtime = runtime
        self.endpoint = endpoint
        self.settings = runtime.settings.sip
        self.ports = RtpPortAllocator(*self.settings.rtp_port_range)
        self._dialogs: dict[tuple[str, str, str], SipCall] = {}
        self._ringing: dict[Key, SipCall] = {}
        self._starting: set[Key] = set()
        """INVITEs being authenticated and routed, not ringing yet."""
        self._cancelled_early: set[Key] = set()
        """Those of them a CANCEL (answered 200) matched: refused 487 once they ring."""

    def __len__(self) -> int:
        return len(self._dialogs)

    # ------------------------------------------------------------------ new calls

    def starting(self, key: Key) -> None:
        """The INVITE transaction ``key`` is being handled (authentication first)."""
        self._starting.add(key)

    def started(self, key: Key) -> None:
        """The INVITE transaction ``key`` is handled: ringing, answered or refused."""
        self._starting.discard(key)
        self._cancelled_early.discard(key)

    async def invite(self, incoming: Incoming, principal: SipPrincipal) -> None:
        """An authenticated INVITE outside a dialog."""
        runtime, request = self.runtime, incoming.parsed.request
        if runtime.draining:
            _refuse(
                incoming,
                503,
                "Service Unavailable",
                "this server is shutting down",
                retry_after=True,
            )
            return
        user = unquote(request.uri.user or "")
        attributes = {
            "callbridge.provider": PROVIDER,
            "callbridge.connector.id": principal.credential_id,
            "network.transport": incoming.transport.lower(),
            "sip.method": "INVITE",
        }
        with (
            runtime.tracer.start_as_current_span(
                "call.invite", kind=SpanKind.SERVER, attributes=attributes
            ) as span,
            structlog.contextvars.bound_contextvars(
                provider=PROVIDER, connector_id=principal.credential_id
            ),
        ):
            code = await self._start_call(incoming, principal, user)
            if code is not None:
                span.set_attribute("sip.response.status_code", code)
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))

    async def _start_call(
        self, incoming: Incoming, principal: SipPrincipal, user: str
    ) -> int | None:
        """Route, bind media and start the call; the refusal's status code, or ``None``."""
        runtime, parsed = self.runtime, incoming.parsed
        request = parsed.request
        expires = _session_expires(request.headers.get("Session-Expires"))
        if expires is not None and expires < MIN_SESSION_EXPIRES:
            incoming.answer(
                422, "Session Interval Too Small", headers=[("Min-SE", str(MIN_SESSION_EXPIRES))]
            )
            return 422
        if not user:
            return _refuse(incoming, 404, "Not Found", "no room in the Request-URI")
        limit = self.settings.max_calls
        if limit is not None and len(self._dialogs) >= limit:
            return _refuse(incoming, 486, "Busy Here", f"this server takes {limit} SIP calls")
        from_number = _user_of(request.from_address)
        call = CallInfo(
            provider=PROVIDER,
            provider_call_id=_provider_call_id(parsed),
            from_number=from_number,
            to_number=user,
            account_id=None,
        )
        route = await self._route(call, principal, user)
        if route is None:
            return _refuse(incoming, 404, "Not Found", f"no room or route for {user[:64]!r}")
        elsewhere = await self._home_elsewhere(principal.apikey, route.route)
        if elsewhere is not None:
            transport = incoming.transport.lower()
            incoming.answer(
                302,
                "Moved Temporarily",
                headers=[
                    ("Contact", f"<sip:{request.uri.user}@{elsewhere};transport={transport}>")
                ],
            )
            log.info("SIP call redirected to its room's home", room_id=route.route.room_id)
            return 302
        sdp = SdpSession(
            self.settings.public_address or self.settings.host, self.settings.rtp_port_range[0]
        )
        offer = request.body or b""
        try:
            stream = await RtpStream.open(
                call.provider_call_id,
                self.ports,
                self.settings.host,
                rtp_timeout=self.settings.rtp_timeout_seconds,
            )
        except PortsExhausted as exc:
            log.warning("SIP call refused: no RTP ports", reason=str(exc))
            return _refuse(
                incoming, 503, "Service Unavailable", "no media ports free", retry_after=True
            )
        handed_off = False  # until the call owns the stream, a refusal closes it
        try:
            sdp.rtp_port = stream.ports.rtp
            answer_sdp: str
            if offer.strip():
                try:
                    answer = sdp.answer(offer)
                except SdpError as exc:
                    incoming.answer(
                        488,
                        "Not Acceptable Here",
                        headers=[("Warning", exc.warning(self.settings.domain))],
                    )
                    return 488
                answer_sdp = answer.sdp
                stream.negotiated(answer.negotiated)
            else:
                answer_sdp = sdp.offer()
            try:
                dialog = Dialog.from_invite(parsed, incoming.to_tag, incoming.transport)
            except ValueError as exc:
                return _refuse(incoming, 400, "Bad Request", str(exc))
            region = call_region(runtime, route.route, route.context)
            record = RefRecord(
                call_id=new_call_id(),
                apikey=principal.apikey,
                connector_id=principal.credential_id,
                provider=PROVIDER,
                provider_call_id=call.provider_call_id,
                room_id=route.route.room_id,
                transport=route.route.transport,
                options=StreamOptions(
                    codec=sdp.negotiated.codec_spec if sdp.negotiated else LATE_OFFER_CODEC
                ),
                from_number=from_number,
                to_number=user,
                trace_parent=current_trace_parent(),
                metadata={**route.route.metadata, "sipUser": principal.username},
                region=region.name,
            )
            try:
                await runtime.lifecycle.route(
                    call_id=record.call_id,
                    apikey=record.apikey,
                    connector_id=record.connector_id,
                    provider=PROVIDER,
                    provider_call_id=record.provider_call_id,
                    room_id=record.room_id,
                    ref_ttl_seconds=runtime.settings.refs.ttl_seconds,
                    from_number=from_number,
                    to_number=user,
                    region=region.name,
                    route_strategy=route.route.strategy,
                    route_rule_id=route.route.rule_id,
                    metadata=route.route.metadata,
                )
            except DuplicateCallError:
                return _refuse(incoming, 482, "Loop Detected", "this INVITE is already a call")
            span = trace.get_current_span()
            span.set_attribute("callbridge.call.id", record.call_id)
            span.set_attribute("callbridge.room.id", record.room_id)
            if await runtime.lifecycle.claim(record.call_id) is None:
                return _refuse(incoming, 480, "Temporarily Unavailable", "the call was ended")
            sip_call = SipCall(self, incoming, dialog, stream, sdp, answer_sdp, record, expires)
            self._dialogs[dialog.key] = sip_call
            self._ringing[incoming.transaction.key] = sip_call
            if incoming.transaction.key in self._cancelled_early:
                sip_call.cancelled()
            log.info(
                "SIP call routed",
                call_id=record.call_id,
                room_id=record.room_id,
                strategy=route.route.strategy,
                rule_id=route.route.rule_id,
                late_offer=not offer.strip(),
            )
            sip_call.start()
            handed_off = True
            return None
        finally:
            if not handed_off:
                await stream.close()

    async def _route(self, call: CallInfo, principal: SipPrincipal, user: str) -> _Routed | None:
        runtime = self.runtime
        connector = SipConnector(id=principal.credential_id, apikey=principal.apikey)
        context = routing_context(runtime, call, connector, {})
        if _PHONE.match(user):
            outcome = await traced_route(runtime, context)
            if outcome.route is not None:
                return _Routed(outcome.route, context)
        if not is_room_id(user):
            return None
        return _Routed(Route(room_id=user, strategy="sip_uri"), context)

    async def _home_elsewhere(self, tenant: str, route: Route) -> str | None:
        """``direct`` room mode: the SIP address of the room's home replica when it is
        another one; else ``None``: relay mode joins the room here and the room transport
        relays the audio to its home."""
        home = await home_elsewhere(self.runtime, tenant, route)
        return home.sip_address if home is not None and home.sip_address else None

    # ------------------------------------------------------------------ CANCEL and dialogs

    def cancel(self, key: Key) -> None:
        """A CANCEL matched the INVITE transaction ``key`` (its 200 was sent already)."""
        call = self._ringing.get(key)
        if call is not None:
            call.cancelled()
        elif key in self._starting:
            self._cancelled_early.add(key)

    async def in_dialog(self, incoming: Incoming) -> None:
        """A request with a To tag: ACK, BYE, re-INVITE, UPDATE, OPTIONS…"""
        parsed = incoming.parsed
        method = parsed.request.method
        key = (parsed.call_id, incoming.to_tag, parsed.from_tag or "")
        call = self._dialogs.get(key)
        if call is None:
            if method != "ACK":
                incoming.answer(481, "Call/Transaction Does Not Exist")
            return
        await call.request(incoming)

    def forget(self, call: SipCall) -> None:
        self._dialogs.pop(call.dialog.key, None)
        self._ringing.pop(call.invite.transaction.key, None)

    def answered(self, call: SipCall) -> None:
        self._ringing.pop(call.invite.transaction.key, None)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """End every call still here (the bridged ones were asked already): ringing calls
        get 503, answered ones a BYE."""
        tasks = []
        for call in list(self._dialogs.values()):
            call.stream.stop("the server stopped")
            if call.task is not None:
                tasks.append(call.task)
        if tasks:
            await asyncio.wait(tasks, timeout=grace_seconds)


@dataclass(frozen=True)
class _Routed:
    route: Route
    context: RoutingContext


class SipCall:
    """One SIP call: its dialog, its media stream and the call session that bridges it."""

    def __init__(
        self,
        calls: SipCalls,
        invite: Incoming,
        dialog: Dialog,
        stream: RtpStream,
        sdp: SdpSession,
        answer_sdp: str,
        record: RefRecord,
        session_expires: int | None,
    ) -> None:
        self.calls = calls
        self.runtime = calls.runtime
        self.invite = invite
        self.dialog = dialog
        self.stream = stream
        self.sdp = sdp
        self.record = record
        self._answer_sdp = answer_sdp
        self._session_expires = session_expires
        self._late_offer = sdp.negotiated is None
        self._final_sent = False
        self._acked = asyncio.Event()
        self._bye_received = False
        self._bye_sent = False
        self._cancelled = False
        self._end_reason: EndReason | None = None
        self._pending_reoffer = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._late_offer:
            self._send_200(self._answer_sdp)
        self.task = asyncio.create_task(self._run(), name=f"sip-call-{self.record.call_id}")

    async def _run(self) -> None:
        runtime, record = self.runtime, self.record
        session = CallSession(
            runtime,
            record,
            lambda: self.stream,
            self.stream.close,
            self._far_end,
            echoes_marks_on_clear=False,
            on_joined=self._joined,
        )
        try:
            await run_call(runtime, record, session)
        finally:
            await self._finish(self._end_reason or EndReason.API_HANGUP)
            self.calls.forget(self)

    # ------------------------------------------------------------------ answering

    def _joined(self) -> bool:
        """In the room: answer (early offer); ``False`` when the caller cancelled meanwhile."""
        if self._cancelled:
            return False
        if not self._late_offer:
            self._send_200(self._answer_sdp)
        return True

    def _send_200(self, body: str) -> None:
        if self._final_sent:
            return
        self._final_sent = True
        self.invite.answer(
            200,
            "OK",
            headers=self._dialog_headers(self.invite.parsed),
            body=body.encode(),
            content_type="application/sdp",
        )
        self.calls.answered(self)
        self.stream.answered()
        asyncio.get_running_loop().create_task(self._await_ack(self.invite))

    def _dialog_headers(self, parsed: Parsed) -> list[tuple[str, str]]:
        endpoint = self.calls.endpoint
        transport = self.invite.transport
        contact = f"<sip:{endpoint.sent_by(transport)};transport={transport.lower()}>"
        headers = [("Contact", contact), ("Allow", ALLOW), ("Supported", "timer")]
        if parsed is self.invite.parsed:
            headers += [
                ("Record-Route", value) for value in parsed.request.headers.getlist("Record-Route")
            ]
        if self._session_expires is not None:
            headers.append(("Session-Expires", f"{self._session_expires};refresher=uac"))
            supported = (parsed.request.headers.get("Supported") or "").lower()
            if "timer" in supported:
                headers.append(("Require", "timer"))
        return headers

    async def _await_ack(self, incoming: Incoming) -> None:
        """Retransmit the 2xx until its ACK (UDP); no ACK in 64·T1 ends the call."""
        self._acked.clear()
        transaction = incoming.transaction
        interval, waited = T1, 0.0
        while waited < TIMER_H:
            try:
                async with asyncio.timeout(interval):
                    await self._acked.wait()
                return
            except TimeoutError:
                waited += interval
                if incoming.transport == "UDP" and transaction.last is not None:
                    transaction.send(transaction.last)
                interval = min(interval * 2, T2)
        log.warning("SIP call: no ACK for the 200 OK; ending it", call_id=self.record.call_id)
        self.stream.stop("no ACK for the 200 OK")

    def cancelled(self) -> None:
        """The caller cancelled before the answer."""
        if self._final_sent:
            return
        self._final_sent = True
        self._cancelled = True
        _refuse(self.invite, 487, "Request Terminated", "cancelled by the caller")
        self._bye_received = True  # nothing left to end at the caller
        self.stream.stop("stop")

    # ------------------------------------------------------------------ in the dialog

    async def request(self, incoming: Incoming) -> None:
        parsed = incoming.parsed
        method = parsed.request.method
        dialog = self.dialog
        if method == "ACK":
            if dialog.ack_for_invite(parsed.cseq):
                self._ack(parsed)
            return
        if not dialog.in_order(parsed.cseq):
            incoming.answer(
                500,
                "Server Internal Error",
                headers=[("Reason", reason_header("CSeq out of order"))],
            )
            return
        if method == "BYE":
            incoming.answer(200, "OK")
            self._bye_received = True
            log.info("SIP call: the caller hung up", call_id=self.record.call_id)
            self.stream.stop("stop")
        elif method in ("INVITE", "UPDATE"):
            self._reoffer(incoming)
        elif method == "OPTIONS":
            incoming.answer(200, "OK", headers=[("Allow", ALLOW)])
        elif method == "INFO":
            self._info(incoming)
        else:
            incoming.answer(405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    def _info(self, incoming: Incoming) -> None:
        """A key press sent as INFO (:mod:`callbridge.sip.info`): the same ``dtmf`` as one
        sent as telephone-events."""
        request = incoming.parsed.request
        try:
            digit = info_digit(
                request.headers.get("Content-Type"),
                request.headers.get("Info-Package"),
                request.body or b"",
            )
        except InfoRefused as exc:
            headers = [("Reason", reason_header(str(exc))), *exc.headers]
            incoming.answer(exc.code, exc.phrase, headers=headers)
            return
        incoming.answer(200, "OK")
        if digit is not None:
            self.stream.info_digit(digit)

    def _ack(self, parsed: Parsed) -> None:
        self._acked.set()
        if not self._pending_reoffer and not (self._late_offer and self.sdp.negotiated is None):
            return
        self._pending_reoffer = False
        body = parsed.request.body or b""
        try:
            agreed = self.sdp.accept_answer(body)
        except SdpError as exc:
            log.warning("SIP call: no usable answer in the ACK", reason=exc.reason)
            self.stream.stop("no usable SDP answer in the ACK")
            return
        self.stream.update(agreed)

    def _reoffer(self, incoming: Incoming) -> None:
        """A re-INVITE or UPDATE: hold, resume, a new address, or a session refresh."""
        request = incoming.parsed.request
        is_invite = request.method == "INVITE"
        if not self._final_sent:
            incoming.answer(491 if is_invite else 500, "Request Pending")
            return
        expires = _session_expires(request.headers.get("Session-Expires"))
        if expires is not None:
            self._session_expires = max(expires, MIN_SESSION_EXPIRES)
        body = request.body or b""
        headers = self._dialog_headers(incoming.parsed)
        if body.strip():
            try:
                answer = self.sdp.answer(body)
            except SdpError as exc:
                incoming.answer(
                    488,
                    "Not Acceptable Here",
                    headers=[("Warning", exc.warning(self.calls.settings.domain))],
                )
                return
            self.stream.update(answer.negotiated)
            log.info(
                "SIP call: media updated", call_id=self.record.call_id, held=answer.negotiated.held
            )
            incoming.answer(
                200, "OK", headers=headers, body=answer.sdp.encode(), content_type="application/sdp"
            )
        elif is_invite:
            self._pending_reoffer = True
            incoming.answer(
                200,
                "OK",
                headers=headers,
                body=self.sdp.offer().encode(),
                content_type="application/sdp",
            )
        else:
            incoming.answer(200, "OK", headers=headers)
        if is_invite:
            asyncio.get_running_loop().create_task(self._await_ack(incoming))

    # ------------------------------------------------------------------ ending

    async def _far_end(self, reason: EndReason) -> None:
        self._end_reason = reason
        await self._finish(reason)

    async def _finish(self, reason: EndReason) -> None:
        """End the call at the caller unless it is over there: a final response to an INVITE
        not yet answered, else a BYE unless the caller sent one."""
        if not self._final_sent:
            self._final_sent = True
            code, phrase = _REFUSALS.get(reason, (500, "Server Internal Error"))
            _refuse(self.invite, code, phrase, reason.value)
            return
        if self._bye_received or self._bye_sent:
            return
        self._bye_sent = True
        dialog, endpoint = self.dialog, self.calls.endpoint
        target = dialog.next_hop()
        branch = new_branch()
        data = dialog.request(
            "BYE",
            sent_by=endpoint.sent_by(target[2]),
            branch=branch,
            headers=[("Reason", reason_header(reason.value))],
            transport=target[2],
        )
        answered = await endpoint.send_request(
            data, branch=branch, method="BYE", target=target, flow=self.invite.flow
        )
        log.info("SIP BYE sent", call_id=self.record.call_id, reason=reason.value, answer=answered)


def _refuse(
    incoming: Incoming, code: int, phrase: str, reason: str, *, retry_after: bool = False
) -> int:
    headers = [("Reason", reason_header(reason))]
    if retry_after:
        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
    incoming.answer(code, phrase, headers=headers)
    log.info("SIP call refused", code=code, reason=reason)
    return code


def _session_expires(value: str | None) -> int | None:
    if not value:
        return None
    match = _SESSION_EXPIRES.match(value)
    return int(match.group(1)) if match else None


def _user_of(address: object) -> str | None:
    uri = getattr(address, "uri", None)
    user = getattr(uri, "user", None)
    return unquote(str(user)) if user else None


def _provider_call_id(parsed: Parsed) -> str:
    """The call's id at the "provider": the Call-ID, From tag and CSeq (a new INVITE after a
    refusal keeps the Call-ID and raises the CSeq), hashed when longer than the column."""
    text = f"{parsed.call_id};{parsed.from_tag or ''};{parsed.cseq}"
    if len(text) <= 255:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
