"""SDP offer/answer for the SIP leg: RFC 4566 syntax, RFC 3264 rules, for the subset we speak.

We accept one audio stream of G.711 (PCMU, payload type 0, or PCMA, 8) over plain RTP
(``RTP/AVP``, or ``RTP/AVPF``, which plain RTP satisfies), plus RFC 4733 ``telephone-event``
at 8000 Hz for DTMF. Everything here is pure: text in, typed records and text out.

Parsing (:func:`parse_sdp`) turns a body into a :class:`SessionDescription`: origin,
connection (``c=``) at session and media level, each ``m=`` line with its port, protocol and
payload types (``a=rtpmap`` / ``a=fmtp`` joined to their numbers), the direction attribute
(``sendrecv`` / ``sendonly`` / ``recvonly`` / ``inactive``) at either level, ``a=ptime`` and
``a=rtcp`` (RFC 3605). Unknown lines and attributes are ignored (baresip sends ``a=rtcp-rsize``,
``a=ssrc``, ``a=label``, ``a=minptime``); broken syntax in what we need raises :class:`SdpError`.

Negotiation (:func:`negotiate`, :meth:`SdpSession.answer`):

- **Codec**: the first of PCMU / PCMA in the offerer's order (an offer lists its formats in
  order of preference, RFC 3264 §5.1). Static payload types need no ``a=rtpmap``
  (RFC 3551 table 4); a dynamic type is used only through its ``a=rtpmap``. On a re-offer the
  codec already in use is kept while it is still offered, so a re-INVITE that merely lists the
  codecs in another order (some phones do on hold) never swaps the decoder mid-call.
- **telephone-event**: the payload type is read from ``a=rtpmap`` (baresip uses 101, a trimmed
  linphone offer 96: never assume 101). Its ``a=fmtp`` says which events the caller can
  receive; without one, RFC 4733 means 0-15. We answer ``a=fmtp:<pt> 0-16``.
- **Direction** (RFC 3264 §6.1): we send only what the offerer will receive and receive only
  what it sends: ``sendonly`` → ``recvonly``, ``recvonly`` → ``sendonly``, ``inactive`` →
  ``inactive``. A media-level attribute overrides the session-level one; none means
  ``sendrecv``. ``c=0.0.0.0`` (or ``::``), the RFC 2543 hold that RFC 3264 §8.4 says an
  answerer must still understand, means the offerer receives nothing: a ``sendrecv`` offer with
  it is answered ``recvonly``. :attr:`Negotiated.held` tells the leg to go silent.
- **Streams we do not take** are answered with port 0 in the same position (RFC 3264 §6: the
  answer has as many ``m=`` lines as the offer): a video line from linphone, a second audio line.
- **Addresses**: the ``c=`` address is only where we send until RTP arrives; the leg then
  sends to where RTP comes from (symmetric RTP), because linphone advertises its Ethernet or
  IPv6 address while its RTP comes from 127.0.0.1. An address we would have to resolve (an
  FQDN) or the hold address gives :attr:`Negotiated.remote_address` ``None``.
- **Unsupported offers** raise :class:`SdpError` with a :class:`SdpProblem` and a reason, for a
  488 Not Acceptable Here with a ``Warning`` header (RFC 3261 §20.43 warn codes 300-305, 399):
  no audio ``m=`` line, audio only on port 0, no PCMU/PCMA, RTP/SAVP or another transport, a
  network type other than ``IN``, an address type other than ``IP4``/``IP6``, multicast, and
  malformed SDP. Reasons carry only printable ASCII, so they are safe in a header.

Late offer (an INVITE without SDP): :meth:`SdpSession.offer` writes our offer for the 200 OK
(PCMU, PCMA, telephone-event 101); :meth:`SdpSession.accept_answer` checks the answer that
arrives in the ACK against it. A bad answer there cannot be refused with a 488 (the ACK has no
response): the dialog layer ends the call with BYE.

Versions (RFC 3264 §8): one :class:`SdpSession` per call keeps the ``o=`` session id and
version. The version goes up by one each time our description changes (a hold answer, a new
codec) and stays put when it is the same as last time (a session-refresh re-INVITE), as §8
requires of both.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from callbridge.protocols import CodecSpec

AUDIO_CODECS: Final = ("PCMU", "PCMA")
"""The codecs we can carry, by encoding name; all are 8000 Hz mono."""
CLOCK_RATE: Final = 8000
"""RTP clock rate of G.711 and of the telephone-event stream that goes with it."""
PTIME: Final = 20
"""The packet time we send and ask for, in milliseconds: one media-clock frame."""
EVENT_PAYLOAD_TYPE: Final = 101
"""The dynamic payload type we offer telephone-event on (a late offer)."""
EVENTS: Final = "0-16"
"""The RFC 4733 events we can receive: DTMF 0-9 * # A-D (0-15) and flash (16)."""
DEFAULT_EVENTS: Final = frozenset(range(16))
"""The events a receiver takes without an ``a=fmtp`` (RFC 4733)."""
MAX_SDP_BYTES: Final = 16 * 1024
"""A larger body is refused as malformed."""
PROTOCOLS: Final = ("RTP/AVP", "RTP/AVPF")
"""Transports we answer; AVPF's feedback is optional, so plain RTP satisfies it."""

# RFC 3551 table 4: static payload types a client may offer without a=rtpmap (for choosing,
# and for naming what was offered in a reason).
_STATIC: Final[dict[int, tuple[str, int]]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    5: ("DVI4", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    13: ("CN", 8000),
    18: ("G729", 8000),
}
_RTPMAP = re.compile(r"^(\d{1,3})\s+([A-Za-z0-9_.+-]+)/(\d{1,6})(?:/(\d{1,2}))?$", re.ASCII)
_FMTP = re.compile(r"^(\d{1,3})\s+(.*)$", re.ASCII)
_RTCP = re.compile(r"^(\d{1,5})(?:\s+(\S+)\s+(\S+)\s+(\S+))?$", re.ASCII)
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_TOKEN = re.compile(r"^[!-~]+$")


class Direction(StrEnum):
    """An SDP direction attribute, from the point of view of the side that wrote it."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @classmethod
    def of(cls, *, sends: bool, receives: bool) -> Direction:
        """The direction that sends and receives as told."""
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    def answer(self, local: Direction | None = None) -> Direction:
        """What an answerer writes for this offered direction (RFC 3264 §6.1), within what
        the answerer itself allows (``local``, default ``sendrecv``)."""
        local = local or Direction.SENDRECV
        return Direction.of(
            sends=self.receives and local.sends, receives=self.sends and local.receives
        )


class SdpProblem(StrEnum):
    """Why an offer (or a late-offer answer) cannot be taken."""

    MALFORMED = "malformed"
    NO_AUDIO = "no-audio"
    AUDIO_DISABLED = "audio-disabled"
    NO_COMMON_CODEC = "no-common-codec"
    UNSUPPORTED_TRANSPORT = "unsupported-transport"
    UNSUPPORTED_NETWORK = "unsupported-network"
    UNSUPPORTED_ADDRESS = "unsupported-address"

    @property
    def warn_code(self) -> int:
        """The RFC 3261 §20.43 warn-code for a ``Warning`` header on the 488."""
        return _WARN_CODES[self]


_WARN_CODES: Final = {
    SdpProblem.MALFORMED: 399,
    SdpProblem.NO_AUDIO: 304,
    SdpProblem.AUDIO_DISABLED: 304,
    SdpProblem.NO_COMMON_CODEC: 305,
    SdpProblem.UNSUPPORTED_TRANSPORT: 302,
    SdpProblem.UNSUPPORTED_NETWORK: 300,
    SdpProblem.UNSUPPORTED_ADDRESS: 301,
}


def _printable(text: str, limit: int = 160) -> str:
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


class SdpError(ValueError):
    """An SDP body we cannot take: answer the INVITE (or re-INVITE) with 488.

    Attributes:
        problem: the kind of problem (its :attr:`SdpProblem.warn_code` goes in ``Warning``).
        reason: what was wrong, in printable ASCII (safe for a header and a log line).
    """

    def __init__(self, problem: SdpProblem, reason: str) -> None:
        self.problem = problem
        self.reason = _printable(reason)
        super().__init__(self.reason)

    def warning(self, agent: str) -> str:
        """A ``Warning`` header value (RFC 3261 §20.43), e.g.
        ``305 callbridge "no PCMU or PCMA offered (offered: opus/48000)"``."""
        text = self.reason.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.problem.warn_code} {agent} "{text}"'


def _malformed(reason: str) -> SdpError:
    return SdpError(SdpProblem.MALFORMED, reason)


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line (or the address part of ``a=rtcp``)."""

    net_type: str
    address_type: str
    address: str

    @property
    def unspecified(self) -> bool:
        """``0.0.0.0`` or ``::``: the RFC 2543 way of saying "send me nothing" (hold)."""
        return self.address in ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line: who made the description, and which version of it this is."""

    username: str
    session_id: int
    version: int
    net_type: str
    address_type: str
    address: str


@dataclass(frozen=True, slots=True)
class PayloadType:
    """One RTP payload type of an ``m=`` line, with what ``a=rtpmap`` / ``a=fmtp`` say of it.

    Attributes:
        number: 0-127.
        encoding: the encoding name as written (``PCMU``, ``telephone-event``), or from the
            static table for types 0-34 without ``a=rtpmap``; ``None`` when unknown.
        clock_rate: Hz; ``None`` when unknown.
        channels: audio channels (``a=rtpmap``'s optional third part, default 1).
        fmtp: the ``a=fmtp`` parameters, if any.
    """

    number: int
    encoding: str | None
    clock_rate: int | None
    channels: int = 1
    fmtp: str | None = None

    def is_codec(self, name: str, clock_rate: int = CLOCK_RATE) -> bool:
        """Whether this is ``name`` (case-insensitive) at ``clock_rate``, mono."""
        return (
            self.encoding is not None
            and self.encoding.upper() == name.upper()
            and self.clock_rate == clock_rate
            and self.channels == 1
        )

    def describe(self) -> str:
        if self.encoding is None:
            return str(self.number)
        return f"{self.encoding}/{self.clock_rate}"


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` line and the lines under it.

    Attributes:
        kind: ``audio``, ``video``, ``application``...
        port: the media port; 0 rejects or disables the stream.
        port_count: the ``/<count>`` after the port (1 when absent).
        protocol: ``RTP/AVP``, ``RTP/SAVP``, ``UDP/TLS/RTP/SAVPF``...
        formats: the format tokens as written.
        payload_types: for RTP protocols, the formats as payload types, in the offered order.
        connection: a media-level ``c=``.
        direction: a media-level direction attribute.
        ptime: ``a=ptime`` in milliseconds.
        rtcp_port: ``a=rtcp`` (RFC 3605): where RTCP goes, when not the RTP port + 1.
        rtcp_connection: the address part of ``a=rtcp``, if given.
        rtcp_mux: ``a=rtcp-mux`` was present (we never answer it: RTCP stays on port + 1).
    """

    kind: str
    port: int
    port_count: int
    protocol: str
    formats: tuple[str, ...]
    payload_types: tuple[PayloadType, ...]
    connection: Connection | None = None
    direction: Direction | None = None
    ptime: int | None = None
    rtcp_port: int | None = None
    rtcp_connection: Connection | None = None
    rtcp_mux: bool = False

    def payload_type(self, number: int) -> PayloadType | None:
        """The payload type numbered ``number``, if offered here."""
        for payload_type in self.payload_types:
            if payload_type.number == number:
                return payload_type
        return None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body (:func:`parse_sdp`)."""

    origin: Origin
    session_name: str
    connection: Connection | None
    direction: Direction | None
    ptime: int | None
    media: tuple[MediaDescription, ...]

    def connection_of(self, media: MediaDescription) -> Connection | None:
        """The ``c=`` that applies to ``media``: its own, else the session's."""
        return media.connection or self.connection

    def direction_of(self, media: MediaDescription) -> Direction:
        """The direction that applies to ``media``: its own, else the session's, else
        ``sendrecv`` (RFC 3264 §5.1)."""
        return media.direction or self.direction or Direction.SENDRECV


# --------------------------------------------------------------------------- parsing


def _int(text: str, what: str, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise _malformed(f"{what} is not a number: {text!r}")
    value = int(text)
    if value > high:
        raise _malformed(f"{what} out of range: {value}")
    return value


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise _malformed(f"c= needs 3 fields: {value!r}")
    return Connection(*parts)


def _origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise _malformed(f"o= needs 6 fields: {value!r}")
    user, session_id, version, net_type, address_type, address = parts
    return Origin(
        user,
        _int(session_id, "o= session id", 2**64 - 1),
        _int(version, "o= version", 2**64 - 1),
        net_type,
        address_type,
        address,
    )


def _ptime(value: str) -> int | None:
    try:
        ptime = round(float(value))
    except ValueError:
        return None
    return ptime if 0 < ptime <= 1000 else None


@dataclass
class _Media:
    kind: str
    port: int
    port_count: int
    protocol: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    direction: Direction | None = None
    ptime: int | None = None
    rtcp_port: int | None = None
    rtcp_connection: Connection | None = None
    rtcp_mux: bool = False
    rtpmap: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)

    def attribute(self, name: str, value: str | None) -> None:
        if name in _DIRECTIONS:
            self.direction = Direction(name)
        elif name == "rtpmap" and value is not None:
            match = _RTPMAP.match(value.strip())
            if match:  # an unreadable rtpmap leaves its type unknown, so never chosen
                number, encoding, rate, channels = match.groups()
                self.rtpmap[int(number)] = (encoding, int(rate), int(channels or 1))
        elif name == "fmtp" and value is not None:
            match = _FMTP.match(value.strip())
            if match:
                self.fmtp[int(match[1])] = match[2].strip()
        elif name == "ptime" and value is not None:
            self.ptime = _ptime(value)
        elif name == "rtcp" and value is not None:
            match = _RTCP.match(value.strip())
            if not match:
                raise _malformed(f"a=rtcp: {value!r}")
            self.rtcp_port = _int(match[1], "a=rtcp port", 65535)
            if match[2]:
                self.rtcp_connection = Connection(match[2], match[3], match[4])
        elif name == "rtcp-mux":
            self.rtcp_mux = True

    def build(self) -> MediaDescription:
        payload_types: list[PayloadType] = []
        if self.protocol.upper().startswith("RTP/") or "/RTP/" in self.protocol.upper():
            for token in self.formats:
                number = _int(token, "RTP payload type", 127)
                mapped = self.rtpmap.get(number)
                if mapped is not None:
                    encoding: str | None
                    encoding, rate, channels = mapped
                    clock_rate: int | None = rate
                elif number in _STATIC:
                    (encoding, clock_rate), channels = _STATIC[number], 1
                else:
                    encoding, clock_rate, channels = None, None, 1
                payload_types.append(
                    PayloadType(number, encoding, clock_rate, channels, self.fmtp.get(number))
                )
        return MediaDescription(
            kind=self.kind,
            port=self.port,
            port_count=self.port_count,
            protocol=self.protocol,
            formats=self.formats,
            payload_types=tuple(payload_types),
            connection=self.connection,
            direction=self.direction,
            ptime=self.ptime,
            rtcp_port=self.rtcp_port,
            rtcp_connection=self.rtcp_connection,
            rtcp_mux=self.rtcp_mux,
        )


_DIRECTIONS: Final = frozenset(direction.value for direction in Direction)


def _media_line(value: str) -> _Media:
    parts = value.split()
    if len(parts) < 4:
        raise _malformed(f"m= needs at least 4 fields: {value!r}")
    kind, port_text, protocol, *formats = parts
    port_part, _, count_part = port_text.partition("/")
    port = _int(port_part, "m= port", 65535)
    count = _int(count_part, "m= port count", 65535) if count_part else 1
    if not all(_TOKEN.match(token) for token in (kind, protocol, *formats)):
        raise _malformed("m= line has unprintable characters")
    return _Media(kind, port, count, protocol, tuple(formats))


def parse_sdp(body: str | bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566), as found in an INVITE, a 200 OK or an ACK.

    Lines may end in CRLF or a bare LF; blank lines, unknown line types and unknown attributes
    are skipped. ``v=0`` must come first and ``o=`` must be present.

    Raises:
        SdpError: ``MALFORMED``, with what was wrong.
    """
    if isinstance(body, bytes):
        if len(body) > MAX_SDP_BYTES:
            raise _malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("SDP is not UTF-8") from None
    if len(body) > MAX_SDP_BYTES:
        raise _malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
    lines = [line.rstrip("\r") for line in body.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise _malformed("empty SDP")
    if lines[0].strip() != "v=0":
        raise _malformed(f"SDP must start with v=0, got {lines[0][:40]!r}")
    origin: Origin | None = None
    session_name = ""
    connection: Connection | None = None
    direction: Direction | None = None
    ptime: int | None = None
    media: list[_Media] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise _malformed(f"not an SDP line: {line[:40]!r}")
        kind, value = line[0], line[2:].strip()
        current = media[-1] if media else None
        if kind == "m":
            media.append(_media_line(value))
        elif kind == "a":
            name, colon, rest = value.partition(":")
            attribute_value = rest if colon else None
            if current is not None:
                current.attribute(name, attribute_value)
            elif name in _DIRECTIONS:
                direction = Direction(name)
            elif name == "ptime" and attribute_value is not None:
                ptime = _ptime(attribute_value)
        elif kind == "c":
            if current is not None:
                current.connection = _connection(value)
            else:
                connection = _connection(value)
        elif kind == "o" and current is None:
            origin = _origin(value)
        elif kind == "s" and current is None:
            session_name = value
        elif kind == "v":
            raise _malformed("a second v= line")
    if origin is None:
        raise _malformed("no o= line")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        direction=direction,
        ptime=ptime,
        media=tuple(item.build() for item in media),
    )


# --------------------------------------------------------------------------- negotiation


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The audio both sides agreed on: everything the RTP leg needs.

    Attributes:
        codec: ``PCMU`` or ``PCMA``.
        payload_type: the codec's payload type, in both directions.
        event_payload_type: telephone-event's payload type, ``None`` when not agreed (then
            DTMF can neither be received nor sent as RFC 4733).
        remote_events: the events the remote can receive (its ``a=fmtp``); empty without
            telephone-event.
        direction: *our* direction: send RTP only if ``direction.sends``, expect it only if
            ``direction.receives``.
        held: we may not send audio (``direction.sends`` is false): the remote put the call
            on hold (it offered ``sendonly`` or ``inactive``, or ``c=0.0.0.0``). The leg goes
            silent both ways (what a held caller sends is music on hold, not for the room)
            until a re-INVITE resumes.
        remote_address: where to send RTP until RTP arrives (then to its source);
            ``None`` when SDP gave none we can use (hold address, a host name).
        remote_port: the remote RTP port.
        remote_rtcp_address: where to send RTCP until RTCP arrives (``a=rtcp`` or the RTP
            address).
        remote_rtcp_port: ``a=rtcp``'s port, else the RTP port + 1.
        remote_ptime: the packet time the remote asked for (ms), if it said; we send 20 ms.
        media_index: the position of the audio ``m=`` line in the offer.
    """

    codec: str
    payload_type: int
    event_payload_type: int | None
    remote_events: frozenset[int]
    direction: Direction
    held: bool
    remote_address: str | None
    remote_port: int
    remote_rtcp_address: str | None
    remote_rtcp_port: int
    remote_ptime: int | None
    media_index: int

    @property
    def codec_spec(self) -> CodecSpec:
        """For :func:`callbridge.media.codecs.get_codec`."""
        return CodecSpec(name=self.codec, sample_rate=CLOCK_RATE)


def parse_events(fmtp: str | None) -> frozenset[int]:
    """The events of a telephone-event ``a=fmtp`` value (``0-15``, ``0-11,16``); RFC 4733's
    default 0-15 when there is none or it cannot be read."""
    if fmtp is None:
        return DEFAULT_EVENTS
    events: set[int] = set()
    for item in fmtp.replace(" ", "").split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            return DEFAULT_EVENTS
        first, last = int(low), int(high) if dash else int(low)
        if not first <= last <= 255:
            return DEFAULT_EVENTS
        events.update(range(first, last + 1))
    return frozenset(events)


def _usable_address(connection: Connection) -> str | None:
    if connection.net_type != "IN":
        raise SdpError(
            SdpProblem.UNSUPPORTED_NETWORK, f"network type {connection.net_type} (only IN)"
        )
    if connection.address_type not in ("IP4", "IP6"):
        raise SdpError(
            SdpProblem.UNSUPPORTED_ADDRESS,
            f"address type {connection.address_type} (only IP4 and IP6)",
        )
    if "/" in connection.address:
        raise SdpError(SdpProblem.UNSUPPORTED_ADDRESS, "multicast address")
    if connection.unspecified:
        return None
    try:
        address = ipaddress.ip_address(connection.address)
    except ValueError:
        if not _HOST.match(connection.address):
            raise _malformed(f"bad connection address {connection.address!r}") from None
        return None  # a host name: we send once RTP has come in from it
    if address.version != (4 if connection.address_type == "IP4" else 6):
        raise _malformed(f"{connection.address_type} with address {connection.address}")
    if address.is_multicast:
        raise SdpError(SdpProblem.UNSUPPORTED_ADDRESS, "multicast address")
    return connection.address


def _choose_codec(
    media: MediaDescription, codecs: Sequence[str], prefer: str | None
) -> PayloadType | None:
    candidates = [pt for pt in media.payload_types if any(pt.is_codec(c) for c in codecs)]
    if prefer is not None:
        for payload_type in candidates:
            if payload_type.is_codec(prefer):
                return payload_type
    return candidates[0] if candidates else None


def _offered(media: MediaDescription) -> str:
    names = [pt.describe() for pt in media.payload_types[:8]] or list(media.formats[:8])
    return ", ".join(names)


def _remote_direction(session: SessionDescription, media: MediaDescription) -> Direction:
    direction = session.direction_of(media)
    connection = session.connection_of(media)
    if connection is not None and connection.unspecified:  # RFC 2543 hold: it receives nothing
        return Direction.of(sends=direction.sends, receives=False)
    return direction


def _agree(
    session: SessionDescription,
    index: int,
    codecs: Sequence[str],
    prefer: str | None,
    direction: Direction,
) -> Negotiated:
    """The agreement on ``session.media[index]`` (an audio line with a non-zero port) with
    ``direction`` ours; raises SdpError."""
    media = session.media[index]
    if media.protocol.upper() not in PROTOCOLS:
        raise SdpError(
            SdpProblem.UNSUPPORTED_TRANSPORT,
            f"transport {media.protocol} (only RTP/AVP: no SRTP)",
        )
    codec = _choose_codec(media, codecs, prefer)
    if codec is None:
        raise SdpError(
            SdpProblem.NO_COMMON_CODEC,
            f"no {' or '.join(codecs)} offered (offered: {_offered(media)})",
        )
    connection = session.connection_of(media)
    if connection is None:
        raise _malformed("no c= line for the audio stream")
    address = _usable_address(connection)
    event = next((pt for pt in media.payload_types if pt.is_codec("telephone-event")), None)
    rtcp_address = address
    if media.rtcp_connection is not None:
        rtcp_address = _usable_address(media.rtcp_connection)
    return Negotiated(
        codec=next(name for name in codecs if codec.is_codec(name)),
        payload_type=codec.number,
        event_payload_type=event.number if event else None,
        remote_events=parse_events(event.fmtp) if event else frozenset(),
        direction=direction,
        held=not direction.sends,
        remote_address=address,
        remote_port=media.port,
        remote_rtcp_address=rtcp_address,
        remote_rtcp_port=media.rtcp_port or min(media.port + 1, 65535),
        remote_ptime=media.ptime or session.ptime,
        media_index=index,
    )


def negotiate(
    offer: SessionDescription,
    *,
    codecs: Sequence[str] = AUDIO_CODECS,
    local: Direction = Direction.SENDRECV,
    prefer: str | None = None,
) -> Negotiated:
    """Choose the audio stream, codec, telephone-event and our direction for ``offer``.

    Args:
        offer: the remote's offer.
        codecs: encodings we accept, by name (a subset of :data:`AUDIO_CODECS`).
        local: the most we want: ``sendrecv``, or less to put the caller on hold ourselves.
        prefer: a codec to keep if offered (the one in use, on a re-offer), whatever its place.

    Returns:
        The first audio ``m=`` line we can take, with ``direction`` already answered (ours).

    Raises:
        SdpError: no audio line, all audio lines on port 0, no common codec, an unsupported
            transport, network or address type; the problem of the first audio line wins.
    """
    audio = [i for i, media in enumerate(offer.media) if media.kind == "audio"]
    if not audio:
        kinds = ", ".join(media.kind for media in offer.media) or "none"
        raise SdpError(SdpProblem.NO_AUDIO, f"no audio stream offered (offered: {kinds})")
    enabled = [i for i in audio if offer.media[i].port != 0]
    if not enabled:
        raise SdpError(SdpProblem.AUDIO_DISABLED, "the audio stream has port 0")
    first_problem: SdpError | None = None
    for index in enabled:
        remote = _remote_direction(offer, offer.media[index])
        try:
            return _agree(offer, index, codecs, prefer, remote.answer(local))
        except SdpError as error:
            first_problem = first_problem or error
    assert first_problem is not None
    raise first_problem


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class Answer:
    """What :meth:`SdpSession.answer` agreed and the SDP to send (``application/sdp``)."""

    negotiated: Negotiated
    sdp: str


def _address_type(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name: RFC 4566 allows an FQDN with IP4


class SdpSession:
    """Our side of one call's offer/answer: the ``o=`` line and what was agreed.

    Args:
        address: the address we put in ``o=`` and ``c=`` (``sip.public_address``, else
            ``sip.host``).
        rtp_port: our RTP port (RTCP is on the next one).
        session_id: the ``o=`` session id; random by default.
        codecs: the encodings we accept, in the order we offer them (a late offer).
        username: the ``o=`` username.
        session_name: the ``s=`` line.
    """

    def __init__(
        self,
        address: str,
        rtp_port: int,
        *,
        session_id: int | None = None,
        codecs: Sequence[str] = AUDIO_CODECS,
        username: str = "-",
        session_name: str = "callbridge",
    ) -> None:
        if not 0 < rtp_port <= 65535:
            raise ValueError(f"rtp_port must be 1-65535, got {rtp_port}")
        unknown = [codec for codec in codecs if codec not in AUDIO_CODECS]
        if unknown or not codecs:
            raise ValueError(f"codecs must be some of {AUDIO_CODECS}, got {list(codecs)}")
        self.address = address
        self.rtp_port = rtp_port
        self.codecs = tuple(codecs)
        self.session_id = session_id if session_id is not None else secrets.randbits(62)
        self.version = self.session_id
        """The ``o=`` version of the last description we wrote."""
        self.negotiated: Negotiated | None = None
        """What was agreed last (``None`` before the first answer)."""
        self._username = username
        self._session_name = session_name
        self._last_body: tuple[str, ...] | None = None
        self._offered_direction: Direction | None = None  # an offer awaiting its answer

    # -- answerer (the INVITE or re-INVITE had an offer)

    def answer(
        self, offer: str | bytes | SessionDescription, *, local: Direction = Direction.SENDRECV
    ) -> Answer:
        """Agree on ``offer`` and write the answer.

        On a re-offer the codec in use is kept if still offered. If we had sent an offer
        ourselves that was never answered, it is forgotten (the remote's offer wins, as after
        glare). Streams we do not take are answered with port 0.

        Raises:
            SdpError: the offer cannot be taken (reply 488; what was agreed before stands).
        """
        if not isinstance(offer, SessionDescription):
            offer = parse_sdp(offer)
        prefer = self.negotiated.codec if self.negotiated else None
        negotiated = negotiate(offer, codecs=self.codecs, local=local, prefer=prefer)
        lines: list[str] = []
        for index, media in enumerate(offer.media):
            if index == negotiated.media_index:
                lines += self._audio_lines(
                    media.protocol,
                    [(negotiated.codec, negotiated.payload_type)],
                    negotiated.event_payload_type,
                    negotiated.direction,
                )
            else:
                lines.append(f"m={media.kind} 0 {media.protocol} {' '.join(media.formats)}")
        self.negotiated = negotiated
        self._offered_direction = None
        return Answer(negotiated, self._write(lines))

    # -- offerer (a late offer: the INVITE had no SDP)

    def offer(self, *, local: Direction = Direction.SENDRECV) -> str:
        """Our offer, for a 200 OK to an INVITE without SDP (or a re-INVITE without SDP):
        every codec we accept in our order, and telephone-event on :data:`EVENT_PAYLOAD_TYPE`.
        Pass the answer from the ACK to :meth:`accept_answer`."""
        codecs = [(codec, 0 if codec == "PCMU" else 8) for codec in self.codecs]
        self._offered_direction = local
        return self._write(self._audio_lines("RTP/AVP", codecs, EVENT_PAYLOAD_TYPE, local))

    def accept_answer(self, answer: str | bytes | SessionDescription) -> Negotiated:
        """Check the answer (from the ACK) to our last :meth:`offer`, and agree on it.

        Raises:
            SdpError: no offer is pending, the answer is malformed, rejects the audio stream
                or picks nothing we offered. The dialog then ends the call with BYE.
        """
        offered = self._offered_direction
        if offered is None:
            raise _malformed("an answer without a pending offer")
        if not isinstance(answer, SessionDescription):
            answer = parse_sdp(answer)
        if len(answer.media) != 1:
            raise _malformed(f"the answer has {len(answer.media)} m= lines; our offer had 1")
        media = answer.media[0]
        if media.kind != "audio":
            raise SdpError(SdpProblem.NO_AUDIO, f"the answer has {media.kind}, not audio")
        if media.port == 0:
            raise SdpError(SdpProblem.AUDIO_DISABLED, "the answer rejected the audio stream")
        remote = _remote_direction(answer, media)
        # The answerer wrote its own view: we send what it receives, within what we offered.
        ours = Direction.of(
            sends=remote.receives and offered.sends, receives=remote.sends and offered.receives
        )
        negotiated = _agree(answer, 0, self.codecs, None, ours)
        self.negotiated = negotiated
        self._offered_direction = None
        return negotiated

    # -- writing

    def _audio_lines(
        self,
        protocol: str,
        codecs: Sequence[tuple[str, int]],
        event: int | None,
        direction: Direction,
    ) -> list[str]:
        formats = [str(number) for _, number in codecs]
        if event is not None:
            formats.append(str(event))
        lines = [f"m=audio {self.rtp_port} {protocol} {' '.join(formats)}"]
        lines += [f"a=rtpmap:{number} {codec}/{CLOCK_RATE}" for codec, number in codecs]
        if event is not None:
            lines.append(f"a=rtpmap:{event} telephone-event/{CLOCK_RATE}")
            lines.append(f"a=fmtp:{event} {EVENTS}")
        lines.append(f"a=ptime:{PTIME}")
        lines.append(f"a={direction.value}")
        return lines

    def _write(self, media_lines: list[str]) -> str:
        address_type = _address_type(self.address)
        body = (
            f"s={self._session_name}",
            f"c=IN {address_type} {self.address}",
            "t=0 0",
            *media_lines,
        )
        if self._last_body is not None and body != self._last_body:
            self.version += 1
        self._last_body = body
        origin = (
            f"o={self._username} {self.session_id} {self.version} IN {address_type} {self.address}"
        )
        return "\r\n".join(("v=0", origin, *body)) + "\r\n"
