"""The RTP port pairs of SIP calls, handed out from the configured range (``sip.rtp_ports``).

Each call takes an even port for RTP and the odd port above it for RTCP (RFC 3550 §11: RTP on
an even port, RTCP on the next; baresip sends RTCP to our RTP port + 1 unless ``rtcp_mux``). A
pair in use is never handed out again until released, and releasing is idempotent, so a call
that ends twice (BYE and a timeout) frees its pair once.

Pitfalls handled:

- **Quick reuse.** Pairs are handed out round-robin from where the last one was taken, not
  lowest first, so a pair released at the end of one call is the last to be reused and stray
  RTP still in flight for the old call does not land in a new one.
- **Ports held by others.** The research note saw other processes hold ports inside the range
  (the Linux ephemeral range is 32768-60999 and the default ``sip.rtp_ports`` 40000-40999 lies
  inside it). An optional ``can_bind(rtp_port)`` check, given by the caller (a real bind test
  of both ports, or a fake in tests), skips such pairs; :func:`ephemeral_overlap` lets start-up
  warn about the overlap.

No I/O and no locks: the allocator belongs to the event loop thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class PortsExhausted(RuntimeError):
    """Every RTP port pair of the range is in use (or failed the bind check): refuse the call
    (503 Service Unavailable, or 488 on a re-INVITE that would need new ports)."""


@dataclass(frozen=True, slots=True)
class RtpPorts:
    """One call's ports: ``rtp`` (even) and ``rtcp`` (``rtp + 1``)."""

    rtp: int

    @property
    def rtcp(self) -> int:
        return self.rtp + 1


class RtpPortAllocator:
    """Hands out RTP/RTCP port pairs from ``low``-``high`` (inclusive, as in ``sip.rtp_ports``).

    Args:
        low: the lowest port of the range.
        high: the highest port of the range; a pair needs both its ports inside.
        can_bind: called with an RTP port before it is handed out; ``False`` skips the pair
            (both ports must be free to bind). Default: every pair is taken as free.

    Raises:
        ValueError: the range holds no even/odd pair.
    """

    def __init__(
        self, low: int, high: int, *, can_bind: Callable[[int], bool] | None = None
    ) -> None:
        first = low + (low % 2)
        if not 0 < low <= high <= 65535 or first + 1 > high:
            raise ValueError(f"the RTP port range {low}-{high} holds no even/odd pair")
        self.low = low
        self.high = high
        self._first = first
        self._pairs = (high - first + 1) // 2
        self._can_bind = can_bind
        self._in_use: set[int] = set()
        self._next = 0  # index of the pair to try first
        self.skipped = 0
        """Pairs passed over because ``can_bind`` said they were taken."""

    @property
    def capacity(self) -> int:
        """Pairs in the range."""
        return self._pairs

    @property
    def in_use(self) -> frozenset[int]:
        """The RTP ports of the pairs handed out and not released."""
        return frozenset(self._in_use)

    @property
    def available(self) -> int:
        """Pairs not handed out (some may still fail the bind check)."""
        return self._pairs - len(self._in_use)

    def allocate(self) -> RtpPorts:
        """The next free pair, round-robin from the last one handed out.

        Raises:
            PortsExhausted: every pair is in use or failed the bind check.
        """
        for step in range(self._pairs):
            index = (self._next + step) % self._pairs
            port = self._first + 2 * index
            if port in self._in_use:
                continue
            if self._can_bind is not None and not self._can_bind(port):
                self.skipped += 1
                continue
            self._in_use.add(port)
            self._next = (index + 1) % self._pairs
            return RtpPorts(port)
        raise PortsExhausted(
            f"no free RTP port pair in {self.low}-{self.high} "
            f"({len(self._in_use)} of {self._pairs} in use)"
        )

    def release(self, ports: RtpPorts | int) -> bool:
        """Give a pair back (by its :class:`RtpPorts` or RTP port) when its call ends;
        ``False`` when it was not handed out (already released)."""
        port = ports.rtp if isinstance(ports, RtpPorts) else ports
        if port in self._in_use:
            self._in_use.remove(port)
            return True
        return False


def ephemeral_overlap(
    rtp_range: tuple[int, int], ephemeral: tuple[int, int] = (32768, 60999)
) -> tuple[int, int] | None:
    """The part of ``rtp_range`` inside the OS's ephemeral port range (Linux's default, or
    what ``/proc/sys/net/ipv4/ip_local_port_range`` says), where any outgoing connection may
    take an RTP port; ``None`` when they do not overlap."""
    low = max(rtp_range[0], ephemeral[0])
    high = min(rtp_range[1], ephemeral[1])
    return (low, high) if low <= high else None
