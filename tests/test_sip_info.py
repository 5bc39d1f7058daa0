"""Key presses in SIP INFO bodies (``callbridge.sip.info``): the bodies trunks send, and the
answers to the ones we do not take."""

from __future__ import annotations

import pytest

from callbridge.sip.info import InfoRefused, info_digit

RELAY = "application/dtmf-relay"


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        (RELAY, b"Signal=5\r\nDuration=160\r\n", "5"),
        (RELAY, b"Signal= #\r\nDuration= 250\r\n", "#"),
        ("Application/DTMF-Relay; charset=us-ascii", b"signal=*\n", "*"),
        (RELAY, b"Duration=100\r\nSignal=a\r\n", "A"),
        (RELAY, b"Signal=10\r\nDuration=160\r\n", "*"),  # RFC 4733 event codes, as some write
        (RELAY, b"Signal=11\r\n", "#"),
        (RELAY, b"Signal=15\r\n", "D"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b"#\r\n", "#"),
    ],
)
def test_the_bodies_carriers_send_name_their_digit(
    content_type: str, body: bytes, digit: str
) -> None:
    assert info_digit(content_type, None, body) == digit


def test_an_info_without_a_body_is_taken_and_carries_nothing() -> None:
    assert info_digit(None, None, b"") is None
    assert info_digit(RELAY, None, b"\r\n") is None


@pytest.mark.parametrize(
    ("content_type", "package", "body", "code"),
    [
        (RELAY, "dtmf", b"Signal=5\r\n", 469),  # an Info Package: we announce none
        ("application/media_control+xml", None, b"<media_control/>", 415),
        (None, None, b"Signal=5\r\n", 415),
        (RELAY, None, b"Duration=160\r\n", 400),
        (RELAY, None, b"Signal=16\r\n", 400),
        (RELAY, None, b"Signal=55\r\n", 400),
        (RELAY, None, b"Signal=E\r\n", 400),
        ("application/dtmf", None, b"12", 400),
        ("application/dtmf", None, b"\xff", 400),
        (RELAY, None, b"Signal=5\r\n" + b"X" * 300, 400),
    ],
)
def test_other_infos_are_refused_with_a_reason(
    content_type: str | None, package: str | None, body: bytes, code: int
) -> None:
    with pytest.raises(InfoRefused) as refused:
        info_digit(content_type, package, body)
    assert refused.value.code == code
    assert str(refused.value)
