"""RTP port pairs for SIP calls: even RTP ports with RTCP above, never one pair twice, released
when calls end, reused last, and pairs other processes hold skipped."""

from __future__ import annotations

import pytest

from callbridge.settings import SipSettings
from callbridge.sip.ports import PortsExhausted, RtpPortAllocator, RtpPorts, ephemeral_overlap


def test_pairs_are_even_rtp_ports_with_rtcp_above() -> None:
    allocator = RtpPortAllocator(20000, 20009)
    pairs = [allocator.allocate() for _ in range(5)]
    assert [(p.rtp, p.rtcp) for p in pairs] == [
        (20000, 20001),
        (20002, 20003),
        (20004, 20005),
        (20006, 20007),
        (20008, 20009),
    ]
    assert allocator.capacity == 5 and allocator.available == 0
    with pytest.raises(PortsExhausted, match="5 of 5 in use"):
        allocator.allocate()


def test_odd_bounds_keep_both_ports_of_a_pair_inside_the_range() -> None:
    allocator = RtpPortAllocator(20001, 20008)
    ports = [allocator.allocate().rtp for _ in range(allocator.capacity)]
    assert ports == [20002, 20004, 20006]  # 20008 would put RTCP on 20009, outside
    assert allocator.in_use == frozenset(ports)


def test_a_pair_in_use_is_never_handed_out_twice() -> None:
    allocator = RtpPortAllocator(20000, 20099)
    seen: set[int] = set()
    held: list[RtpPorts] = []
    for round_ in range(200):
        pair = allocator.allocate()
        assert pair.rtp not in {p.rtp for p in held}
        held.append(pair)
        seen.add(pair.rtp)
        if round_ % 3 == 2:  # calls end now and then
            allocator.release(held.pop(0))
        if len(held) == allocator.capacity:
            allocator.release(held.pop(0))
    assert seen == set(range(20000, 20100, 2))


def test_a_released_pair_is_reused_last() -> None:
    allocator = RtpPortAllocator(20000, 20007)
    first = allocator.allocate()
    assert allocator.release(first)
    order = [allocator.allocate().rtp for _ in range(4)]
    assert order == [20002, 20004, 20006, 20000]


def test_release_is_idempotent_and_takes_a_port_number() -> None:
    allocator = RtpPortAllocator(20000, 20003)
    pair = allocator.allocate()
    assert allocator.release(pair.rtp)
    assert not allocator.release(pair)  # the call ended twice (BYE, then a timeout)
    assert not allocator.release(30000)
    assert allocator.available == 2


def test_pairs_that_fail_the_bind_check_are_skipped() -> None:
    taken_by_others = {20002, 20006}
    asked: list[int] = []

    def can_bind(port: int) -> bool:
        asked.append(port)
        return port not in taken_by_others

    allocator = RtpPortAllocator(20000, 20009, can_bind=can_bind)
    ports = [allocator.allocate().rtp for _ in range(3)]
    assert ports == [20000, 20004, 20008]
    assert allocator.skipped == 2
    with pytest.raises(PortsExhausted):
        allocator.allocate()
    taken_by_others.clear()  # the other process let go
    assert allocator.allocate().rtp == 20002
    assert all(port % 2 == 0 for port in asked)


@pytest.mark.parametrize(("low", "high"), [(20000, 20000), (20001, 20002), (0, 10), (60000, 70000)])
def test_a_range_without_a_pair_is_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="no even/odd pair"):
        RtpPortAllocator(low, high)


def test_the_configured_range() -> None:
    low, high = SipSettings().rtp_port_range
    allocator = RtpPortAllocator(low, high)
    assert allocator.capacity == (high - low + 1) // 2
    first = allocator.allocate()
    assert low <= first.rtp < first.rtcp <= high


def test_ephemeral_overlap() -> None:
    assert ephemeral_overlap((40000, 40999)) == (40000, 40999)  # the default setting
    assert ephemeral_overlap((20000, 20999)) is None
    assert ephemeral_overlap((30000, 33000)) == (32768, 33000)
    assert ephemeral_overlap((20000, 20999), (1024, 65535)) == (20000, 20999)
