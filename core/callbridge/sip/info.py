"""Key presses sent as SIP INFO (the legacy usage of RFC 2976 that trunks and PBXes still send
in place of, or beside, RFC 4733 telephone-events).

Two bodies are understood, as carriers send them:

- ``application/dtmf-relay`` (Cisco's): ``Signal=5`` and ``Duration=160`` lines; the signal is a
  keypad character, or its RFC 4733 event code (``10`` is ``*``, ``11`` is ``#``, ``12``-``15``
  are ``A``-``D``), as some gateways write it.
- ``application/dtmf``: the keypad character alone.

An INFO of an Info Package (RFC 6086, an ``Info-Package`` header) is not one of these: we
announce no package (no ``Recv-Info``), so it is refused 469.
"""

from __future__ import annotations

from typing import Final

from callbridge.sip.rtp import DIGITS

DTMF_RELAY: Final = "application/dtmf-relay"
DTMF: Final = "application/dtmf"
ACCEPTED: Final = f"{DTMF_RELAY}, {DTMF}"
"""The ``Accept`` header of a 415 answer to an INFO."""
MAX_BODY_BYTES: Final = 256


class InfoRefused(ValueError):
    """An INFO we do not take; ``code``, ``phrase`` and ``headers`` are its answer, the message
    is safe to log and to send as the answer's ``Reason`` text."""

    def __init__(
        self, code: int, phrase: str, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.phrase = phrase
        self.headers = headers


def info_digit(content_type: str | None, info_package: str | None, body: bytes) -> str | None:
    """The key press an INFO carries; ``None`` for an INFO without a body (a keep-alive some
    devices send), to be answered 200 and otherwise ignored.

    Raises:
        InfoRefused: an Info Package (469), a body of another type (415), or a body of a known
            type that names no keypad digit (400).
    """
    if info_package is not None:
        raise InfoRefused(
            469, "Bad Info Package", "no Info Package is supported", (("Recv-Info", ""),)
        )
    if not body.strip():
        return None
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (DTMF_RELAY, DTMF):
        raise InfoRefused(
            415,
            "Unsupported Media Type",
            f"only {ACCEPTED} bodies are taken",
            (("Accept", ACCEPTED),),
        )
    if len(body) > MAX_BODY_BYTES:
        raise InfoRefused(400, "Bad Request", "the key press body is too long")
    text = body.decode("ascii", errors="replace")
    if kind == DTMF:
        digit = _keypad(text.strip())
    else:
        signal = _relay_signal(text)
        digit = _relay_digit(signal) if signal is not None else None
    if digit is None:
        raise InfoRefused(400, "Bad Request", "the body names no keypad digit")
    return digit


def _relay_signal(text: str) -> str | None:
    for line in text.splitlines():
        name, separator, value = line.partition("=")
        if separator and name.strip().lower() == "signal":
            return value.strip()
    return None


def _relay_digit(signal: str) -> str | None:
    if signal.isdigit() and len(signal) == 2:
        code = int(signal)
        return DIGITS[code] if code < len(DIGITS) else None
    return _keypad(signal)


def _keypad(text: str) -> str | None:
    upper = text.upper()
    return upper if len(upper) == 1 and upper in DIGITS else None
