"""The SIP endpoint: UDP and TCP listeners on ``sip.host``:``sip.port`` (and TLS on the next
port when ``sip.tls_certificate`` is set), started and stopped with the server, feeding one
dispatcher through the server transactions.

What it answers itself: ``OPTIONS`` outside a dialog (trunk keep-alives) with 200 and what it
allows; a request it cannot parse is dropped (UDP) or ends its connection (TCP), counted, and
the endpoint keeps serving; a request missing what a response needs is dropped likewise; a
retransmission gets the last response again; a ``CANCEL`` that matches no INVITE still waiting
for its answer gets 481; unknown methods 405 with ``Allow``. ``INVITE`` and ``REGISTER`` outside
a dialog go to the handlers given (the call path); without one, ``INVITE`` is answered ``480``
and ``REGISTER`` ``403``. Requests inside a dialog (a To tag: BYE, re-INVITE, UPDATE, the ACK
of a 2xx…) go to the dialog handler, which answers 481 for a dialog it does not know.

Responses are for the requests we sent (:class:`~callbridge.sip.transactions.
ClientTransactions`); :meth:`SipEndpoint.send_request` sends one over UDP, over the TCP/TLS
connection of the dialog while it is open, or over a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from sipmessage import Response

from callbridge.settings import SipSettings
from callbridge.sip.message import (
    Parsed,
    SipParseError,
    checked,
    fit_datagram_body,
    parse,
    reply_address,
    response,
    split_stream,
)
from callbridge.sip.transactions import (
    ClientTransactions,
    Key,
    ServerTransaction,
    TransactionTable,
    transaction_key,
)

log = structlog.get_logger("callbridge.sip")

ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
CRLF_KEEPALIVE: Final = (b"\r\n", b"\r\n\r\n")


@dataclass
class Incoming:
    """A request as the call path sees it: parsed, in its transaction, with how to answer."""

    parsed: Parsed
    transaction: ServerTransaction
    source: tuple[str, int]
    transport: str
    answer: Callable[..., None]
    """``answer(code, phrase, **response kwargs)``: respond within the transaction."""
    to_tag: str
    """The To tag our responses carry (the dialog's local tag when the request makes one)."""
    flow: Flow


@dataclass(frozen=True)
class Flow:
    """The way a request came in, to send requests back the same way: over UDP, ``send``
    writes to the address it came from; over TCP or TLS, to its connection while open."""

    transport: str
    source: tuple[str, int]
    send: Callable[[bytes], None]
    is_open: Callable[[], bool]


Handler = Callable[[Incoming], Awaitable[None]]
CancelHandler = Callable[[Key], None]


@dataclass
class SipCounters:
    requests: int = 0
    malformed: int = 0
    retransmissions: int = 0


class SipEndpoint:
    """UDP and TCP SIP listeners and the request dispatcher.

    Args:
        settings: ``sip.*``.
        on_invite / on_register: the call path's handlers (``None``: refused, see above).
    """

    def __init__(
        self,
        settings: SipSettings,
        on_invite: Handler | None = None,
        on_register: Handler | None = None,
        on_dialog: Handler | None = None,
        on_cancel: CancelHandler | None = None,
    ) -> None:
        self.settings = settings
        self.counters = SipCounters()
        self.transactions = TransactionTable()
        self.requests = ClientTransactions()
        self._on_invite = on_invite
        self._on_register = on_register
        self._on_dialog = on_dialog
        self._on_cancel = on_cancel
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tls: asyncio.Server | None = None
        self._connections: dict[tuple[str, int, str], asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def udp_port(self) -> int:
        assert self._udp is not None
        return int(self._udp.get_extra_info("sockname")[1])

    @property
    def tcp_port(self) -> int:
        assert self._tcp is not None
        return int(self._tcp.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        if self._tls is None:
            return None
        return int(self._tls.sockets[0].getsockname()[1])

    def sent_by(self, transport: str) -> str:
        """Our Via's host:port for a request sent over ``transport``."""
        host = self.settings.public_address or self.settings.host
        if transport == "TLS" and self.tls_port is not None:
            return f"{host}:{self.tls_port}"
        return f"{host}:{self.udp_port if transport == 'UDP' else self.tcp_port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        host, port = settings.host, settings.port
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(host, port)
        )
        self._tcp = await asyncio.start_server(
            lambda reader, writer: self._serve_stream(reader, writer, "TCP"), host, port
        )
        transports = ["udp", "tcp"]
        if settings.tls_certificate is not None and settings.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_certificate, settings.tls_key)
            self._tls = await asyncio.start_server(
                lambda reader, writer: self._serve_stream(reader, writer, "TLS"),
                host,
                self.tcp_port + 1,
                ssl=context,
            )
            transports.append("tls")
        log.info("SIP endpoint listening", host=host, port=self.udp_port, transports=transports)

    async def stop(self) -> None:
        self.transactions.close()
        self.requests.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in (self._tcp, self._tls):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await server.wait_closed()
        self._tcp = self._tls = None
        for writer in list(self._connections.values()):
            writer.close()
        self._connections.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ transports

    def datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if data in CRLF_KEEPALIVE:
            return

        def send_to(reply: tuple[str, int]) -> Callable[[bytes], None]:
            def send(payload: bytes) -> None:
                if self._udp is not None:
                    self._udp.sendto(payload, reply)

            return send

        self._received(data, source, "UDP", send_to, lambda: self._udp is not None)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = (str(peer[0]), int(peer[1]))
        key = (source[0], source[1], transport)
        self._connections[key] = writer

        def send(payload: bytes) -> None:
            if not writer.is_closing():
                writer.write(payload)

        buffer = bytearray()
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                for message in split_stream(buffer):
                    self._received(
                        message, source, transport, lambda _: send, lambda: not writer.is_closing()
                    )
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("SIP connection closed: unframeable stream", reason=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            if self._connections.get(key) is writer:
                del self._connections[key]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def send_request(
        self,
        data: bytes,
        *,
        branch: str,
        method: str,
        target: tuple[str, int, str],
        flow: Flow | None = None,
        wait: float = 2.0,
    ) -> int | None:
        """Send a request of ours and wait up to ``wait`` seconds for its final status (it
        goes on being retransmitted afterwards, until timer F); ``None`` when none came in
        time or it could not be sent. Over UDP it goes to ``target``; over TCP or TLS over
        an open connection to ``target``, else over ``flow``'s connection while open, else
        over a new connection."""
        host, port, transport = target
        send: Callable[[bytes], None] | None = None
        if transport == "UDP":
            udp = self._udp
            if udp is None:
                return None
            send = lambda payload: udp.sendto(payload, (host, port))  # noqa: E731
        else:
            writer = self._connections.get((host, port, transport))
            if writer is None and flow is not None and flow.transport == transport:
                if flow.is_open():
                    send = flow.send
            if send is None:
                if writer is None:
                    writer = await self._connect(host, port, transport)
                if writer is None:
                    return None
                stream = writer
                send = lambda payload: None if stream.is_closing() else stream.write(payload)  # noqa: E731
        answer = self.requests.send(branch, method, data, send, transport != "UDP")
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(answer)
        except TimeoutError:
            return None

    async def _connect(self, host: str, port: int, transport: str) -> asyncio.StreamWriter | None:
        context = None
        if transport == "TLS":
            context = ssl.create_default_context()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("SIP connection failed", host=host, port=port, reason=str(exc))
            return None
        self._spawn(self._serve_stream(reader, writer, transport))
        return writer

    # ------------------------------------------------------------------ dispatch

    def _received(
        self,
        data: bytes,
        source: tuple[str, int],
        transport: str,
        sender: Callable[[tuple[str, int]], Callable[[bytes], None]],
        is_open: Callable[[], bool],
    ) -> None:
        reliable = transport != "UDP"
        try:
            message = parse(data)
            body_fits = reliable or fit_datagram_body(message)  # a stream frames it already
            if isinstance(message, Response):
                if not body_fits:
                    raise SipParseError("a response shorter than its Content-Length")
                self._response(message)
                return
            parsed = checked(message)
            if not body_fits and message.method == "ACK":
                raise SipParseError("an ACK shorter than its Content-Length")
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("SIP message dropped", reason=str(exc), transport=transport)
            return
        self.counters.requests += 1
        method = message.method
        send = sender(reply_address(parsed, source) if not reliable else source)
        flow = Flow(transport, source, sender(source), is_open)
        if method == "ACK":
            if not self.transactions.acknowledged(parsed) and self._on_dialog is not None:
                self._dispatch_ack(parsed, source, transport, flow)
            return
        if self.transactions.retransmitted(parsed):
            self.counters.retransmissions += 1
            return
        transaction = self.transactions.open(parsed, send, reliable)
        to_tag = parsed.to_tag or secrets.token_hex(8)

        def answer(code: int, phrase: str, **kwargs: Any) -> None:
            kwargs.setdefault("to_tag", to_tag)
            data = response(parsed, code, phrase, source=source, **kwargs)
            self.transactions.respond(transaction, data, code)

        incoming = Incoming(parsed, transaction, source, transport, answer, to_tag, flow)
        if not body_fits:
            self.counters.malformed += 1
            reason = reason_header("the body is shorter than its Content-Length")
            answer(400, "Bad Request", headers=[("Reason", reason)])
        elif method == "CANCEL":
            self._cancel(incoming)
        elif parsed.to_tag is not None:
            if self._on_dialog is None:
                answer(481, "Call/Transaction Does Not Exist")
            else:
                self._spawn(self._on_dialog(incoming))
        elif method == "OPTIONS":
            answer(
                200,
                "OK",
                headers=[("Allow", ALLOW), ("Accept", "application/sdp")],
            )
        elif method == "INVITE":
            if self._on_invite is None:
                answer(
                    480,
                    "Temporarily Unavailable",
                    headers=[("Reason", reason_header("calls are not connected yet"))],
                )
            else:
                answer(100, "Trying")
                self._spawn(self._on_invite(incoming))
        elif method == "REGISTER":
            if self._on_register is None:
                answer(
                    403,
                    "Forbidden",
                    headers=[
                        (
                            "Reason",
                            reason_header(
                                "no registration: call sip:<roomId>@" + self.settings.domain
                            ),
                        )
                    ],
                )
            else:
                self._spawn(self._on_register(incoming))
        elif method in ("BYE", "INFO"):
            answer(481, "Call/Transaction Does Not Exist")
        else:
            answer(405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    def _cancel(self, incoming: Incoming) -> None:
        """CANCEL (RFC 3261 §9.2): 200 when it matches an INVITE still waiting for its final
        response (the call path then answers that INVITE 487), else 481."""
        key = transaction_key(incoming.parsed, "INVITE")
        invite = self.transactions.get(key)
        if invite is None or invite.final_code or self._on_cancel is None:
            incoming.answer(481, "Call/Transaction Does Not Exist")
            return
        incoming.answer(200, "OK")
        self._on_cancel(key)

    def _dispatch_ack(
        self, parsed: Parsed, source: tuple[str, int], transport: str, flow: Flow
    ) -> None:
        """The ACK of a 2xx: a request of its own dialog, with no response and no
        transaction."""
        assert self._on_dialog is not None

        def no_answer(code: int, phrase: str, **kwargs: Any) -> None:
            pass

        incoming = Incoming(
            parsed, _NO_TRANSACTION, source, transport, no_answer, parsed.to_tag or "", flow
        )
        self._spawn(self._on_dialog(incoming))

    def _response(self, message: Response) -> None:
        try:
            vias, cseq = message.via, message.cseq
        except (ValueError, IndexError, KeyError, AttributeError):
            self.counters.malformed += 1
            return
        if not vias or cseq is None:
            self.counters.malformed += 1
            return
        branch = str(vias[0].parameters.get("branch") or "")
        self.requests.received(branch, str(cseq.method), int(message.code))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("SIP request handler failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def reason_header(text: str) -> str:
    """A ``Reason`` header value (RFC 3326) carrying ``text``."""
    return 'SIP;text="' + text.replace('"', "'") + '"'


_NO_TRANSACTION = ServerTransaction(("ack",), "ACK", True, lambda data: None)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._endpoint.datagram(data, (str(addr[0]), int(addr[1])))
