"""SDP offer/answer for the SIP leg: real clients' offers (baresip's, as the research note records
it; linphone's default and trimmed offers), hold and resume, the late offer, and the offers we
refuse with 488 and why."""

from __future__ import annotations

import pytest

from callbridge.media.codecs import get_codec
from callbridge.sip.sdp import (
    Direction,
    SdpError,
    SdpProblem,
    SdpSession,
    negotiate,
    parse_events,
    parse_sdp,
)


def sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


# baresip 1.0.0 with g711 only (research note §4): 0 8 101, telephone-event 0-15, ptime 20,
# plus the attributes we must ignore (rtcp-rsize, ssrc cname, label, minptime).
BARESIP = sdp(
    "v=0",
    "o=- 1213176395 1867403347 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 20012 RTP/AVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=label:1",
    "a=rtcp-rsize",
    "a=ssrc:1380449290 cname:3d8d1a6b-1b2e-4f60-8c0a-2f7f8a5c6e11",
    "a=minptime:20",
    "a=ptime:20",
)

# linphone 5.1's default offer: dynamic types first, G.729, three telephone-event rates, an
# Ethernet address in c= (its RTP comes from 127.0.0.1 anyway), and a video line.
LINPHONE = sdp(
    "v=0",
    "o=alice 2463 1405 IN IP4 192.168.1.20",
    "s=Talk",
    "c=IN IP4 192.168.1.20",
    "t=0 0",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 12000 RTP/AVP 96 97 98 0 8 18 99 100 101",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=fmtp:97 vbr=on",
    "a=rtpmap:98 speex/8000",
    "a=fmtp:98 vbr=on",
    "a=fmtp:18 annexb=yes",
    "a=rtpmap:99 telephone-event/48000",
    "a=rtpmap:100 telephone-event/16000",
    "a=rtpmap:101 telephone-event/8000",
    "a=rtcp-fb:* trr-int 1000",
    "m=video 9078 RTP/AVP 96 97",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 H264/90000",
    "a=fmtp:97 profile-level-id=42801F",
)

# linphone with only G.711 enabled: G.729 stays, telephone-event on 96, IPv6 in c=.
LINPHONE_TRIMMED = sdp(
    "v=0",
    "o=alice 3012 2178 IN IP6 2001:db8::20",
    "s=Talk",
    "c=IN IP6 2001:db8::20",
    "t=0 0",
    "m=audio 12002 RTP/AVP 0 8 18 96",
    "a=rtpmap:96 telephone-event/8000",
)


def audio_offer(*media: str, session: tuple[str, ...] = (), c: str = "IN IP4 203.0.113.7") -> str:
    return sdp(
        "v=0",
        "o=carrier 1 1 IN IP4 203.0.113.7",
        "s=call",
        f"c={c}",
        "t=0 0",
        *session,
        *media,
    )


def media_lines(text: str) -> list[str]:
    return [line for line in text.split("\r\n") if line.startswith("m=")]


def origin_version(text: str) -> int:
    return parse_sdp(text).origin.version


def test_baresips_offer_gets_pcmu_with_its_telephone_event() -> None:
    session = SdpSession("198.51.100.5", 40000, session_id=7)
    answer = session.answer(BARESIP)
    agreed = answer.negotiated
    assert (agreed.codec, agreed.payload_type, agreed.event_payload_type) == ("PCMU", 0, 101)
    assert agreed.remote_events == frozenset(range(16))
    assert (agreed.remote_address, agreed.remote_port) == ("127.0.0.1", 20012)
    assert (agreed.remote_rtcp_address, agreed.remote_rtcp_port) == ("127.0.0.1", 20013)
    assert agreed.direction is Direction.SENDRECV and not agreed.held
    assert agreed.remote_ptime == 20
    assert get_codec(agreed.codec_spec).name == "PCMU"
    assert answer.sdp == sdp(
        "v=0",
        "o=- 7 7 IN IP4 198.51.100.5",
        "s=callbridge",
        "c=IN IP4 198.51.100.5",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_our_answer_parses_back_as_what_was_agreed() -> None:
    answer = SdpSession("198.51.100.5", 40000).answer(BARESIP)
    parsed = parse_sdp(answer.sdp)
    (media,) = parsed.media
    assert [pt.describe() for pt in media.payload_types] == ["PCMU/8000", "telephone-event/8000"]
    assert media.payload_types[1].fmtp == "0-16"
    assert parsed.direction_of(media) is Direction.SENDRECV
    assert media.ptime == 20


def test_baresip_forced_to_pcma_gets_pcma() -> None:
    offer = BARESIP.replace("RTP/AVP 0 8 101", "RTP/AVP 8 101").replace(
        "a=rtpmap:0 PCMU/8000\r\n", ""
    )
    agreed = negotiate(parse_sdp(offer))
    assert (agreed.codec, agreed.payload_type, agreed.event_payload_type) == ("PCMA", 8, 101)


def test_linphones_default_offer_gets_pcmu_the_8000_hz_event_and_a_rejected_video_line() -> None:
    answer = SdpSession("198.51.100.5", 40002).answer(LINPHONE)
    agreed = answer.negotiated
    assert (agreed.codec, agreed.payload_type, agreed.event_payload_type) == ("PCMU", 0, 101)
    assert agreed.remote_events == frozenset(range(16))  # no fmtp: RFC 4733's 0-15
    assert agreed.remote_address == "192.168.1.20"  # only until RTP arrives (symmetric RTP)
    assert media_lines(answer.sdp) == ["m=audio 40002 RTP/AVP 0 101", "m=video 0 RTP/AVP 96 97"]


def test_trimmed_linphone_offer_uses_its_dynamic_event_type_and_ipv6() -> None:
    answer = SdpSession("2001:db8::1", 40004, session_id=9).answer(LINPHONE_TRIMMED)
    agreed = answer.negotiated
    assert (agreed.codec, agreed.event_payload_type) == ("PCMU", 96)
    assert agreed.remote_address == "2001:db8::20"
    assert "m=audio 40004 RTP/AVP 0 96\r\n" in answer.sdp
    assert "a=fmtp:96 0-16\r\n" in answer.sdp
    assert "o=- 9 9 IN IP6 2001:db8::1\r\n" in answer.sdp
    assert "c=IN IP6 2001:db8::1\r\n" in answer.sdp


@pytest.mark.parametrize(
    ("formats", "rtpmaps", "expected"),
    [
        ("8 0", (), ("PCMA", 8)),  # the offerer's order, static types without rtpmap
        ("18 0", (), ("PCMU", 0)),
        ("96", ("a=rtpmap:96 pcmu/8000",), ("PCMU", 96)),  # dynamic, case-insensitive
        ("97 8", ("a=rtpmap:97 PCMU/16000",), ("PCMA", 8)),  # wrong rate is not PCMU
        ("97 0", ("a=rtpmap:97 PCMA/8000/2",), ("PCMU", 0)),  # stereo is not our PCMA
    ],
)
def test_the_first_g711_in_the_offerers_order_wins(
    formats: str, rtpmaps: tuple[str, ...], expected: tuple[str, int]
) -> None:
    agreed = negotiate(parse_sdp(audio_offer(f"m=audio 5004 RTP/AVP {formats}", *rtpmaps)))
    assert (agreed.codec, agreed.payload_type) == expected
    assert agreed.event_payload_type is None and agreed.remote_events == frozenset()


def test_pcma_only_offer() -> None:
    offer = audio_offer("m=audio 5004 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000")
    answer = SdpSession("198.51.100.5", 40000).answer(offer)
    assert (answer.negotiated.codec, answer.negotiated.payload_type) == ("PCMA", 8)
    assert "m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n" in answer.sdp


def test_a_session_that_only_takes_pcma_refuses_pcmu() -> None:
    session = SdpSession("198.51.100.5", 40000, codecs=("PCMA",))
    with pytest.raises(SdpError) as caught:
        session.answer(audio_offer("m=audio 5004 RTP/AVP 0"))
    assert caught.value.problem is SdpProblem.NO_COMMON_CODEC
    assert caught.value.reason == "no PCMA offered (offered: PCMU/8000)"


@pytest.mark.parametrize(
    ("offered", "answered", "held"),
    [
        ("sendrecv", Direction.SENDRECV, False),
        ("sendonly", Direction.RECVONLY, True),  # hold
        ("inactive", Direction.INACTIVE, True),  # hold, both ways quiet
        ("recvonly", Direction.SENDONLY, False),
    ],
)
def test_direction_is_answered_per_rfc_3264(offered: str, answered: Direction, held: bool) -> None:
    answer = SdpSession("198.51.100.5", 40000).answer(
        audio_offer("m=audio 5004 RTP/AVP 0", f"a={offered}")
    )
    assert answer.negotiated.direction is answered
    assert answer.negotiated.held is held
    assert answer.sdp.endswith(f"a={answered.value}\r\n")


def test_session_level_direction_applies_unless_the_media_line_overrides_it() -> None:
    held = negotiate(parse_sdp(audio_offer("m=audio 5004 RTP/AVP 0", session=("a=sendonly",))))
    assert held.direction is Direction.RECVONLY and held.held
    overridden = negotiate(
        parse_sdp(audio_offer("m=audio 5004 RTP/AVP 0", "a=sendrecv", session=("a=inactive",)))
    )
    assert overridden.direction is Direction.SENDRECV and not overridden.held


def test_rfc_2543_hold_with_address_zero() -> None:
    agreed = negotiate(parse_sdp(audio_offer("m=audio 5004 RTP/AVP 0", c="IN IP4 0.0.0.0")))
    assert agreed.direction is Direction.RECVONLY  # it receives nothing, so we send nothing
    assert agreed.held
    assert agreed.remote_address is None
    inactive = negotiate(
        parse_sdp(audio_offer("m=audio 5004 RTP/AVP 0", "a=recvonly", c="IN IP4 0.0.0.0"))
    )
    assert inactive.direction is Direction.INACTIVE


def test_we_can_hold_the_caller_ourselves() -> None:
    agreed = negotiate(parse_sdp(BARESIP), local=Direction.SENDONLY)
    assert agreed.direction is Direction.SENDONLY
    assert Direction.SENDONLY.answer(Direction.SENDONLY) is Direction.INACTIVE


def test_hold_and_resume_re_invites_raise_the_version_only_when_the_answer_changes() -> None:
    session = SdpSession("198.51.100.5", 40000, session_id=1000)
    first = session.answer(BARESIP)
    hold = session.answer(BARESIP.replace("a=sendrecv", "a=sendonly"))
    refresh = session.answer(BARESIP.replace("a=sendrecv", "a=sendonly"))
    resume = session.answer(BARESIP)
    versions = [origin_version(a.sdp) for a in (first, hold, refresh, resume)]
    assert versions == [1000, 1001, 1001, 1002]  # RFC 3264 §8: same SDP, same version
    assert {parse_sdp(a.sdp).origin.session_id for a in (first, hold, resume)} == {1000}
    assert hold.negotiated.held and not resume.negotiated.held
    assert hold.sdp.endswith("a=recvonly\r\n")


def test_a_re_offer_in_another_order_keeps_the_codec_in_use() -> None:
    session = SdpSession("198.51.100.5", 40000)
    assert session.answer(BARESIP).negotiated.codec == "PCMU"
    reordered = BARESIP.replace("RTP/AVP 0 8 101", "RTP/AVP 8 0 101")
    assert session.answer(reordered).negotiated.codec == "PCMU"
    assert SdpSession("198.51.100.5", 40000).answer(reordered).negotiated.codec == "PCMA"


def test_a_refused_re_offer_leaves_the_agreement_standing() -> None:
    session = SdpSession("198.51.100.5", 40000)
    agreed = session.answer(BARESIP).negotiated
    with pytest.raises(SdpError):
        session.answer(audio_offer("m=audio 5004 RTP/AVP 18"))
    assert session.negotiated == agreed


def test_srtp_line_is_rejected_and_the_plain_rtp_line_taken() -> None:
    offer = audio_offer(
        "m=audio 5004 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=audio 5006 RTP/AVP 0 8",
    )
    answer = SdpSession("198.51.100.5", 40000).answer(offer)
    assert answer.negotiated.media_index == 1
    assert answer.negotiated.remote_port == 5006
    assert media_lines(answer.sdp) == ["m=audio 0 RTP/SAVP 0", "m=audio 40000 RTP/AVP 0"]


def test_rtcp_attribute_and_media_level_connection() -> None:
    offer = sdp(
        "v=0",
        "o=- 1 1 IN IP4 203.0.113.7",
        "s=-",
        "t=0 0",
        "m=audio 5004 RTP/AVP 0",
        "c=IN IP4 203.0.113.8",
        "a=rtcp:5100 IN IP4 203.0.113.9",
    )
    agreed = negotiate(parse_sdp(offer))
    assert (agreed.remote_address, agreed.remote_port) == ("203.0.113.8", 5004)
    assert (agreed.remote_rtcp_address, agreed.remote_rtcp_port) == ("203.0.113.9", 5100)


def test_bare_line_feeds_blank_lines_and_a_host_name_are_accepted() -> None:
    offer = (
        "v=0\no=- 1 1 IN IP4 pbx.example.com\ns=-\nc=IN IP4 pbx.example.com\nt=0 0\n"
        "m=audio 5004 RTP/AVP 0\n\n"
    )
    agreed = negotiate(parse_sdp(offer.encode()))
    assert agreed.codec == "PCMU"
    assert agreed.remote_address is None  # we wait for its RTP instead of resolving the name


def test_late_offer_round_trip() -> None:
    session = SdpSession("198.51.100.5", 40010, session_id=55)
    offer = session.offer()
    parsed = parse_sdp(offer)
    (media,) = parsed.media
    assert (media.port, media.protocol) == (40010, "RTP/AVP")
    assert [pt.describe() for pt in media.payload_types] == [
        "PCMU/8000",
        "PCMA/8000",
        "telephone-event/8000",
    ]
    assert media.payload_types[2].fmtp == "0-16"
    assert parsed.direction_of(media) is Direction.SENDRECV
    # The caller answers in the ACK with PCMA and its own event type numbering.
    answer = sdp(
        "v=0",
        "o=- 77 78 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 30000 RTP/AVP 8 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=sendrecv",
    )
    agreed = session.accept_answer(answer)
    assert (agreed.codec, agreed.payload_type, agreed.event_payload_type) == ("PCMA", 8, 101)
    assert (agreed.remote_address, agreed.remote_port) == ("127.0.0.1", 30000)
    assert agreed.direction is Direction.SENDRECV
    assert session.negotiated == agreed
    # A later re-INVITE with an offer is answered by the same session, version moving on.
    again = session.answer(BARESIP)
    assert parse_sdp(again.sdp).origin.session_id == 55
    assert origin_version(again.sdp) == 56
    with pytest.raises(SdpError, match="without a pending offer"):
        session.accept_answer(answer)


def test_late_offer_answer_directions() -> None:
    session = SdpSession("198.51.100.5", 40010)
    session.offer()
    base = ("v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0")
    agreed = session.accept_answer(sdp(*base, "m=audio 30000 RTP/AVP 0", "a=recvonly"))
    assert agreed.direction is Direction.SENDONLY
    session.offer(local=Direction.SENDONLY)
    agreed = session.accept_answer(sdp(*base, "m=audio 30000 RTP/AVP 0", "a=recvonly"))
    assert agreed.direction is Direction.SENDONLY and not agreed.held


@pytest.mark.parametrize(
    ("media", "problem", "reason"),
    [
        (("m=audio 0 RTP/AVP 0",), SdpProblem.AUDIO_DISABLED, "rejected the audio stream"),
        (("m=audio 30000 RTP/AVP 18",), SdpProblem.NO_COMMON_CODEC, "offered: G729/8000"),
        (("m=video 30000 RTP/AVP 96",), SdpProblem.NO_AUDIO, "has video"),
        (
            ("m=audio 30000 RTP/AVP 0", "m=audio 30002 RTP/AVP 0"),
            SdpProblem.MALFORMED,
            "2 m= lines",
        ),
    ],
)
def test_late_offer_answers_we_cannot_take(
    media: tuple[str, ...], problem: SdpProblem, reason: str
) -> None:
    session = SdpSession("198.51.100.5", 40010)
    session.offer()
    answer = sdp("v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0", *media)
    with pytest.raises(SdpError) as caught:
        session.accept_answer(answer)
    assert caught.value.problem is problem
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("offer", "problem", "reason"),
    [
        (
            audio_offer("m=video 5004 RTP/AVP 96", "m=application 5006 UDP/BFCP *"),
            SdpProblem.NO_AUDIO,
            "no audio stream offered (offered: video, application)",
        ),
        (
            audio_offer("m=audio 0 RTP/AVP 0 8"),
            SdpProblem.AUDIO_DISABLED,
            "the audio stream has port 0",
        ),
        (
            audio_offer(
                "m=audio 5004 RTP/AVP 96 18 9",
                "a=rtpmap:96 opus/48000/2",
            ),
            SdpProblem.NO_COMMON_CODEC,
            "no PCMU or PCMA offered (offered: opus/48000, G729/8000, G722/8000)",
        ),
        (
            audio_offer("m=audio 5004 RTP/SAVP 0"),
            SdpProblem.UNSUPPORTED_TRANSPORT,
            "transport RTP/SAVP (only RTP/AVP: no SRTP)",
        ),
        (
            audio_offer("m=audio 5004 UDP/TLS/RTP/SAVPF 0"),
            SdpProblem.UNSUPPORTED_TRANSPORT,
            "transport UDP/TLS/RTP/SAVPF (only RTP/AVP: no SRTP)",
        ),
        (
            audio_offer("m=audio 5004 RTP/AVP 0", c="ATM NSAP 47.0005.80.ffe100"),
            SdpProblem.UNSUPPORTED_NETWORK,
            "network type ATM (only IN)",
        ),
        (
            audio_offer("m=audio 5004 RTP/AVP 0", c="IN IPX 12.34"),
            SdpProblem.UNSUPPORTED_ADDRESS,
            "address type IPX (only IP4 and IP6)",
        ),
        (
            audio_offer("m=audio 5004 RTP/AVP 0", c="IN IP4 224.2.1.1/127"),
            SdpProblem.UNSUPPORTED_ADDRESS,
            "multicast address",
        ),
        (
            audio_offer("m=audio 5004 RTP/AVP 0", c="IN IP4 2001:db8::1"),
            SdpProblem.MALFORMED,
            "IP4 with address 2001:db8::1",
        ),
    ],
)
def test_unsupported_offers_get_a_reason_for_488(
    offer: str, problem: SdpProblem, reason: str
) -> None:
    with pytest.raises(SdpError) as caught:
        SdpSession("198.51.100.5", 40000).answer(offer)
    assert caught.value.problem is problem
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty SDP"),
        (b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", "must start with v=0"),
        (b"v=1\r\n", "must start with v=0"),
        (b"v=0\r\ns=-\r\nm=audio 5004 RTP/AVP 0\r\n", "no o= line"),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", "o= needs 6 fields"),
        (b"v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", "o= session id is not a number"),
        ("v=0\r\no=- \u00b2 1 IN IP4 1.2.3.4\r\n".encode(), "o= session id is not a number"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nthis is not sdp\r\n", "not an SDP line"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio abc RTP/AVP 0\r\n", "m= port"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", "out of range"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP\r\n", "at least 4 fields"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 0 200\r\n", "payload type"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP \xc2\xb2\r\n", "unprintable"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4\r\n", "c= needs 3 fields"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\xff\xfe\r\n", "not UTF-8"),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 5 RTP/AVP 0\r\na=rtcp:x\r\n", "a=rtcp"),
        (b"v=0\r\n" + b"a=x\r\n" * 5000, "larger than"),
    ],
)
def test_malformed_sdp(body: bytes, reason: str) -> None:
    with pytest.raises(SdpError) as caught:
        parse_sdp(body)
    assert caught.value.problem is SdpProblem.MALFORMED
    assert reason in caught.value.reason


def test_no_connection_line_for_the_audio_is_malformed() -> None:
    offer = sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0", "m=audio 5004 RTP/AVP 0")
    with pytest.raises(SdpError, match="no c= line") as caught:
        negotiate(parse_sdp(offer))
    assert caught.value.problem.warn_code == 399


def test_the_warning_header_is_quoted_and_safe() -> None:
    error = SdpError(SdpProblem.NO_COMMON_CODEC, 'no "PCMU"\r\nX-Injected: 1')
    assert error.reason == 'no "PCMU"??X-Injected: 1'
    assert error.warning("callbridge") == '305 callbridge "no \\"PCMU\\"??X-Injected: 1"'
    assert "\r" not in error.warning("callbridge") and "\n" not in error.warning("callbridge")
    assert [p.warn_code for p in SdpProblem] == [399, 304, 304, 305, 302, 300, 301]


def test_an_unreadable_rtpmap_leaves_its_type_unchosen() -> None:
    offer = audio_offer("m=audio 5004 RTP/AVP 96 8", "a=rtpmap:96 PCMU")
    assert negotiate(parse_sdp(offer)).codec == "PCMA"


def test_telephone_event_at_another_rate_is_not_taken() -> None:
    offer = audio_offer("m=audio 5004 RTP/AVP 0 99", "a=rtpmap:99 telephone-event/48000")
    assert negotiate(parse_sdp(offer)).event_payload_type is None


@pytest.mark.parametrize(
    ("fmtp", "events"),
    [
        (None, set(range(16))),
        ("0-15", set(range(16))),
        ("0-11,16", {*range(12), 16}),
        ("0, 1, 2", {0, 1, 2}),
        ("0-16", set(range(17))),
        ("garbage", set(range(16))),
        ("9-3", set(range(16))),
    ],
)
def test_telephone_event_fmtp(fmtp: str | None, events: set[int]) -> None:
    assert parse_events(fmtp) == events


def test_direction_helpers() -> None:
    assert [d.answer() for d in Direction] == [
        Direction.SENDRECV,
        Direction.RECVONLY,
        Direction.SENDONLY,
        Direction.INACTIVE,
    ]
    assert Direction.of(sends=True, receives=False) is Direction.SENDONLY
    assert (Direction.RECVONLY.sends, Direction.RECVONLY.receives) == (False, True)


def test_session_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="rtp_port"):
        SdpSession("198.51.100.5", 0)
    with pytest.raises(ValueError, match="codecs"):
        SdpSession("198.51.100.5", 40000, codecs=("G729",))
