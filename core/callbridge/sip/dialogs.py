"""SIP dialogs on the server side (RFC 3261 §12): what an answered INVITE leaves behind so both
ends can send requests inside the call, and the requests we send in it.

A dialog is made from the INVITE we answer: the Call-ID, our tag (the To tag of our responses)
and the caller's (its From tag) identify it; the caller's Contact is the *remote target* our
requests go to; its Record-Route headers, in order, are the *route set* they go through
(RFC 3261 §12.1.1: the UAS keeps the order). Our requests carry our own CSeq, counting up from a
random start, and the caller's CSeq must rise (a lower one is out of order: 500).

Where a request goes (RFC 3261 §8.1.2, §12.2.1.1 with loose routing, RFC 3263 without DNS):
with a route set, to the first route's host and port and transport; without one, to the remote
target's. Over TCP and TLS we prefer the connection the INVITE came on while it is open
(connection reuse, as a UAS behind NAT must: the caller may not accept new connections).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Final

from sipmessage import URI, Address, Request

from callbridge.sip.message import Parsed

MAX_FORWARDS: Final = 70
DEFAULT_PORTS: Final = {"UDP": 5060, "TCP": 5060, "TLS": 5061}

Target = tuple[str, int, str]
"""Where a request goes: host, port and transport (``UDP``, ``TCP``, ``TLS``)."""


def new_tag() -> str:
    """A From/To tag (RFC 3261 §19.3: at least 32 random bits)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie."""
    return "z9hG4bK" + secrets.token_hex(10)


@dataclass
class Dialog:
    """Our side of one SIP dialog (see the module docstring).

    Attributes:
        call_id: the Call-ID.
        local_tag: our tag (To of the INVITE's responses, From of our requests).
        remote_tag: the caller's tag.
        local_party: the INVITE's To header, our tag added: the From of our requests.
        remote_party: the INVITE's From header: the To of our requests.
        remote_target: the caller's Contact URI, where our requests go.
        route_set: the INVITE's Record-Route entries, in order.
        transport: the transport the INVITE came over (``UDP``, ``TCP``, ``TLS``).
        remote_cseq: the highest CSeq the caller used.
        local_cseq: the CSeq of our last request.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str
    remote_party: str
    remote_target: str
    route_set: list[str]
    transport: str
    remote_cseq: int
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(1 << 30) + 1)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_invite(cls, parsed: Parsed, local_tag: str, transport: str) -> Dialog:
        """The dialog an answered INVITE makes.

        Raises:
            ValueError: the INVITE has no usable Contact or From tag (answer 400).
        """
        request = parsed.request
        if not parsed.from_tag:
            raise ValueError("the From header has no tag")
        contact = _contact_uri(request)
        if contact is None:
            raise ValueError("no usable Contact header")
        routes = [
            entry
            for value in request.headers.getlist("Record-Route")
            for entry in _split_addresses(value)
        ]
        to = request.headers.get("To") or ""
        return cls(
            call_id=parsed.call_id,
            local_tag=local_tag,
            remote_tag=parsed.from_tag,
            local_party=f"{to};tag={local_tag}",
            remote_party=request.headers.get("From") or "",
            remote_target=contact,
            route_set=routes,
            transport=transport,
            remote_cseq=parsed.cseq,
        )

    def next_hop(self) -> Target:
        """Host, port and transport of the first place our requests go."""
        uri = (
            URI.parse(_uri_of(self.route_set[0]))
            if self.route_set
            else URI.parse(self.remote_target)
        )
        transport = str(uri.parameters.get("transport") or self.transport).upper()
        if uri.scheme == "sips" and transport == "TCP":
            transport = "TLS"
        if transport not in DEFAULT_PORTS:
            transport = self.transport
        return str(uri.host), int(uri.port or DEFAULT_PORTS[transport]), transport

    def request(
        self,
        method: str,
        *,
        sent_by: str,
        branch: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        transport: str | None = None,
    ) -> bytes:
        """One request of ours in the dialog (BYE…), with the next CSeq; ``sent_by`` is our
        Via's host:port and ``transport`` the transport it goes over (the dialog's by default).
        Loose routing only (RFC 3261 §16.12: every proxy today puts ``lr`` in Record-Route):
        the Request-URI is the remote target and the route set goes in Route headers."""
        self.local_cseq += 1
        request = Request(method, URI.parse(self.remote_target), body)
        add = request.headers.add
        add("Via", f"SIP/2.0/{transport or self.transport} {sent_by};branch={branch};rport")
        add("Max-Forwards", str(MAX_FORWARDS))
        add("From", self.local_party)
        add("To", self.remote_party)
        add("Call-ID", self.call_id)
        add("CSeq", f"{self.local_cseq} {method}")
        for route in self.route_set:
            add("Route", route)
        for name, value in headers or ():
            add(name, value)
        if content_type is not None:
            add("Content-Type", content_type)
        add("Content-Length", str(len(body)))
        return bytes(request)

    def ack_for_invite(self, cseq: int) -> bool:
        """Whether an in-dialog ACK with ``cseq`` acknowledges an INVITE of this dialog."""
        return cseq <= self.remote_cseq

    def in_order(self, cseq: int) -> bool:
        """A new in-dialog request from the caller: whether its CSeq rises (then noted)."""
        if cseq <= self.remote_cseq:
            return False
        self.remote_cseq = cseq
        return True


def _contact_uri(request: Request) -> str | None:
    try:
        contacts = request.contact
    except (ValueError, IndexError, KeyError, AttributeError):
        return None
    if not contacts:
        return None
    uri = contacts[0].uri
    if uri.scheme not in ("sip", "sips") or not uri.host:
        return None
    return str(uri)


def _split_addresses(value: str) -> list[str]:
    """The comma-separated name-addr entries of one header value (commas inside ``<…>`` or
    quotes stay)."""
    entries: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            entries.append(value[start:index].strip())
            start = index + 1
    entries.append(value[start:].strip())
    return [entry for entry in entries if entry]


def _uri_of(entry: str) -> str:
    return str(Address.parse(entry).uri)
