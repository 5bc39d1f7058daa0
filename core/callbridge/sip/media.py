"""The SIP leg's media: RTP and RTCP over UDP as a :class:`~callbridge.protocols.MediaStream`,
so a SIP call runs through the same bridge and media clock as a provider's media socket.

Caller → room: each datagram on the RTP port is parsed (:func:`~callbridge.sip.rtp.parse_rtp`)
and taken only with a negotiated payload type from the latched source (symmetric RTP,
:class:`~callbridge.sip.rtp.SourceLatch`); it is counted for RTCP
(:class:`~callbridge.sip.rtp.RtpReception`) and for the call's media figures
(:class:`~callbridge.media.arrivals.FrameArrivals`, by its extended sequence number), put back
in order by a short :class:`~callbridge.media.reorder.ReorderBuffer` (it waits only while a
packet is missing, at most :data:`REORDER_DEPTH` frames) and handed to the bridge, which decodes
it into the room's playout buffer. Telephone-events become :class:`~callbridge.protocols.DtmfIn`.

Room → caller: the bridge calls :meth:`RtpStream.send_audio` on the media clock's tick with one
encoded frame; :class:`~callbridge.sip.rtp.RtpSender` numbers it (or plays a queued digit
instead) and it is sent at once to where the caller's RTP comes from. No timer or queue of our
own: the clock paces the packets.

Marks and clears: RTP has no far-end buffer to ask about, so a mark is played the moment it is
sent and a clear is done at once (the bridge already dropped what it held).

Hold: a re-INVITE that puts the call on hold (``sendonly``, ``inactive``, ``c=0.0.0.0``)
silences the leg both ways: nothing is sent and what arrives (music on hold) is not passed to
the room; the stream's timestamps keep running, so the resumed audio plays at once.

RTCP (RFC 3550): a compound SR (or RR before we sent anything) with a report block on the
caller's stream every ~5 s (randomised, :func:`~callbridge.sip.rtp.rtcp_interval`), to where the
caller's RTCP comes from (else its ``a=rtcp``, else RTP port + 1), and a BYE at the end. The
caller's reports about our stream give the loss, jitter and round trip in
:meth:`RtpStream.media_figures`. No RTP for ``sip.rtp_timeout_seconds`` while not on hold ends
the call (the caller vanished without a BYE).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import structlog

from callbridge.media.arrivals import FrameArrivals
from callbridge.media.codecs import Codec, get_codec
from callbridge.media.reorder import ReorderBuffer
from callbridge.protocols import (
    AudioIn,
    ClearDone,
    DtmfIn,
    MarkEcho,
    StreamEvent,
    StreamStarted,
    StreamStopped,
)
from callbridge.sip.ports import PortsExhausted, RtpPortAllocator, RtpPorts
from callbridge.sip.rtp import (
    DIGITS,
    DigitReceiver,
    ReceiverReport,
    RemoteReception,
    RtpError,
    RtpReception,
    RtpSender,
    SenderReport,
    SourceLatch,
    compound_report,
    is_rtcp,
    ntp_timestamp,
    parse_rtcp,
    parse_rtp,
    rtcp_interval,
)
from callbridge.sip.sdp import Negotiated

log = structlog.get_logger("callbridge.sip.media")

REORDER_DEPTH: Final = 3
"""Frames held at most while a missing packet may still arrive (60 ms, only on a gap)."""
BIND_ATTEMPTS: Final = 20
"""Port pairs tried before a call is refused because none could be bound."""

Address = tuple[str, int]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Address], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a caller that already went away


async def bind_ports(
    allocator: RtpPortAllocator, host: str
) -> tuple[RtpPorts, asyncio.DatagramTransport, asyncio.DatagramTransport, _Datagrams, _Datagrams]:
    """A port pair from ``allocator`` with both ports bound on ``host``.

    Raises:
        PortsExhausted: no pair could be bound.
    """
    loop = asyncio.get_running_loop()
    for _ in range(BIND_ATTEMPTS):
        ports = allocator.allocate()
        rtp_protocol, rtcp_protocol = _Datagrams(_drop), _Datagrams(_drop)
        try:
            rtp, _ = await loop.create_datagram_endpoint(
                _factory(rtp_protocol), local_addr=(host, ports.rtp)
            )
        except OSError:
            allocator.release(ports)
            continue
        try:
            rtcp, _ = await loop.create_datagram_endpoint(
                _factory(rtcp_protocol), local_addr=(host, ports.rtcp)
            )
        except OSError:
            rtp.close()
            allocator.release(ports)
            continue
        return ports, rtp, rtcp, rtp_protocol, rtcp_protocol
    raise PortsExhausted(f"no RTP port pair could be bound in {BIND_ATTEMPTS} attempts")


def _drop(data: bytes, source: Address) -> None:
    pass


def _factory(protocol: _Datagrams) -> Callable[[], _Datagrams]:
    return lambda: protocol


class RtpStream:
    """One SIP call's RTP and RTCP as a media stream (module docstring).

    Create it with :meth:`open`; give it what was agreed with :meth:`negotiated` (at once, or
    from the ACK of a late offer), :meth:`answered` when the 200 OK went out, and
    :meth:`update` on a re-INVITE; :meth:`stop` when the dialog ends.
    """

    def __init__(
        self,
        call_id: str,
        ports: RtpPorts,
        rtp: asyncio.DatagramTransport,
        rtcp: asyncio.DatagramTransport,
        release: Callable[[], object],
        *,
        rtp_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.call_id = call_id
        self.ports = ports
        self.malformed = 0
        self.arrivals = FrameArrivals()
        self.foreign = 0
        """Packets with a payload type that was not agreed (comfort noise, another codec)."""
        self._rtp = rtp
        self._rtcp = rtcp
        self._release = release
        self._rtp_timeout = rtp_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._events: deque[StreamEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._stopped: StreamStopped | None = None
        self._agreed: Negotiated | None = None
        self._started_codec: Codec | None = None
        self._transcode: tuple[Codec, Codec] | None = None  # (agreed now, started with)
        self._sender: RtpSender | None = None
        self._rtp_latch = SourceLatch(None)
        self._rtcp_latch = SourceLatch(None)
        self._reception = RtpReception()
        self._remote = RemoteReception()
        self._digits = DigitReceiver()
        self._reorder: ReorderBuffer[bytes | None] = ReorderBuffer(REORDER_DEPTH)
        self._answered = False
        self._held = False
        self._sends = True
        self._last_rtp = clock()
        self._report_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.dtmf_in = 0

    @classmethod
    async def open(
        cls,
        call_id: str,
        allocator: RtpPortAllocator,
        host: str,
        *,
        rtp_timeout: float,
    ) -> RtpStream:
        """Bind a port pair for a call.

        Raises:
            PortsExhausted: no pair free (refuse the call with 503).
        """
        ports, rtp, rtcp, rtp_protocol, rtcp_protocol = await bind_ports(allocator, host)
        stream = cls(
            call_id, ports, rtp, rtcp, lambda: allocator.release(ports), rtp_timeout=rtp_timeout
        )
        rtp_protocol.received = stream._rtp_received
        rtcp_protocol.received = stream._rtcp_received
        return stream

    # ------------------------------------------------------------------ signalling side

    @property
    def held(self) -> bool:
        return self._held

    def negotiated(self, agreed: Negotiated) -> None:
        """The first agreement: the stream starts in its codec."""
        self._started_codec = get_codec(agreed.codec_spec)
        self._sender = RtpSender(agreed.payload_type, event_payload_type=agreed.event_payload_type)
        self._apply(agreed)
        self._push(
            StreamStarted(stream_id=self.call_id, provider_call_id=None, codec=agreed.codec_spec)
        )
        self._schedule_report(initial=True)

    def update(self, agreed: Negotiated) -> None:
        """A re-INVITE (or UPDATE) agreed again: hold, resume, a new address or codec."""
        if self._sender is None:
            self.negotiated(agreed)
            return
        previous = self._agreed
        self._apply(agreed)
        if previous is not None and (previous.payload_type, previous.event_payload_type) != (
            agreed.payload_type,
            agreed.event_payload_type,
        ):
            self._sender.payload_type = agreed.payload_type
            self._sender.event_payload_type = agreed.event_payload_type

    def answered(self) -> None:
        """Our 200 OK is out: audio may flow to the caller."""
        self._answered = True
        self._last_rtp = self._clock()

    def stop(self, reason: str = "stop") -> None:
        """The dialog ended (``stop``: the caller hung up) or failed (another reason)."""
        if self._stopped is None:
            self._stopped = StreamStopped(reason)
            self._wake()

    def _apply(self, agreed: Negotiated) -> None:
        previous = self._agreed
        self._agreed = agreed
        self._held = agreed.held
        self._sends = agreed.direction.sends
        started = self._started_codec
        assert started is not None
        self._transcode = (
            None if agreed.codec == started.name else (get_codec(agreed.codec_spec), started)
        )
        moved = previous is None or (previous.remote_address, previous.remote_port) != (
            agreed.remote_address,
            agreed.remote_port,
        )
        if moved:
            rtp = (
                (agreed.remote_address, agreed.remote_port)
                if agreed.remote_address and agreed.remote_port
                else None
            )
            rtcp = (
                (agreed.remote_rtcp_address, agreed.remote_rtcp_port)
                if agreed.remote_rtcp_address and agreed.remote_rtcp_port
                else None
            )
            self._rtp_latch.reset(rtp)
            self._rtcp_latch.reset(rtcp)
        if not agreed.held:
            self._last_rtp = self._clock()

    # ------------------------------------------------------------------ MediaStream

    async def receive(self) -> StreamEvent:
        while not self._events:
            if self._stopped is not None:
                return self._stopped
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    def send_audio(self, payload: bytes) -> None:
        sender = self._sender
        if sender is None or self._closed:
            return
        if not self._answered or self._held or not self._sends:
            sender.silence()
            return
        if self._transcode is not None:
            agreed, started = self._transcode
            payload = agreed.encode(started.decode(payload))
        packet = sender.tick(payload)
        destination = self._rtp_latch.destination
        if packet is not None and destination is not None:
            self._rtp.sendto(packet, destination)

    def send_dtmf(self, digits: str) -> None:
        """Queue keypad digits as RFC 4733 events (characters that are no digit are skipped;
        nothing is sent when no telephone-event was agreed)."""
        sender = self._sender
        keys = "".join(char for char in digits.upper() if char in DIGITS)
        if sender is None or sender.event_payload_type is None or not keys:
            return
        sender.send_digits(keys)

    def info_digit(self, digit: str) -> None:
        """A key press the caller sent as SIP INFO; like a telephone-event, not heard while
        the call is on hold."""
        if not self._held:
            self.dtmf_in += 1
            self._push(DtmfIn(digit))

    def send_mark(self, name: str) -> None:
        self._push(MarkEcho(name))

    def send_clear(self) -> None:
        self._push(ClearDone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._report_timer is not None:
            self._report_timer.cancel()
        self._send_report(bye="call ended")
        self._rtp.close()
        self._rtcp.close()
        self._release()
        self.stop("closed")

    def media_figures(self) -> dict[str, int]:
        """RTP and RTCP figures for the call's media record (with the bridge's own)."""
        sender = self._sender
        figures = {
            "rtp_packets_in": self._reception.received,
            "rtp_packets_out": sender.packets_sent if sender else 0,
            "rtp_lost": max(0, self._reception.cumulative_lost),
            "rtp_jitter_us": round(self._reception.jitter / 8000 * 1_000_000),
            "rtp_refused": self._rtp_latch.refused,
            "rtp_foreign": self.foreign,
            "reordered_late": self._reorder.dropped,
            "dtmf_out_sent": sender.digits_sent if sender else 0,
        }
        figures.update(self._remote.figures())
        return figures

    # ------------------------------------------------------------------ receiving

    def _push(self, event: StreamEvent) -> None:
        self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _rtp_received(self, data: bytes, source: Address) -> None:
        agreed = self._agreed
        if agreed is None or self._stopped is not None:
            return
        if is_rtcp(data):  # RTCP multiplexed on the RTP port (RFC 5761)
            self._rtcp_received(data, source)
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.malformed += 1
            return
        kind = packet.payload_type
        is_event = kind == agreed.event_payload_type
        if kind != agreed.payload_type and not is_event:
            self.foreign += 1
            return
        if not self._rtp_latch.accept(source):
            return
        now = self._clock()
        self._last_rtp = now
        index = self._reception.observe(
            packet.ssrc, packet.sequence, packet.timestamp, now, timing=not is_event
        )
        if index is None:
            return
        self.arrivals.observe(index, now)
        if is_event:
            digit = self._digits.receive(packet.timestamp, packet.payload, marker=packet.marker)
            if digit is not None and not self._held:
                self.dtmf_in += 1
                self._push(DtmfIn(digit))
            item: bytes | None = None
        else:
            item = None if self._held else packet.payload
        for payload in self._reorder.push(index, item):
            if payload is not None:
                if self._transcode is not None:
                    agreed_codec, started = self._transcode
                    payload = started.encode(agreed_codec.decode(payload))
                self._events.append(AudioIn(payload))
        self._wake()

    def _rtcp_received(self, data: bytes, source: Address) -> None:
        try:
            packets = parse_rtcp(data)
        except RtpError:
            self.malformed += 1
            return
        if not self._rtcp_latch.accept(source):
            return
        now, arrival_ntp = self._clock(), ntp_timestamp(self._wall_clock())
        ours = self._sender.ssrc if self._sender is not None else None
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._reception.sender_report(packet.sender_info.ntp_timestamp, now)
            if isinstance(packet, SenderReport | ReceiverReport):
                for block in packet.reports:
                    if block.ssrc == ours:
                        self._remote.add(block, arrival_ntp)

    # ------------------------------------------------------------------ reports

    def _schedule_report(self, *, initial: bool = False) -> None:
        loop = asyncio.get_running_loop()
        delay = rtcp_interval(random.random(), initial=initial)
        self._report_timer = loop.call_later(delay, self._report_due)

    def _report_due(self) -> None:
        if self._closed:
            return
        now = self._clock()
        if (
            self._answered
            and not self._held
            and self._agreed is not None
            and self._agreed.direction.receives
            and now - self._last_rtp > self._rtp_timeout
        ):
            log.info("no RTP from the caller: ending the call", seconds=self._rtp_timeout)
            self.stop(f"no RTP for {self._rtp_timeout:g} s")
            return
        self._send_report()
        self._schedule_report()

    def _send_report(self, bye: str | None = None) -> None:
        sender, destination = self._sender, self._rtcp_latch.destination
        if sender is None or destination is None or not self._answered:
            return
        block = self._reception.report_block(self._clock())
        blocks = (block,) if block is not None else ()
        report: SenderReport | ReceiverReport
        if sender.packets_sent:
            report = SenderReport(
                sender.ssrc, sender.sender_info(ntp_timestamp(self._wall_clock())), blocks
            )
        else:
            report = ReceiverReport(sender.ssrc, blocks)
        try:
            self._rtcp.sendto(
                compound_report(report, f"callbridge@{self.call_id}", bye=bye), destination
            )
        except OSError:
            pass
