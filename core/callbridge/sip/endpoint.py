"""The SIP endpoint: UDP and TCP listeners on ``sip.host``:``sip.port``, started and stopped with
the server, feeding one dispatcher through the server transactions.

What it answers today: ``OPTIONS`` (trunk keep-alives) with 200 and what it allows; a request
it cannot parse is dropped (UDP) or ends its connection (TCP), counted, and the endpoint keeps
serving; a request missing what a response needs is dropped likewise; a retransmission gets the
last response again; ``CANCEL`` and ``BYE`` outside a call get 481; unknown methods 405 with
``Allow``. ``INVITE`` and ``REGISTER`` go to the handler given (the call path); without one,
``INVITE`` is answered ``480`` (calls are not connected yet) and ``REGISTER`` ``403``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from sipmessage import Request

from callbridge.settings import SipSettings
from callbridge.sip.message import (
    Parsed,
    SipParseError,
    checked,
    parse,
    reply_address,
    response,
    split_stream,
)
from callbridge.sip.transactions import ServerTransaction, TransactionTable

log = structlog.get_logger("callbridge.sip")

ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS"
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


Handler = Callable[[Incoming], Awaitable[None]]


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
    ) -> None:
        self.settings = settings
        self.counters = SipCounters()
        self.transactions = TransactionTable()
        self._on_invite = on_invite
        self._on_register = on_register
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def udp_port(self) -> int:
        assert self._udp is not None
        return int(self._udp.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.settings.host, self.settings.port
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(host, port)
        )
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
        log.info("SIP endpoint listening", host=host, port=port, transports=["udp", "tcp"])

    async def stop(self) -> None:
        self.transactions.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None
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

        self._received(data, source, "UDP", send_to, reliable=False)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = (str(peer[0]), int(peer[1]))

        def send(payload: bytes) -> None:
            if not writer.is_closing():
                writer.write(payload)

        buffer = bytearray()
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                for message in split_stream(buffer):
                    self._received(message, source, "TCP", lambda _: send, reliable=True)
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("SIP connection closed: unframeable stream", reason=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ------------------------------------------------------------------ dispatch

    def _received(
        self,
        data: bytes,
        source: tuple[str, int],
        transport: str,
        sender: Callable[[tuple[str, int]], Callable[[bytes], None]],
        *,
        reliable: bool,
    ) -> None:
        try:
            message = parse(data)
            if not isinstance(message, Request):
                return  # we send no requests yet, so no response is ours
            parsed = checked(message)
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("SIP message dropped", reason=str(exc), transport=transport)
            return
        self.counters.requests += 1
        method = message.method
        send = sender(reply_address(parsed, source) if not reliable else source)
        if method == "ACK":
            self.transactions.acknowledged(parsed)
            return
        if self.transactions.retransmitted(parsed):
            self.counters.retransmissions += 1
            return
        transaction = self.transactions.open(parsed, send, reliable)
        to_tag = secrets.token_hex(6)

        def answer(code: int, phrase: str, **kwargs: Any) -> None:
            kwargs.setdefault("to_tag", to_tag)
            data = response(parsed, code, phrase, source=source, **kwargs)
            self.transactions.respond(transaction, data, code)

        incoming = Incoming(parsed, transaction, source, transport, answer)
        if method == "OPTIONS":
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
        elif method in ("CANCEL", "BYE"):
            answer(481, "Call/Transaction Does Not Exist")
        else:
            answer(405, "Method Not Allowed", headers=[("Allow", ALLOW)])

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


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._endpoint.datagram(data, (str(addr[0]), int(addr[1])))
