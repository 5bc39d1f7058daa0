"""Server transactions (RFC 3261 §17.2): a retransmitted request gets the last response again
instead of being handled twice; a final response to INVITE over UDP is retransmitted (timer G,
doubling from T1 to T2) until the ACK arrives or timer H gives up; a finished transaction is
remembered (timer J / I) so late retransmissions are still absorbed.

Transactions are matched by the top Via's branch, its sent-by and the method (ACK and CANCEL
match their INVITE through the branch: RFC 3261 §17.2.3); a branch without the RFC 3261 magic
cookie falls back to Call-ID, CSeq, From tag and sent-by (RFC 2543 peers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from callbridge.sip.message import Parsed

T1: Final = 0.5
T2: Final = 4.0
TIMER_H: Final = 64 * T1
"""How long a final response to INVITE waits for its ACK."""
TIMER_L: Final = 64 * T1
"""How long an INVITE transaction answered 2xx absorbs retransmissions (RFC 6026)."""
TIMER_J: Final = 64 * T1
"""How long a finished transaction absorbs retransmissions over UDP."""
MAGIC_COOKIE: Final = "z9hG4bK"

Key = tuple[str, ...]


def transaction_key(parsed: Parsed, method: str | None = None) -> Key:
    """The key of the transaction ``parsed`` belongs to (``method`` overrides its own)."""
    method = method or parsed.request.method
    if method == "ACK":
        method = "INVITE"
    if parsed.branch.startswith(MAGIC_COOKIE):
        return (parsed.branch, parsed.sent_by, method)
    return (parsed.call_id, str(parsed.cseq), parsed.from_tag or "", parsed.sent_by, method)


@dataclass
class ServerTransaction:
    """One server transaction and the way back to its client."""

    key: Key
    method: str
    reliable: bool
    send: Callable[[bytes], None]
    last: bytes | None = None
    final_code: int = 0
    acked: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class TransactionTable:
    """The server transactions of one SIP endpoint."""

    def __init__(self) -> None:
        self._open: dict[Key, ServerTransaction] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: Key) -> ServerTransaction | None:
        return self._open.get(key)

    def open(
        self, parsed: Parsed, send: Callable[[bytes], None], reliable: bool
    ) -> ServerTransaction:
        key = transaction_key(parsed)
        transaction = ServerTransaction(key, parsed.request.method, reliable, send)
        self._open[key] = transaction
        return transaction

    def retransmitted(self, parsed: Parsed) -> bool:
        """A request of a known transaction: answer it with the last response (if any) and
        say it was absorbed."""
        transaction = self._open.get(transaction_key(parsed))
        if transaction is None:
            return False
        if transaction.last is not None:
            transaction.send(transaction.last)
        return True

    def respond(self, transaction: ServerTransaction, data: bytes, code: int) -> None:
        """Send a response; a final one starts the transaction's end (and, for INVITE over
        UDP, its retransmissions until the ACK)."""
        transaction.send(data)
        transaction.last = data
        if code < 200 or transaction.final_code:
            return
        transaction.final_code = code
        loop = asyncio.get_running_loop()
        if transaction.method == "INVITE" and 300 <= code and not transaction.reliable:
            started = loop.time()
            self._retransmit(transaction, T1, started)
        elif transaction.method == "INVITE":
            # After a 2xx the transaction is "accepted" (RFC 6026) for timer L: a retransmitted
            # INVITE gets the 2xx again instead of becoming a new call; the dialog retransmits
            # the 2xx until its ACK.
            self._forget_later(transaction, TIMER_L if 200 <= code < 300 else TIMER_H)
        else:
            self._forget_later(transaction, 0 if transaction.reliable else TIMER_J)

    def acknowledged(self, parsed: Parsed) -> bool:
        """An ACK for a non-2xx final response: stop retransmitting it. ``False`` when no
        INVITE transaction matches (the ACK of a 2xx, which belongs to a dialog)."""
        transaction = self._open.get(transaction_key(parsed, "INVITE"))
        if transaction is None or not 300 <= transaction.final_code:
            return False
        transaction.acked = True
        if transaction.timer is not None:
            transaction.timer.cancel()
        self._forget_later(transaction, 0 if transaction.reliable else 5.0)  # timer I (T4)
        return True

    def close(self) -> None:
        for transaction in self._open.values():
            if transaction.timer is not None:
                transaction.timer.cancel()
        self._open.clear()

    def _retransmit(self, transaction: ServerTransaction, interval: float, started: float) -> None:
        loop = asyncio.get_running_loop()

        def again() -> None:
            if transaction.acked or self._open.get(transaction.key) is not transaction:
                return
            if loop.time() - started >= TIMER_H:
                self._open.pop(transaction.key, None)  # timer H: the client is gone
                return
            if transaction.last is not None:
                transaction.send(transaction.last)
            self._retransmit(transaction, min(interval * 2, T2), started)

        transaction.timer = loop.call_later(interval, again)

    def _forget_later(self, transaction: ServerTransaction, delay: float) -> None:
        if delay <= 0:
            self._open.pop(transaction.key, None)
            return

        def forget() -> None:
            if self._open.get(transaction.key) is transaction:
                del self._open[transaction.key]

        transaction.timer = asyncio.get_running_loop().call_later(delay, forget)


TIMER_F: Final = 64 * T1
"""How long a request of ours waits for its final response."""


@dataclass
class ClientTransaction:
    """One request of ours (non-INVITE: BYE) waiting for its final response."""

    branch: str
    method: str
    answer: asyncio.Future[int]
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ClientTransactions:
    """The requests a SIP endpoint sent (RFC 3261 §17.1.2, non-INVITE): retransmitted over UDP
    (timer E: from T1, doubling up to T2) until a final response arrives or timer F (32 s)
    gives up; a response is matched by its top Via branch and CSeq method."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], ClientTransaction] = {}

    def __len__(self) -> int:
        return len(self._open)

    def send(
        self, branch: str, method: str, data: bytes, send: Callable[[bytes], None], reliable: bool
    ) -> asyncio.Future[int]:
        """Send a request; the future gets its final status code (408 when timer F fires)."""
        loop = asyncio.get_running_loop()
        transaction = ClientTransaction(branch, method, loop.create_future())
        self._open[(branch, method)] = transaction
        started = loop.time()

        def again(interval: float) -> None:
            if loop.time() - started >= TIMER_F:
                self._finish(transaction, 408)
                return
            if not reliable:
                send(data)
            transaction.timer = loop.call_later(min(interval, T2), again, interval * 2)

        send(data)
        transaction.timer = loop.call_later(T1 if not reliable else TIMER_F, again, 2 * T1)
        return transaction.answer

    def received(self, branch: str, method: str, code: int) -> bool:
        """A response arrived; ``False`` when no request of ours matches it."""
        transaction = self._open.get((branch, method))
        if transaction is None:
            return False
        if code >= 200:
            self._finish(transaction, code)
        return True

    def close(self) -> None:
        for transaction in list(self._open.values()):
            self._finish(transaction, 408)

    def _finish(self, transaction: ClientTransaction, code: int) -> None:
        if transaction.timer is not None:
            transaction.timer.cancel()
        self._open.pop((transaction.branch, transaction.method), None)
        if not transaction.answer.done():
            transaction.answer.set_result(code)
