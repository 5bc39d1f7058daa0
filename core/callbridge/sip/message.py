"""SIP messages on the wire: parsing (through ``sipmessage``) made safe for hostile input, stream
framing for TCP, and the responses a server builds from a request (RFC 3261 §8.2.6).

Pitfalls handled here (see the research note on SIP): ``sipmessage`` rejects folded header
lines (we unfold them first, RFC 3261 §7.3.1) and keeps whitespace before a header's colon in
its name (we drop it), raises from header *accessors* rather than from
``parse`` (every header a transaction needs is read once here, inside the guard), and does not
add ``Content-Length`` (mandatory over TCP; we always set it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sipmessage import Message, Request, Response

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""A SIP message larger than this is dropped (UDP) or ends the connection (TCP)."""
SERVER: Final = "callbridge"
_FOLD = re.compile(rb"\r\n[ \t]+")
_CONTENT_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,9})[ \t]*\r?$", re.I | re.M
)
_SPACE_BEFORE_COLON = re.compile(rb"(?m)^([^:\r\n \t]+)[ \t]+:")
"""``Via  :`` (RFC 3261's HCOLON allows whitespace before the colon; sipmessage keeps it in the
header's name)."""


class SipParseError(ValueError):
    """The bytes are not a SIP message we can answer (its reason is safe to log)."""


@dataclass(frozen=True)
class Parsed:
    """A parsed request with the headers every transaction needs, read once and checked."""

    request: Request
    branch: str
    sent_by: str
    call_id: str
    cseq: int
    cseq_method: str
    from_tag: str | None
    to_tag: str | None


def parse(data: bytes) -> Request | Response:
    """One SIP message from ``data``.

    Raises:
        SipParseError: not a SIP message, too large, or a header it needs is malformed.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise SipParseError("no end of headers")
    try:
        start, _, fields = _FOLD.sub(b" ", head).partition(b"\r\n")
        fields = _SPACE_BEFORE_COLON.sub(rb"\1:", fields)
        message = Message.parse(start + b"\r\n" + fields + b"\r\n\r\n" + body)
    except (ValueError, IndexError, KeyError) as exc:
        raise SipParseError(f"unparsable: {str(exc)[:80]}") from None
    return message


def fit_datagram_body(message: Request | Response) -> bool:
    """Make a message that came in a datagram hold the body its ``Content-Length`` declares
    (RFC 3261 §18.3): bytes past it are dropped; ``False`` when the datagram ends before it
    (a request is then answered 400, a response dropped) or the length is no number. Without
    the header (allowed over UDP) the body is the rest of the datagram."""
    declared = message.headers.get("Content-Length")
    if declared is None:
        return True
    declared = declared.strip()
    if not declared.isdigit() or len(declared) > 9:
        return False
    length = int(declared)
    if length > len(message.body):
        return False
    message.body = message.body[:length]
    return True


def checked(request: Request) -> Parsed:
    """The request's transaction headers, all read and checked.

    Raises:
        SipParseError: a header a server transaction needs is missing or malformed.
    """
    try:
        vias = request.via
        cseq = request.cseq
        call_id = request.call_id
        from_address = request.from_address
        to_address = request.to_address
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise SipParseError(f"malformed header: {str(exc)[:80]}") from None
    if not vias or cseq is None or not call_id or from_address is None or to_address is None:
        raise SipParseError("missing Via, CSeq, Call-ID, From or To")
    top = vias[0]
    branch = str(top.parameters.get("branch") or "")
    sent_by = f"{top.host}:{top.port or 5060}"
    return Parsed(
        request=request,
        branch=branch,
        sent_by=sent_by,
        call_id=str(call_id),
        cseq=int(cseq.sequence),
        cseq_method=str(cseq.method),
        from_tag=_tag(from_address),
        to_tag=_tag(to_address),
    )


def _tag(address: object) -> str | None:
    parameters = getattr(address, "parameters", None)
    tag = parameters.get("tag") if parameters is not None else None
    return str(tag) if tag else None


def response(
    parsed: Parsed,
    code: int,
    phrase: str,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    source: tuple[str, int] | None = None,
) -> bytes:
    """The response to ``parsed`` (RFC 3261 §8.2.6.2): its Vias, From, To (with ``to_tag`` added
    when the request's To has none and the response is not 100), Call-ID and CSeq, then
    ``headers``, ``Server`` and ``Content-Length``. ``source`` (where the request came from)
    fills the top Via's ``received`` and ``rport`` (RFC 3261 §18.2.1, RFC 3581)."""
    request = parsed.request
    answer = Response(code, phrase, body)
    for index, via in enumerate(request.headers.getlist("Via")):
        answer.headers.add("Via", _stamped(via, source) if index == 0 else via)
    answer.headers.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag and parsed.to_tag is None and code > 100:
        to = f"{to};tag={to_tag}"
    answer.headers.add("To", to)
    answer.headers.add("Call-ID", parsed.call_id)
    answer.headers.add("CSeq", f"{parsed.cseq} {parsed.cseq_method}")
    for name, value in headers:
        answer.headers.add(name, value)
    answer.headers.add("Server", SERVER)
    if content_type is not None:
        answer.headers.add("Content-Type", content_type)
    answer.headers.add("Content-Length", str(len(body)))
    return bytes(answer)


def _stamped(via: str, source: tuple[str, int] | None) -> str:
    """The top Via with ``received`` and a filled-in ``rport``."""
    if source is None:
        return via
    host, port = source
    stamped = re.sub(r";rport(?=;|$|\s)", f";rport={port}", via, count=1)
    if ";received=" not in stamped:
        stamped += f";received={host}"
    return stamped


def reply_address(parsed: Parsed, source: tuple[str, int]) -> tuple[str, int]:
    """Where a UDP response goes: the source address when the Via asks for ``rport``
    (RFC 3581), else the source IP and the Via's port (RFC 3261 §18.2.2)."""
    top = parsed.request.via[0]
    if "rport" in top.parameters:
        return source
    return source[0], int(top.port or 5060)


def split_stream(buffer: bytearray) -> list[bytes]:
    """Cut the complete messages off the front of a TCP stream buffer (Content-Length framing;
    CRLF keep-alives between messages are skipped); what is left stays in ``buffer``.

    Raises:
        SipParseError: a message without a usable Content-Length, or one too large.
    """
    messages: list[bytes] = []
    while True:
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_MESSAGE_BYTES:
                raise SipParseError("headers too large")
            return messages
        head = bytes(buffer[:end])
        match = _CONTENT_LENGTH.search(_FOLD.sub(b" ", head))
        if match is None:
            raise SipParseError("no Content-Length on a stream transport")
        total = end + 4 + int(match.group(1))
        if total > MAX_MESSAGE_BYTES:
            raise SipParseError("message too large")
        if len(buffer) < total:
            return messages
        messages.append(bytes(buffer[:total]))
        del buffer[:total]
