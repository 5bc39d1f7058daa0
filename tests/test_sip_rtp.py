"""RTP headers, RFC 4733 digits and RTCP reports for the SIP leg, against hand-written bytes,
RFC 3550's own worked example, and hand-computed streams with loss, reordering, duplicates and
16-bit wraparound."""

from __future__ import annotations

import pytest

from callbridge.media.arrivals import FrameArrivals
from callbridge.media.reorder import ReorderBuffer
from callbridge.sip.rtp import (
    DigitReceiver,
    EventPacket,
    Goodbye,
    HeaderExtension,
    OtherRtcp,
    ReceiverReport,
    RemoteReception,
    ReportBlock,
    RtpError,
    RtpPacket,
    RtpReception,
    RtpSender,
    SdesChunk,
    SenderInfo,
    SenderReport,
    SourceDescription,
    SourceLatch,
    TelephoneEvent,
    build_rtcp,
    compound_report,
    digit_packets,
    event_code,
    is_rtcp,
    ntp_middle,
    ntp_timestamp,
    parse_rtcp,
    parse_rtp,
    round_trip,
    rtcp_interval,
)

# ---------------------------------------------------------------- RTP header

PLAIN = bytes.fromhex("80 00 12 34 00 00 03 e8 de ad be ef") + b"\xff" * 160

# V=2 P=1 X=1 CC=2 | M=1 PT=8 | seq 65535 | ts 2^32-1 | SSRC | 2 CSRCs | extension 0xBEDE,
# one word | 4 payload octets | 4 padding octets, the last one counting them.
FULL = bytes.fromhex(
    "b2 88 ff ff ff ff ff ff 01 02 03 04"
    "11 11 11 11 22 22 22 22"
    "be de 00 01 10 aa 00 00"
    "d5 d5 d5 d5"
    "00 00 00 04"
)


def test_a_plain_header() -> None:
    packet = parse_rtp(PLAIN)
    assert (packet.payload_type, packet.sequence, packet.timestamp) == (0, 0x1234, 1000)
    assert packet.ssrc == 0xDEADBEEF
    assert not packet.marker and packet.csrcs == () and packet.extension is None
    assert packet.payload == b"\xff" * 160
    assert packet.to_bytes() == PLAIN
    assert parse_rtp(memoryview(PLAIN)) == packet


def test_csrcs_extension_padding_and_marker_round_trip() -> None:
    packet = parse_rtp(FULL)
    assert packet == RtpPacket(
        payload_type=8,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=0x01020304,
        payload=b"\xd5" * 4,
        marker=True,
        csrcs=(0x11111111, 0x22222222),
        extension=HeaderExtension(0xBEDE, bytes.fromhex("10 aa 00 00")),
        padding=4,
    )
    assert packet.to_bytes() == FULL
    assert parse_rtp(memoryview(FULL)) == packet  # a view of a receive buffer works too


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PLAIN[:11], "RTP packet of 11 bytes"),
        (b"\x40" + PLAIN[1:], "RTP version 1"),
        (b"\x00" + PLAIN[1:], "RTP version 0"),
        (b"\x8f" + PLAIN[1:20], "CSRC list"),
        (b"\x90" + PLAIN[1:12] + b"\xbe\xde", "extension"),
        (b"\x90" + PLAIN[1:12] + b"\xbe\xde\x00\x09" + b"\x00" * 8, "extension"),
        (b"\xa0" + PLAIN[1:12] + b"\x01\x00", "padding"),
        (b"\xa0" + PLAIN[1:12] + b"\x01\x09", "padding"),
    ],
)
def test_broken_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        parse_rtp(data)


def test_fields_out_of_range_are_refused_on_build() -> None:
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0, b"").to_bytes()
    with pytest.raises(RtpError):
        RtpPacket(0, 65536, 0, 0, b"").to_bytes()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, b"", csrcs=tuple(range(16))).to_bytes()
    with pytest.raises(RtpError, match="32-bit words"):
        RtpPacket(0, 0, 0, 0, b"", extension=HeaderExtension(1, b"abc")).to_bytes()


def test_rtcp_is_told_from_rtp_on_one_port() -> None:
    assert not is_rtcp(PLAIN) and not is_rtcp(FULL)
    assert is_rtcp(bytes.fromhex("81 c9 00 07"))
    assert not is_rtcp(b"\x80")


def test_the_sender_numbers_frames_and_wraps() -> None:
    sender = RtpSender(8, ssrc=0xCAFEBABE, sequence=65535, timestamp=2**32 - 160)
    first = parse_rtp(sender.audio(b"\xd5" * 160))
    second = parse_rtp(sender.audio(b"\xd5" * 160))
    assert (first.sequence, first.timestamp, first.marker) == (65535, 2**32 - 160, True)
    assert (second.sequence, second.timestamp, second.marker) == (0, 0, False)
    assert first.ssrc == second.ssrc == 0xCAFEBABE and first.payload_type == 8
    sender.silence()  # a held frame: time moves on, nothing is sent
    third = parse_rtp(sender.audio(b"\xd5" * 160))
    assert (third.sequence, third.timestamp, third.marker) == (1, 320, True)
    assert (sender.packets_sent, sender.octets_sent) == (3, 480)
    info = sender.sender_info(ntp_timestamp(0.0))
    assert (info.rtp_timestamp, info.packet_count, info.octet_count) == (480, 3, 480)


def test_random_starting_points() -> None:
    a, b = RtpSender(0), RtpSender(0)
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


# ---------------------------------------------------------------- RFC 4733


def test_event_payload_bytes() -> None:
    # '#' (11), end bit, volume 10, 180 ms (1440): what baresip sends three times.
    event = TelephoneEvent(11, end=True, volume=10, duration=1440)
    assert event.to_bytes() == b"\x0b\x8a\x05\xa0"
    assert TelephoneEvent.parse(b"\x0b\x8a\x05\xa0") == event
    assert TelephoneEvent.parse(b"\x05\x3f\x00\xa0\xff") == TelephoneEvent(5, False, 63, 160)
    assert event.digit == "#" and TelephoneEvent(16).digit is None
    with pytest.raises(RtpError):
        TelephoneEvent.parse(b"\x0b\x8a\x05")
    with pytest.raises(RtpError):
        TelephoneEvent(1, duration=70000).to_bytes()


def test_event_codes() -> None:
    assert [event_code(d) for d in "0123456789*#ABCDabcd"] == [*range(16), 12, 13, 14, 15]
    for bad in ("E", "", "12", " "):
        with pytest.raises(ValueError):
            event_code(bad)


def test_one_digit_is_marker_growing_durations_and_three_ends() -> None:
    packets = list(digit_packets(1, timestamp=2**32 + 5))
    assert [p.event.duration for p in packets] == [160, 320, 480, 640, 800, 800, 800]
    assert [p.event.end for p in packets] == [False] * 4 + [True] * 3
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {5}
    assert {(p.event.event, p.event.volume) for p in packets} == {(1, 10)}
    short = list(digit_packets(2, timestamp=0, duration=100))
    assert [(p.event.end, p.event.duration, p.marker) for p in short] == [
        (True, 100, True),
        (True, 100, False),
        (True, 100, False),
    ]
    with pytest.raises(ValueError):
        next(digit_packets(1, timestamp=0, duration=0))


def test_digits_are_paced_into_the_stream_one_packet_per_tick() -> None:
    sender = RtpSender(0, event_payload_type=101, ssrc=7, sequence=65533, timestamp=2**32 - 480)
    audio = b"\x7f" * 160
    sent = [sender.tick(audio), sender.tick(audio)]
    sender.send_digits("1#")
    assert sender.digits_pending == 2
    sent += [sender.tick(audio) for _ in range(18)]
    assert sender.digits_pending == 0
    sent += [sender.tick(None), sender.tick(audio)]
    assert sent[-2] is None
    packets = [parse_rtp(data) for data in sent if data is not None]
    assert [p.sequence for p in packets] == [(65533 + i) % 65536 for i in range(len(packets))]
    kinds = "".join("e" if p.payload_type == 101 else "a" for p in packets)
    assert kinds == "aa" + "e" * 7 + "aaa" + "e" * 7 + "a" + "a"
    one = [TelephoneEvent.parse(p.payload) for p in packets[2:9]]
    hash_ = [TelephoneEvent.parse(p.payload) for p in packets[12:19]]
    assert {e.event for e in one} == {1} and {e.event for e in hash_} == {11}
    assert {p.timestamp for p in packets[2:9]} == {2**32 - 160}  # where the digit began
    # Media time moved on under the digit: the audio after it is 7 frames later.
    assert [p.timestamp for p in packets[9:12]] == [960, 1120, 1280]
    assert {p.timestamp for p in packets[12:19]} == {1440}
    assert packets[19].timestamp == 1440 + 7 * 160
    assert packets[20].timestamp == packets[19].timestamp + 320 and packets[20].marker
    assert [p.marker for p in packets[2:9]] == [True] + [False] * 6
    assert not any(p.marker for p in packets[9:12])
    assert sender.digits_sent == 2


def test_digits_need_telephone_event_and_keypad_characters() -> None:
    with pytest.raises(ValueError, match="telephone-event"):
        RtpSender(0).send_digits("1")
    sender = RtpSender(0, event_payload_type=101)
    with pytest.raises(ValueError, match="not a DTMF digit"):
        sender.send_digits("12x")
    assert sender.digits_pending == 0


def packets_of(digit: str, timestamp: int) -> list[EventPacket]:
    return list(digit_packets(event_code(digit), timestamp=timestamp))


def receive(receiver: DigitReceiver, packets: list[EventPacket]) -> list[str]:
    digits = []
    for packet in packets:
        digit = receiver.receive(packet.timestamp, packet.event.to_bytes(), marker=packet.marker)
        if digit is not None:
            digits.append(digit)
    return digits


def test_each_press_is_reported_once() -> None:
    first, second, third = packets_of("1", 1000), packets_of("1", 3000), packets_of("#", 5000)
    # The first press's last end packet comes late, after the second press began.
    stream = first[:-1] + second[:2] + first[-1:] + second[2:] + third + third[-2:]
    receiver = DigitReceiver()
    assert receive(receiver, stream) == ["1", "1", "#"]
    assert receiver.events == 3


def test_a_digit_whose_start_was_lost_is_reported_from_its_end_packets() -> None:
    receiver = DigitReceiver()
    assert receive(receiver, packets_of("5", 160)[-3:]) == ["5"]
    assert receive(receiver, packets_of("5", 160)) == []  # retransmissions of the same event


def test_other_events_and_garbage_are_counted_not_reported() -> None:
    receiver = DigitReceiver()
    flash = list(digit_packets(16, timestamp=0))
    assert receive(receiver, flash) == []
    assert receiver.receive(99, b"\x01") is None
    assert (receiver.events, receiver.ignored, receiver.malformed) == (1, 1, 1)


def test_a_long_events_next_segment_is_not_a_new_press() -> None:
    receiver = DigitReceiver()
    first = TelephoneEvent(0, False, 10, 0xFFFF).to_bytes()
    assert receiver.receive(0, TelephoneEvent(0, False, 10, 160).to_bytes(), marker=True) == "0"
    assert receiver.receive(0, first) is None
    segment = TelephoneEvent(0, True, 10, 800).to_bytes()
    assert receiver.receive(0xFFFF, segment) is None  # RFC 4733 §2.5.1.3: no marker
    assert receiver.receive(0xFFFF + 0x10000, segment, marker=True) == "0"  # a new press


# ---------------------------------------------------------------- RTCP bytes

# RR from SSRC 0xabcd with one block: SSRC 0x12345678, fraction 25, cumulative -2, highest
# 0x000103f5 (one wrap, then 1013), jitter 16, LSR 0x80001234, DLSR 0x8000 (0.5 s).
RR = bytes.fromhex(
    "81 c9 00 07 00 00 ab cd12 34 56 78 19 ff ff fe 00 01 03 f5 00 00 00 10 80 00 12 34 00 00 80 00"
)
SDES = bytes.fromhex("81 ca 00 03 00 00 ab cd 01 04 61 62 63 64 00 00")
BYE = bytes.fromhex("81 cb 00 02 00 00 ab cd 03 62 79 65")
RR_BLOCK = ReportBlock(0x12345678, 25, -2, 0x000103F5, 16, 0x80001234, 0x8000)


def test_a_hand_written_compound_packet() -> None:
    packets = parse_rtcp(RR + SDES + BYE)
    assert packets == [
        ReceiverReport(0xABCD, (RR_BLOCK,)),
        SourceDescription((SdesChunk(0xABCD, ((1, b"abcd"),)),)),
        Goodbye((0xABCD,), "bye"),
    ]
    assert isinstance(packets[1], SourceDescription) and packets[1].chunks[0].cname == "abcd"
    assert build_rtcp(packets) == RR + SDES + BYE
    assert compound_report(ReceiverReport(0xABCD, (RR_BLOCK,)), "abcd", bye="bye") == (
        RR + SDES + BYE
    )


def test_sender_report_round_trip() -> None:
    info = SenderInfo(ntp_timestamp(1_700_000_000.5), 123456, 500, 80000)
    blocks = (RR_BLOCK, ReportBlock(9, 0, 70000, 2**32 - 1, 2**31, 0, 0))
    report = SenderReport(0xABCD, info, blocks)
    data = compound_report(report, "callbridge@198.51.100.5")
    assert data[:4] == bytes.fromhex("82 c8 00 12")  # RC 2; (8 + 20 + 48) / 4 - 1 = 18 words
    parsed = parse_rtcp(data)
    assert parsed[0] == report
    assert isinstance(parsed[1], SourceDescription)
    assert parsed[1].chunks[0].cname == "callbridge@198.51.100.5"
    empty = ReceiverReport(0xABCD)
    assert build_rtcp([empty]) == bytes.fromhex("80 c9 00 01 00 00 ab cd")
    assert parse_rtcp(build_rtcp([empty])) == [empty]


def test_cumulative_loss_is_24_bit_signed_and_clamped() -> None:
    huge = ReportBlock(1, 0, 10_000_000, 0, 0)
    negative = ReportBlock(1, 0, -10_000_000, 0, 0)
    (report,) = parse_rtcp(build_rtcp([ReceiverReport(2, (huge, negative))]))
    assert isinstance(report, ReceiverReport)
    assert [b.cumulative_lost for b in report.reports] == [0x7FFFFF, -0x800000]


def test_other_packet_types_are_kept_and_padding_is_allowed_last() -> None:
    app = bytes.fromhex("80 cc 00 02 00 00 ab cd 6e 61 6d 65")  # APP "name"
    padded_bye = bytes.fromhex("a1 cb 00 02 00 00 ab cd 00 00 00 04")
    packets = parse_rtcp(RR + app + padded_bye)
    assert packets[1] == OtherRtcp(204, 0, bytes.fromhex("00 00 ab cd 6e 61 6d 65"))
    assert packets[2] == Goodbye((0xABCD,))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x81\xc9", "RTCP packet of 2 bytes"),
        (b"\x41" + RR[1:], "version 1"),
        (RR[:-4], "runs past"),
        (RR + b"\x81", "does not add up"),
        (b"\xa1" + RR[1:] + SDES, "padding before the last"),
        (bytes.fromhex("a1 cb 00 01 00 00 ab 00"), "padding count"),
        (bytes.fromhex("82 c9 00 07") + RR[4:], "report blocks run past"),
        (bytes.fromhex("80 c8 00 01 00 00 ab cd"), "report too short"),
        (bytes.fromhex("81 ca 00 02 00 00 ab cd 01 09 61 62"), "SDES item"),
        (bytes.fromhex("82 cb 00 01 00 00 ab cd"), "BYE sources"),
        (bytes.fromhex("81 cb 00 02 00 00 ab cd 09 62 79 65"), "BYE reason"),
    ],
)
def test_broken_rtcp_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        parse_rtcp(data)


def test_ntp_time() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    stamp = ntp_timestamp(1_700_000_000.25)
    assert stamp == (3_908_988_800 << 32) | 0x40000000
    assert ntp_middle(stamp) == ((3_908_988_800 & 0xFFFF) << 16) | 0x4000


def test_round_trip_from_rfc_3550s_worked_example() -> None:
    # §6.4.1: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000 -> 0x0006:2000 = 6.125 s.
    block = ReportBlock(1, 0, 0, 0, 0, last_sr=0xB7052000, delay_since_last_sr=0x00054000)
    assert round_trip(block, 0xB7108000 << 16) == 6.125
    assert round_trip(ReportBlock(1, 0, 0, 0, 0), 0xB7108000 << 16) is None  # no SR yet
    behind = ReportBlock(1, 0, 0, 0, 0, last_sr=0xB7200000, delay_since_last_sr=0)
    assert round_trip(behind, 0xB7108000 << 16) is None


def test_remote_reception_figures() -> None:
    remote = RemoteReception()
    assert remote.figures() == {}
    block = ReportBlock(1, 64, 12, 5, 160, last_sr=0xB7052000, delay_since_last_sr=0x00054000)
    remote.add(block, 0xB7108000 << 16)
    remote.add(ReportBlock(1, 0, 13, 9, 80), 0)
    assert remote.fraction_lost == 0 and remote.jitter == 0.01
    assert remote.figures() == {
        "rtcp_reports": 2,
        "remote_lost": 13,
        "remote_jitter_us": 20000,
        "rtt_ms_mean": 6125,
        "rtt_ms_max": 6125,
    }


def test_report_interval() -> None:
    assert rtcp_interval(0.0) == pytest.approx(2.5 / 1.21828)
    assert rtcp_interval(0.999, initial=True) == pytest.approx(2.5 * 1.499 / 1.21828)


# ---------------------------------------------------------------- reception statistics


def arrive(
    reception: RtpReception, order: list[int], *, start: float = 10.0, delays: dict[int, float]
) -> list[int | None]:
    """Packets ``order`` (sequence numbers) of SSRC 0x55, each 20 ms apart in media time, each
    arriving on its own schedule plus its delay."""
    return [
        reception.observe(
            0x55,
            seq % 65536,
            (seq - 1000) * 160,
            start + (seq - 1000) * 0.02 + delays.get(seq, 0.0),
        )
        for seq in order
    ]


def test_loss_reordering_and_a_duplicate_hand_computed() -> None:
    reception = RtpReception()
    # 1003 arrives 25 ms late, after 1004; 1006 and 1007 never come; 1009 arrives twice.
    order = [1000, 1001, 1002, 1004, 1003, 1005, 1008, 1009]
    indexes = arrive(reception, order, delays={1003: 0.025})
    indexes.append(reception.observe(0x55, 1009, 9 * 160, 10.181))
    assert indexes == [1000, 1001, 1002, 1004, 1003, 1005, 1008, 1009, 1009]
    assert (reception.extended_highest, reception.expected, reception.received) == (1009, 10, 9)
    # RFC 3550 A.3: the duplicate counts as received, so 2 missing packets show as 1 lost.
    assert reception.cumulative_lost == 1
    block = reception.report_block(now=10.2)
    assert block is not None
    assert (block.ssrc, block.highest_sequence, block.cumulative_lost) == (0x55, 1009, 1)
    assert block.fraction_lost == 25  # 1 of 10 in this interval: 256 / 10, truncated
    assert (block.last_sr, block.delay_since_last_sr) == (0, 0)

    arrive(reception, [s for s in range(1010, 1020) if s != 1012], delays={})
    second = reception.report_block(now=10.4)
    assert second is not None
    assert (second.fraction_lost, second.cumulative_lost, second.highest_sequence) == (25, 2, 1019)
    third = reception.report_block(now=10.6)
    assert third is not None and (third.fraction_lost, third.cumulative_lost) == (0, 2)

    # The call's figures come from FrameArrivals fed with the same indexes.
    arrivals = FrameArrivals()
    for index, now in zip(
        indexes, [10.0, 10.02, 10.04, 10.06, 10.085, 10.1, 10.16, 10.18, 10.181], strict=True
    ):
        arrivals.observe(index, now)
    assert (arrivals.lost, arrivals.reordered, arrivals.duplicates) == (2, 1, 1)


def test_jitter_of_one_late_packet_hand_computed() -> None:
    reception = RtpReception()
    # 1003 is 10 ms (80 timestamp units) late: D = +80 for it, -80 for the next one.
    arrive(reception, list(range(1000, 1006)), delays={1003: 0.010})
    first = 80 / 16  # 5.0
    second = first + (80 - first) / 16  # 9.6875
    third = second - second / 16  # 1005 is on time again: D = 0
    assert reception.jitter == pytest.approx(third)
    block = reception.report_block(now=11.0)
    assert block is not None and block.jitter == int(third) == 9


def test_jitter_against_the_rfc_definition_with_reordering() -> None:
    reception = RtpReception()
    order = [1000, 1001, 1003, 1002, 1004, 1005, 1006, 1008, 1007, 1009]
    delays = {1001: 0.004, 1002: 0.031, 1004: 0.012, 1006: 0.002, 1007: 0.027}
    arrive(reception, order, delays=delays)
    # RFC 3550 §6.4.1: D(i,j) = (Rj - Ri) - (Sj - Si), J += (|D| - J) / 16, in arrival order.
    jitter, previous = 0.0, None
    for seq in order:
        r = (10.0 + (seq - 1000) * 0.02 + delays.get(seq, 0.0)) * 8000
        s = (seq - 1000) * 160
        if previous is not None:
            jitter += (abs((r - previous[0]) - (s - previous[1])) - jitter) / 16
        previous = (r, s)
    assert reception.jitter == pytest.approx(jitter)


def test_events_can_be_left_out_of_the_jitter() -> None:
    reception = RtpReception()
    reception.observe(1, 10, 0, 0.0)
    reception.observe(1, 11, 0, 0.02, timing=False)  # an event packet: the event's start
    reception.observe(1, 12, 320, 0.04)
    assert reception.jitter == 0 and reception.received == 3


def test_sequence_and_timestamp_wraparound() -> None:
    reception = RtpReception()
    base_ts = 2**32 - 320
    sent = {65533: 0, 65534: 1, 65535: 2, 0: 3, 1: 4, 2: 5}
    order = [65533, 65534, 0, 65535, 1, 2]  # 65535 arrives after 0
    indexes = [
        reception.observe(9, seq, (base_ts + 160 * sent[seq]) % 2**32, 5.0 + 0.02 * sent[seq])
        for seq in order
    ]
    assert indexes == [65533, 65534, 65536, 65535, 65537, 65538]
    assert reception.extended_highest == 65538
    assert (reception.expected, reception.received, reception.cumulative_lost) == (6, 6, 0)
    assert reception.jitter == pytest.approx(0.0, abs=1e-6)
    block = reception.report_block(now=6.0)
    assert block is not None and block.highest_sequence == 0x00010002

    # The indexes keep plain integer order, so the reorder buffer restores it across the wrap.
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=2)
    released = [
        seq for index, seq in zip(indexes, order, strict=True) for seq in buffer.push(index, seq)
    ]
    assert released + buffer.flush() == [65533, 65534, 65535, 0, 1, 2]


def test_many_wraps() -> None:
    reception = RtpReception()
    for n in range(3 * 65536 + 10):
        reception.observe(3, (40000 + n) % 65536, n * 160 % 2**32, n * 0.02)
    assert reception.extended_highest == 40000 + 3 * 65536 + 9
    assert reception.cumulative_lost == 0


def test_a_jump_is_believed_only_when_the_next_packet_follows_it() -> None:
    reception = RtpReception()
    assert arrive(reception, [1000, 1001, 1002], delays={}) == [1000, 1001, 1002]
    assert reception.observe(0x55, 9000, 480, 10.06) is None  # a stray: not counted
    assert reception.observe(0x55, 1003, 480, 10.06) == 1003
    assert reception.observe(0x55, 30000, 640, 10.08) is None
    assert reception.observe(0x55, 30001, 800, 10.10) == 1004  # confirmed: counting restarts
    assert reception.restarts == 1
    assert (reception.expected, reception.received) == (1, 1)
    assert reception.observe(0x55, 30002, 960, 10.12) == 1005


def test_a_new_ssrc_restarts_the_statistics() -> None:
    reception = RtpReception()
    arrive(reception, [1000, 1001, 1003], delays={})
    reception.sender_report(ntp_timestamp(1000.0), 10.0)
    assert reception.observe(0x66, 7, 0, 11.0) == 1004
    assert reception.ssrc == 0x66 and reception.restarts == 1
    block = reception.report_block(now=11.5)
    assert block is not None
    assert (block.ssrc, block.cumulative_lost, block.highest_sequence, block.last_sr) == (
        0x66,
        0,
        7,
        0,
    )


def test_lsr_and_dlsr() -> None:
    reception = RtpReception()
    assert reception.report_block(now=1.0) is None
    reception.observe(1, 5, 0, 49.0)
    stamp = ntp_timestamp(1_700_000_000.25)
    reception.sender_report(stamp, arrival=50.0)
    block = reception.report_block(now=50.5)
    assert block is not None
    assert block.last_sr == ((3_908_988_800 & 0xFFFF) << 16) | 0x4000
    assert block.delay_since_last_sr == 32768  # 0.5 s in 1/65536 s


def test_our_report_and_their_report_give_the_round_trip() -> None:
    # We send an SR at t = 1000 s; they hold it 0.25 s; their RR arrives at t = 1000.3 s.
    sender = RtpSender(0, ssrc=0xAB)
    sr = parse_rtcp(
        compound_report(SenderReport(sender.ssrc, sender.sender_info(ntp_timestamp(1000.0))), "x")
    )[0]
    assert isinstance(sr, SenderReport)
    far = RtpReception()
    far.observe(0xAB, 1, 0, 0.0)
    far.sender_report(sr.sender_info.ntp_timestamp, arrival=20.0)
    block = far.report_block(now=20.25)
    assert block is not None
    rtt = round_trip(block, ntp_timestamp(1000.3))
    assert rtt == pytest.approx(0.05, abs=2 / 65536)


# ---------------------------------------------------------------- symmetric RTP


def test_the_latch_follows_the_first_source_and_refuses_others() -> None:
    latch = SourceLatch(("192.168.1.20", 12000))  # what linphone wrote in SDP
    assert latch.destination == ("192.168.1.20", 12000) and not latch.latched
    assert latch.accept(("127.0.0.1", 12000))  # where its RTP really comes from
    assert latch.destination == ("127.0.0.1", 12000)
    assert not latch.accept(("127.0.0.1", 9999))  # an injector
    assert latch.accept(("127.0.0.1", 12000))
    assert latch.refused == 1 and latch.destination == ("127.0.0.1", 12000)
    latch.reset(None)  # a re-INVITE moved the media
    assert latch.destination is None
    assert latch.accept(("127.0.0.1", 12002)) and latch.destination == ("127.0.0.1", 12002)
