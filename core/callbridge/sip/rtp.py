"""RTP, RFC 4733 telephone-events and RTCP for the SIP leg: packets in and out, and the
reception statistics RTCP reports. Pure: bytes and numbers in, bytes and records out; the caller
passes every time it needs (``time.monotonic()`` for arrivals, wall-clock NTP for reports).

**RTP** (RFC 3550 §5.1). :func:`parse_rtp` reads the fixed header with one ``struct`` call and
skips CSRCs, a header extension (``X``) and padding (``P``: the last octet counts the padding,
itself included); version 2 only. The payload stays bytes: G.711 is decoded by
:mod:`callbridge.media.g711` as a whole array, never sample by sample. :class:`RtpSender` numbers
one outgoing stream: random SSRC, sequence and timestamp to start (§5.1), the sequence +1 and the
timestamp +160 per 20 ms frame, including frames it does not send (hold, DTMF), so the remote's
jitter buffer sees the true gap; the first audio packet after a pause carries the marker
(RFC 3551 §4.1). :func:`is_rtcp` tells RTCP from RTP on one port (RFC 5761 §4).

**Telephone events** (RFC 4733). :class:`TelephoneEvent` is the 4-octet payload (event, end
bit, volume, duration). Sending (:func:`digit_packets`, :meth:`RtpSender.tick`): one packet per
20 ms; all packets of a digit carry the timestamp of its start; the first has the marker; the
duration grows by a frame each packet; the last is sent three times with the end bit
(§2.5.1.4), each with a new sequence number; audio is held back while the digit plays. Receiving
(:class:`DigitReceiver`): a digit is reported once, on the first packet of it that arrives
(start, update or end: any may be lost), keyed by (timestamp, event); repeats, the three end
packets and late reordered packets of an earlier digit are dropped, and a long event's next
segment (§2.5.1.3: new timestamp, no marker) is not a new press. Events that are no keypad
digit (16, flash) are counted, not reported.

**RTCP** (RFC 3550 §6.4). :func:`parse_rtcp` reads a compound packet (SR, RR, SDES, BYE; other
types are kept as :class:`OtherRtcp`): every part must be version 2 and the lengths must add up
exactly; a part that is not SR/RR first is accepted (RFC 5506 reduced size, which baresip offers
with ``a=rtcp-rsize``). :func:`build_rtcp` writes one; :func:`compound_report` writes the usual
SR or RR + SDES CNAME (+ BYE at the end of the call).

**Reception statistics** (:class:`RtpReception`, RFC 3550 A.1, A.3, A.8): the extended highest
sequence number (16-bit wraparound counted in cycles), packets expected and received, cumulative
loss (negative with duplicates, as the RFC's arithmetic gives), the fraction lost since the last
report, interarrival jitter in timestamp units (the RTP timestamp's own 32-bit wrap handled), and
the LSR/DLSR of the last sender report; :func:`round_trip` gives the round trip from a report
block about our stream. A jump of 3000 numbers or more ahead, or of more than 100 back, is
believed only when the next packet follows it (A.1's bad-sequence rule: the packet is not
taken, and a confirmed jump restarts the counts); an SSRC change restarts them too.

Why this is apart from :class:`~callbridge.media.arrivals.FrameArrivals`: RTCP's figures are
defined bit for bit by the RFC (duplicates lower the cumulative loss, the fraction is per report
interval, jitter is in timestamp units from the packets' own timestamps), while FrameArrivals
gives the figures every provider's calls report (lost, late, reordered, duplicates, jitter in
seconds). They meet through :meth:`RtpReception.observe`'s return value, the packet's place in
the stream: the extended sequence number, kept rising across a restart, which is what
FrameArrivals and :class:`~callbridge.media.reorder.ReorderBuffer` need (both compare plain
ints, so a 16-bit number that wraps would break them).

**Symmetric RTP** (:class:`SourceLatch`): send to where the remote's packets come from, not to
the SDP address (linphone advertises an address its RTP does not come from). The latch takes the
source of the first valid packet and then drops packets from anywhere else, so nobody can inject
audio into a room once the call's media has started (the research note found aiortp re-latching
to any source).
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

RTP_VERSION: Final = 2
CLOCK_RATE: Final = 8000
"""RTP clock of G.711 and its telephone-events, in Hz."""
FRAME_SAMPLES: Final = 160
"""Timestamp units in one 20 ms frame at 8000 Hz."""
MAX_DROPOUT: Final = 3000
"""RFC 3550 A.1: a forward jump up to this many numbers is loss, not a restart."""
MAX_MISORDER: Final = 100
"""RFC 3550 A.1: a backward step up to this many numbers is a late packet, not a restart."""
DIGITS: Final = "0123456789*#ABCD"
"""Keypad digits by RFC 4733 event code (0-15)."""
DIGIT_DURATION: Final = 800
"""A sent digit lasts 100 ms (in timestamp units), plus the repeated end packets."""
DIGIT_GAP_FRAMES: Final = 3
"""Frames of audio between two digits sent one after the other (60 ms)."""
EVENT_VOLUME: Final = 10
"""The volume we send digits at (-10 dBm0, the RFC 4733 power level field)."""
END_PACKETS: Final = 3
"""How many times the end of an event is sent (RFC 4733 §2.5.1.4)."""

_HEADER: Final = struct.Struct("!BBHII")
_EXTENSION: Final = struct.Struct("!HH")
_EVENT: Final = struct.Struct("!BBH")
_RTCP_HEADER: Final = struct.Struct("!BBH")
_SENDER_INFO: Final = struct.Struct("!IQIII")
_REPORT_BLOCK: Final = struct.Struct("!IIIIII")
_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
SDES_CNAME: Final = 1


class RtpError(ValueError):
    """Bytes that are not a valid RTP or RTCP packet (or a payload that is not an event)."""


def _random32() -> int:
    return secrets.randbits(32)


# --------------------------------------------------------------------------- RTP


@dataclass(frozen=True, slots=True)
class HeaderExtension:
    """An RTP header extension (RFC 3550 §5.3.1): a profile word and whole 32-bit words."""

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (a plain slotted record, not frozen: it is made for every packet
    received, and a frozen dataclass costs several times as much to build).

    Attributes:
        payload_type: 0-127.
        sequence: 16-bit sequence number.
        timestamp: 32-bit media timestamp.
        ssrc: 32-bit synchronisation source.
        payload: the payload, padding removed.
        marker: the M bit (talkspurt start; an event's first packet).
        csrcs: contributing sources (at most 15).
        extension: the header extension, if any.
        padding: padding octets after the payload, the count octet included (0: none).
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: HeaderExtension | None = None
    padding: int = 0

    def to_bytes(self) -> bytes:
        """The packet on the wire.

        Raises:
            RtpError: a field out of range.
        """
        if not (
            0 <= self.payload_type <= 127
            and 0 <= self.sequence < _SEQ_MOD
            and 0 <= self.timestamp < _TS_MOD
            and 0 <= self.ssrc < _TS_MOD
            and len(self.csrcs) <= 15
            and all(0 <= csrc < _TS_MOD for csrc in self.csrcs)
            and 0 <= self.padding <= 255
        ):
            raise RtpError("RTP field out of range")
        first = 0x80 | (0x20 if self.padding else 0) | len(self.csrcs)
        extension = b""
        if self.extension is not None:
            first |= 0x10
            words, rest = divmod(len(self.extension.data), 4)
            if rest or words > 0xFFFF or not 0 <= self.extension.profile <= 0xFFFF:
                raise RtpError("an RTP header extension is up to 65535 whole 32-bit words")
            extension = _EXTENSION.pack(self.extension.profile, words) + self.extension.data
        second = (0x80 if self.marker else 0) | self.payload_type
        padding = bytes(self.padding - 1) + bytes((self.padding,)) if self.padding else b""
        return b"".join(
            (
                _HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc),
                struct.pack(f"!{len(self.csrcs)}I", *self.csrcs),
                extension,
                self.payload,
                padding,
            )
        )


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet.

    Raises:
        RtpError: shorter than its header, a version other than 2, a CSRC list, extension or
            padding count that runs past the end.
    """
    size = len(data)
    if size < 12:
        raise RtpError(f"RTP packet of {size} bytes")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first == 0x80:  # what G.711 senders send: no CSRC, extension or padding
        return RtpPacket(
            second & 0x7F, sequence, timestamp, ssrc, bytes(data[12:]), bool(second & 0x80)
        )
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}")
    offset = 12 + 4 * (first & 0x0F)
    if offset > size:
        raise RtpError("RTP CSRC list runs past the end")
    csrcs: tuple[int, ...] = ()
    if first & 0x0F:
        csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, 12)
    extension = None
    if first & 0x10:
        if offset + 4 > size:
            raise RtpError("RTP header extension runs past the end")
        profile, words = _EXTENSION.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > size:
            raise RtpError("RTP header extension runs past the end")
        extension = HeaderExtension(profile, bytes(data[start:offset]))
    end = size
    padding = 0
    if first & 0x20:
        padding = data[-1]
        end = size - padding
        if padding == 0 or end < offset:
            raise RtpError("RTP padding count is wrong")
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(second & 0x80),
        csrcs=csrcs,
        extension=extension,
        padding=padding,
    )


def is_rtcp(data: bytes) -> bool:
    """Whether a packet on a shared port is RTCP: its second octet is an RTCP packet type
    (192-223), which RTP's marker + payload type never is with the types we use (RFC 5761 §4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# --------------------------------------------------------------------------- telephone events


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """An RFC 4733 §2.3 event payload.

    Attributes:
        event: the event code (0-9 digits, 10 ``*``, 11 ``#``, 12-15 A-D, 16 flash).
        end: the E bit: this packet ends the event.
        volume: the power level, 0 to 63 (-dBm0).
        duration: how long the event has lasted so far, in timestamp units (up to 65535).
    """

    event: int
    end: bool = False
    volume: int = EVENT_VOLUME
    duration: int = 0

    def to_bytes(self) -> bytes:
        if not (0 <= self.event <= 255 and 0 <= self.volume <= 63 and 0 <= self.duration):
            raise RtpError("telephone-event field out of range")
        if self.duration > 0xFFFF:
            raise RtpError("telephone-event duration above 65535")
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Read the first event of a payload.

        Raises:
            RtpError: shorter than 4 octets.
        """
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    @property
    def digit(self) -> str | None:
        """The keypad digit, ``None`` for another event."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def event_code(digit: str) -> int:
    """The RFC 4733 event code of a keypad digit (``0``-``9``, ``*``, ``#``, ``A``-``D``).

    Raises:
        ValueError: not a keypad digit.
    """
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return code


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One telephone-event packet to send: the payload, its timestamp and the marker."""

    event: TelephoneEvent
    timestamp: int
    marker: bool


def digit_packets(
    event: int,
    *,
    timestamp: int,
    duration: int = DIGIT_DURATION,
    step: int = FRAME_SAMPLES,
    volume: int = EVENT_VOLUME,
    end_packets: int = END_PACKETS,
) -> Iterator[EventPacket]:
    """The packets of one event, one per ``step`` (take one per 20 ms tick).

    The first packet has the marker; every packet has the event's start ``timestamp``; the
    duration grows by ``step`` each packet up to ``duration``, and the packet that reaches it
    has the end bit and is sent ``end_packets`` times. For 100 ms: durations 160, 320, 480,
    640, then 800 (end) three times: seven packets.

    Raises:
        ValueError: ``duration`` or ``step`` out of 1-65535, ``end_packets`` below 1.
    """
    if not (0 < step <= 0xFFFF and 0 < duration <= 0xFFFF and end_packets >= 1):
        raise ValueError("need 0 < step, duration <= 65535 and end_packets >= 1")
    timestamp %= _TS_MOD
    elapsed = step
    marker = True
    while elapsed < duration:
        yield EventPacket(TelephoneEvent(event, False, volume, elapsed), timestamp, marker)
        marker = False
        elapsed += step
    for _ in range(end_packets):
        yield EventPacket(TelephoneEvent(event, True, volume, duration), timestamp, marker)
        marker = False


class DigitReceiver:
    """Turns received telephone-event packets into keypad digits, each press once (module
    docstring).

    Args:
        remembered: how many recent events are remembered to recognise their late packets.
    """

    def __init__(self, remembered: int = 16) -> None:
        self._recent: deque[tuple[int, int]] = deque(maxlen=remembered)
        self._last: tuple[int, int, bool, int] | None = None  # timestamp, event, ended, duration
        self.events = 0
        """Distinct events received."""
        self.ignored = 0
        """Events that are no keypad digit (flash, tones), not reported."""
        self.malformed = 0
        """Payloads too short to be an event."""

    def receive(self, timestamp: int, payload: bytes, *, marker: bool = False) -> str | None:
        """The digit this packet starts, or ``None`` (a packet of an event already reported,
        another kind of event, or a malformed payload)."""
        try:
            event = TelephoneEvent.parse(payload)
        except RtpError:
            self.malformed += 1
            return None
        key = (timestamp, event.event)
        last = self._last
        if key in self._recent:
            if last is not None and last[:2] == key:
                ended, duration = last[2] or event.end, max(last[3], event.duration)
                self._last = (timestamp, event.event, ended, duration)
            return None
        self._recent.append(key)
        self._last = (timestamp, event.event, event.end, event.duration)
        if (
            not marker
            and last is not None
            and last[1] == event.event
            and not last[2]
            and 0 < (timestamp - last[0]) % _TS_MOD <= 0x10000
            and last[3] >= 0xFFFF - CLOCK_RATE
        ):
            return None  # the next segment of a long event (RFC 4733 §2.5.1.3)
        self.events += 1
        digit = event.digit
        if digit is None:
            self.ignored += 1
        return digit


class RtpSender:
    """Numbers one outgoing RTP stream and paces digits into it; call :meth:`tick` once per
    20 ms frame of the media clock.

    Args:
        payload_type: the audio payload type agreed in SDP.
        event_payload_type: telephone-event's payload type, ``None`` when not agreed.
        ssrc: the SSRC; random by default.
        sequence: the first sequence number; random by default.
        timestamp: the first timestamp; random by default.
        frame_samples: timestamp units per frame.
    """

    def __init__(
        self,
        payload_type: int,
        *,
        event_payload_type: int | None = None,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
        frame_samples: int = FRAME_SAMPLES,
    ) -> None:
        self.payload_type = payload_type
        self.event_payload_type = event_payload_type
        self.ssrc = _random32() if ssrc is None else ssrc
        self.frame_samples = frame_samples
        self.packets_sent = 0
        """RTP packets sent (the SR's packet count)."""
        self.octets_sent = 0
        """Payload octets sent (the SR's octet count)."""
        self.digits_sent = 0
        self._sequence = (_random32() if sequence is None else sequence) % _SEQ_MOD
        self._timestamp = (_random32() if timestamp is None else timestamp) % _TS_MOD
        self._marker = True
        self._digits: deque[int] = deque()
        self._playing: Iterator[EventPacket] | None = None
        self._gap = 0

    @property
    def timestamp(self) -> int:
        """The timestamp of the next frame."""
        return self._timestamp

    @property
    def sequence(self) -> int:
        """The sequence number of the next packet."""
        return self._sequence

    @property
    def digits_pending(self) -> int:
        """Digits queued or playing."""
        return len(self._digits) + (self._playing is not None)

    def audio(self, payload: bytes) -> bytes:
        """One frame of audio now; the media time moves on a frame."""
        marker = 0x80 if self._marker else 0
        self._marker = False
        packet = (
            _HEADER.pack(
                0x80, marker | self.payload_type, self._sequence, self._timestamp, self.ssrc
            )
            + payload
        )
        self._sent(len(payload))
        self._timestamp = (self._timestamp + self.frame_samples) % _TS_MOD
        return packet

    def silence(self) -> None:
        """A frame's time passes with nothing sent (hold, nothing to say); the next audio
        packet starts a talkspurt (marker)."""
        self._timestamp = (self._timestamp + self.frame_samples) % _TS_MOD
        self._marker = True

    def event(self, packet: EventPacket) -> bytes:
        """A telephone-event packet at ``packet``'s timestamp; the media time does not move.

        Raises:
            ValueError: no telephone-event payload type was agreed.
        """
        if self.event_payload_type is None:
            raise ValueError("no telephone-event payload type agreed")
        payload = packet.event.to_bytes()
        data = (
            _HEADER.pack(
                0x80,
                (0x80 if packet.marker else 0) | self.event_payload_type,
                self._sequence,
                packet.timestamp,
                self.ssrc,
            )
            + payload
        )
        self._sent(len(payload))
        return data

    def send_digits(self, digits: str) -> None:
        """Queue keypad digits; they play one after the other from the next :meth:`tick`.

        Raises:
            ValueError: a character that is no keypad digit, or no telephone-event agreed
                (nothing is queued then).
        """
        if self.event_payload_type is None:
            raise ValueError("no telephone-event payload type agreed")
        self._digits.extend([event_code(digit) for digit in digits])

    def tick(self, payload: bytes | None) -> bytes | None:
        """The packet for this frame: a digit's packet while one plays (the frame's audio is
        held back, so the far end never plays the key both as an event and as audio), else
        ``payload`` as audio, else nothing (``None``:
        the frame's time passes unsent)."""
        if self._playing is None and self._digits and not self._gap:
            code = self._digits.popleft()
            self._playing = digit_packets(code, timestamp=self._timestamp)
            self.digits_sent += 1
        if self._playing is not None:
            packet = next(self._playing, None)
            if packet is not None:
                data = self.event(packet)
                self._timestamp = (self._timestamp + self.frame_samples) % _TS_MOD
                return data
            self._playing = None
            self._gap = DIGIT_GAP_FRAMES
        if self._gap:
            self._gap -= 1
        if payload is None:
            self.silence()
            return None
        return self.audio(payload)

    def sender_info(self, ntp_timestamp: int) -> SenderInfo:
        """The SR sender info for a report sent now (``ntp_timestamp``: wall clock, see
        :func:`ntp_timestamp`); the RTP timestamp is the media time of the next frame."""
        return SenderInfo(ntp_timestamp, self._timestamp, self.packets_sent, self.octets_sent)

    def _sent(self, octets: int) -> None:
        self._sequence = (self._sequence + 1) % _SEQ_MOD
        self.packets_sent += 1
        self.octets_sent += octets


# --------------------------------------------------------------------------- RTCP


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """An RTCP reception report block (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the source reported on.
        fraction_lost: packets lost since the previous report, in 256ths.
        cumulative_lost: packets lost since the start (24-bit signed: duplicates make it
            negative).
        highest_sequence: the extended highest sequence number received.
        jitter: interarrival jitter, in timestamp units.
        last_sr: the middle 32 bits of the NTP timestamp of the last SR received (0: none).
        delay_since_last_sr: since that SR arrived, in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int = 0
    delay_since_last_sr: int = 0


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender information of an SR: when (NTP, 64-bit; RTP timestamp) and how much sent."""

    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int


@dataclass(frozen=True, slots=True)
class SenderReport:
    """An RTCP SR (type 200)."""

    ssrc: int
    sender_info: SenderInfo
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """An RTCP RR (type 201)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One source's SDES items, as (item type, value) pairs."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...]

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """An RTCP SDES (type 202)."""

    chunks: tuple[SdesChunk, ...]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """An RTCP BYE (type 203): these sources leave."""

    ssrcs: tuple[int, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OtherRtcp:
    """An RTCP packet of another type (APP, feedback, XR), kept as read."""

    packet_type: int
    count: int
    body: bytes


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Goodbye | OtherRtcp


def _signed24(value: int) -> int:
    return value - (1 << 24) if value & 0x800000 else value


def _parse_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if offset + 24 * count > len(body):
        raise RtpError("RTCP report blocks run past the packet")
    blocks = []
    for index in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(
            body, offset + 24 * index
        )
        blocks.append(
            ReportBlock(ssrc, lost >> 24, _signed24(lost & 0xFFFFFF), highest, jitter, lsr, dlsr)
        )
    return tuple(blocks)


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtpError("RTCP SDES chunk runs past the packet")
        (ssrc,) = struct.unpack_from("!I", body, offset)
        offset += 4
        items = []
        while True:
            if offset >= len(body):
                raise RtpError("RTCP SDES items run past the packet")
            kind = body[offset]
            if kind == 0:
                offset = (offset + 4) & ~3  # the null item and padding to the next word
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtpError("RTCP SDES item runs past the packet")
            length = body[offset + 1]
            items.append((kind, bytes(body[offset + 2 : offset + 2 + length])))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Goodbye:
    if 4 * count > len(body):
        raise RtpError("RTCP BYE sources run past the packet")
    ssrcs = struct.unpack_from(f"!{count}I", body)
    reason = None
    offset = 4 * count
    if offset < len(body):
        length = body[offset]
        if offset + 1 + length > len(body):
            raise RtpError("RTCP BYE reason runs past the packet")
        reason = body[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
    return Goodbye(tuple(ssrcs), reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet into its parts, in order (module docstring).

    Raises:
        RtpError: a part that is not version 2, lengths that do not add up, padding anywhere
            but the last part, or a part too short for its counts.
    """
    packets: list[RtcpPacket] = []
    offset = 0
    size = len(data)
    if size < 4:
        raise RtpError(f"RTCP packet of {size} bytes")
    while offset < size:
        if offset + 4 > size:
            raise RtpError("RTCP length does not add up")
        first, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTCP version {first >> 6}")
        end = offset + 4 * (words + 1)
        if end > size:
            raise RtpError("RTCP length runs past the datagram")
        body_end = end
        if first & 0x20:
            if end != size:
                raise RtpError("RTCP padding before the last packet")
            padding = data[end - 1]
            body_end = end - padding
            if padding == 0 or body_end < offset + 4:
                raise RtpError("RTCP padding count is wrong")
        body = bytes(data[offset + 4 : body_end])
        count = first & 0x1F
        packet: RtcpPacket
        if packet_type in (RTCP_SR, RTCP_RR):
            if len(body) < 4 or (packet_type == RTCP_SR and len(body) < 24):
                raise RtpError("RTCP report too short")
            (ssrc,) = struct.unpack_from("!I", body)
            if packet_type == RTCP_SR:
                _, ntp, rtp_ts, packet_count, octet_count = _SENDER_INFO.unpack_from(body)
                info = SenderInfo(ntp, rtp_ts, packet_count, octet_count)
                packet = SenderReport(ssrc, info, _parse_blocks(body, 24, count))
            else:
                packet = ReceiverReport(ssrc, _parse_blocks(body, 4, count))
        elif packet_type == RTCP_SDES:
            packet = _parse_sdes(body, count)
        elif packet_type == RTCP_BYE:
            packet = _parse_bye(body, count)
        else:
            packet = OtherRtcp(packet_type, count, body)
        packets.append(packet)
        offset = end
    return packets


def _block_bytes(block: ReportBlock) -> bytes:
    lost = max(-0x800000, min(0x7FFFFF, block.cumulative_lost)) & 0xFFFFFF
    return _REPORT_BLOCK.pack(
        block.ssrc,
        (min(max(block.fraction_lost, 0), 255) << 24) | lost,
        block.highest_sequence % _TS_MOD,
        min(max(block.jitter, 0), _TS_MOD - 1),
        block.last_sr,
        min(block.delay_since_last_sr, _TS_MOD - 1),
    )


def _part(count: int, packet_type: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return _RTCP_HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


def _packet_bytes(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport | ReceiverReport):
        if len(packet.reports) > 31:
            raise RtpError("at most 31 report blocks per report")
        blocks = b"".join(_block_bytes(block) for block in packet.reports)
        if isinstance(packet, SenderReport):
            info = packet.sender_info
            head = _SENDER_INFO.pack(
                packet.ssrc,
                info.ntp_timestamp,
                info.rtp_timestamp % _TS_MOD,
                info.packet_count % _TS_MOD,
                info.octet_count % _TS_MOD,
            )
            return _part(len(packet.reports), RTCP_SR, head + blocks)
        return _part(len(packet.reports), RTCP_RR, struct.pack("!I", packet.ssrc) + blocks)
    if isinstance(packet, SourceDescription):
        chunks = []
        for chunk in packet.chunks:
            items = b"".join(
                bytes((kind, len(value))) + value for kind, value in chunk.items if value
            )
            raw = struct.pack("!I", chunk.ssrc) + items + b"\x00"
            chunks.append(raw + bytes(-len(raw) % 4))
        return _part(len(packet.chunks), RTCP_SDES, b"".join(chunks))
    if isinstance(packet, Goodbye):
        body = struct.pack(f"!{len(packet.ssrcs)}I", *packet.ssrcs)
        if packet.reason:
            reason = packet.reason.encode("utf-8")[:255]
            body += bytes((len(reason),)) + reason
        return _part(len(packet.ssrcs), RTCP_BYE, body)
    return _part(packet.count, packet.packet_type, packet.body)


def build_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound RTCP packet of ``packets``, in order (no padding).

    Raises:
        RtpError: more than 31 report blocks in one report.
    """
    return b"".join(_packet_bytes(packet) for packet in packets)


def compound_report(
    report: SenderReport | ReceiverReport, cname: str, *, bye: str | None = None
) -> bytes:
    """The compound packet to send each report interval (RFC 3550 §6.1): ``report``, then an
    SDES with our CNAME; with ``bye`` (a reason, possibly empty) a BYE at the end, for the
    last report of the call."""
    cname_bytes = cname.encode("utf-8")[:255]
    packets: list[RtcpPacket] = [
        report,
        SourceDescription((SdesChunk(report.ssrc, ((SDES_CNAME, cname_bytes),)),)),
    ]
    if bye is not None:
        packets.append(Goodbye((report.ssrc,), bye or None))
    return build_rtcp(packets)


_NTP_EPOCH: Final = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def ntp_timestamp(unix_seconds: float) -> int:
    """The 64-bit NTP timestamp (RFC 3550 §4) of a wall-clock time (``time.time()``)."""
    return round((unix_seconds + _NTP_EPOCH) * (1 << 32)) % (1 << 64)


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp: the units of LSR (1/65536 s)."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip(block: ReportBlock, arrival_ntp: int) -> float | None:
    """The round trip in seconds that a report block about *our* stream gives (RFC 3550
    §6.4.1: arrival - LSR - DLSR), given when it arrived (our wall clock as NTP); ``None``
    when the remote has had no SR from us yet, or the clocks make it negative."""
    if block.last_sr == 0:
        return None
    units = (ntp_middle(arrival_ntp) - block.last_sr - block.delay_since_last_sr) % _TS_MOD
    if units >= 1 << 31:
        return None
    return units / 65536


def rtcp_interval(random: float, *, initial: bool = False, minimum: float = 5.0) -> float:
    """Seconds until the next report (RFC 3550 §6.3.1 for a two-party call, whose bandwidth
    share never beats the 5 s minimum): the minimum, halved for the first report, times a
    random factor in [0.5, 1.5), over e - 3/2. ``random`` is a draw from [0, 1)."""
    base = minimum / 2 if initial else minimum
    return base * (0.5 + random) / 1.21828


# --------------------------------------------------------------------------- reception


class RtpReception:
    """RFC 3550 reception statistics of one remote source, for our RTCP report blocks (module
    docstring). :meth:`observe` every RTP packet as it arrives (audio and events alike: they
    share the sequence numbers); :meth:`sender_report` every SR from the source;
    :meth:`report_block` when a report is due.

    Args:
        clock_rate: the RTP clock, for jitter in timestamp units.
    """

    def __init__(self, clock_rate: int = CLOCK_RATE) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        """The source being counted (the last one seen)."""
        self.received = 0
        """Packets received since the (re)start, duplicates and late ones included."""
        self.jitter = 0.0
        """Interarrival jitter, in timestamp units."""
        self.restarts = 0
        """Times counting started over (a new SSRC, or a confirmed jump of the sequence)."""
        self._base = 0
        self._max = 0
        self._cycles = 0
        self._bad = _SEQ_MOD + 1
        self._expected_prior = 0
        self._received_prior = 0
        self._offset = 0  # keeps the stream index rising across restarts
        self._highest_index = -1
        self._transit_at: tuple[float, int] | None = None  # the last arrival and its timestamp
        self._last_sr = 0
        self._last_sr_at = 0.0

    @property
    def extended_highest(self) -> int:
        """The extended highest sequence number received (cycles of 65536 + the last)."""
        return self._cycles + self._max

    @property
    def expected(self) -> int:
        return self.extended_highest - self._base + 1 if self.ssrc is not None else 0

    @property
    def cumulative_lost(self) -> int:
        """Packets expected and not received; negative with duplicates (RFC 3550 A.3)."""
        return self.expected - self.received

    def observe(
        self, ssrc: int, sequence: int, timestamp: int, arrival: float, *, timing: bool = True
    ) -> int | None:
        """Count one packet (``arrival``: monotonic seconds) and return its place in the
        stream (module docstring), or ``None`` when it is not taken: a jump of the sequence
        number not (yet) confirmed by the next packet. ``timing=False`` leaves it out of the
        jitter (telephone-event packets, whose timestamps are the event's start)."""
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.restarts += 1
            self.ssrc = ssrc
            self.jitter = 0.0
            self._last_sr = 0
            self._start(sequence)
        else:
            delta = (sequence - self._max) % _SEQ_MOD
            if delta < MAX_DROPOUT:
                if sequence < self._max:
                    self._cycles += _SEQ_MOD
                self._max = sequence
            elif delta <= _SEQ_MOD - MAX_MISORDER:
                if sequence != self._bad:
                    self._bad = (sequence + 1) % _SEQ_MOD
                    return None
                self.restarts += 1
                self._start(sequence)
            # else: a duplicate or a late packet, counted below as RFC 3550 A.1 does
        self.received += 1
        signed = ((sequence - self._max + 0x8000) % _SEQ_MOD) - 0x8000
        index = self.extended_highest + signed + self._offset
        if index > self._highest_index:
            self._highest_index = index
        if timing:
            last = self._transit_at
            if last is not None:
                elapsed = (timestamp - last[1] + 0x80000000) % _TS_MOD - 0x80000000
                difference = (arrival - last[0]) * self.clock_rate - elapsed
                self.jitter += (abs(difference) - self.jitter) / 16
            self._transit_at = (arrival, timestamp)
        return index

    def _start(self, sequence: int) -> None:
        # RFC 3550 A.1 init_seq; the stream index carries on after the highest one given.
        self._base = self._max = sequence
        self._cycles = 0
        self._bad = _SEQ_MOD + 1
        self.received = 0
        self._expected_prior = self._received_prior = 0
        self._transit_at = None
        if self._highest_index >= 0:
            self._offset = self._highest_index + 1 - sequence

    def sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        """Note an SR from the source (``arrival``: monotonic seconds), for LSR and DLSR."""
        self._last_sr = ntp_middle(ntp_timestamp)
        self._last_sr_at = arrival

    def report_block(self, now: float) -> ReportBlock | None:
        """The report block on the source for a report sent at ``now`` (monotonic seconds),
        and the start of the next interval; ``None`` before any packet arrived."""
        if self.ssrc is None:
            return None
        expected = self.expected
        interval_expected = expected - self._expected_prior
        interval_received = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        interval_lost = interval_expected - interval_received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        delay = 0
        if self._last_sr:
            delay = max(0, round((now - self._last_sr_at) * 65536))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=max(-0x800000, min(0x7FFFFF, self.cumulative_lost)),
            highest_sequence=self.extended_highest % _TS_MOD,
            jitter=int(self.jitter),
            last_sr=self._last_sr,
            delay_since_last_sr=delay,
        )


@dataclass(slots=True)
class RemoteReception:
    """What the remote's RTCP says about the audio we send it, for the call's media figures:
    feed it every report block whose SSRC is our sender's (:meth:`add`).

    Attributes:
        reports: report blocks received.
        fraction_lost: the last block's fraction lost (0 to 1).
        cumulative_lost: the last block's cumulative loss.
        jitter: the last block's jitter, in seconds.
        max_jitter: the largest jitter reported, in seconds.
        round_trips: round trips measured.
        round_trip_total: their sum, in seconds.
        round_trip_max: the longest, in seconds.
    """

    clock_rate: int = CLOCK_RATE
    reports: int = 0
    fraction_lost: float = 0.0
    cumulative_lost: int = 0
    jitter: float = 0.0
    max_jitter: float = 0.0
    round_trips: int = 0
    round_trip_total: float = 0.0
    round_trip_max: float = 0.0

    def add(self, block: ReportBlock, arrival_ntp: int) -> None:
        """Take a report block about our stream that arrived at ``arrival_ntp`` (wall clock)."""
        self.reports += 1
        self.fraction_lost = block.fraction_lost / 256
        self.cumulative_lost = block.cumulative_lost
        self.jitter = block.jitter / self.clock_rate
        self.max_jitter = max(self.max_jitter, self.jitter)
        rtt = round_trip(block, arrival_ntp)
        if rtt is not None:
            self.round_trips += 1
            self.round_trip_total += rtt
            self.round_trip_max = max(self.round_trip_max, rtt)

    def figures(self) -> dict[str, int]:
        """``rtcp_reports``, ``remote_lost``, ``remote_jitter_us`` (the largest reported) and,
        once measured, ``rtt_ms_mean`` / ``rtt_ms_max``; nothing before the first report."""
        if not self.reports:
            return {}
        figures = {
            "rtcp_reports": self.reports,
            "remote_lost": self.cumulative_lost,
            "remote_jitter_us": round(self.max_jitter * 1_000_000),
        }
        if self.round_trips:
            figures["rtt_ms_mean"] = round(self.round_trip_total / self.round_trips * 1000)
            figures["rtt_ms_max"] = round(self.round_trip_max * 1000)
        return figures


# --------------------------------------------------------------------------- symmetric RTP

Address = tuple[str, int]


class SourceLatch:
    """Symmetric RTP for one port (RTP, or RTCP): where to send, and which packets to take.

    Until a packet is accepted, :attr:`destination` is the address from SDP (``None``: none
    usable, send nothing yet). The first packet accepted latches its source: from then on
    :attr:`destination` is that source and packets from any other are refused (counted in
    :attr:`refused`). Call :meth:`accept` only for packets that parsed and carry a negotiated
    payload type, so stray datagrams cannot take the latch.

    Args:
        signalled: the remote address from SDP, if usable.
    """

    __slots__ = ("destination", "latched", "refused")

    def __init__(self, signalled: Address | None) -> None:
        self.destination = signalled
        self.latched = False
        self.refused = 0
        """Packets refused because they came from another source than the latched one."""

    def accept(self, source: Address) -> bool:
        """Whether to take a packet from ``source`` (latching onto the first one)."""
        if not self.latched:
            self.destination = source
            self.latched = True
            return True
        if source == self.destination:
            return True
        self.refused += 1
        return False

    def reset(self, signalled: Address | None) -> None:
        """New SDP moved the remote's media (a re-INVITE with another address or port):
        send there and latch again on the next packet."""
        self.destination = signalled
        self.latched = False
