"""Phone numbers normalised to E.164 before matching, with ``phonenumbers``.

A caller or callee is either a phone number (matched by its E.164 form, however the provider
or the operator wrote it) or an *identity* (``client:alice``, ``sip:bob@example.com``,
``anonymous``…), which matches only exactly and is never coerced into a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import phonenumbers

_IDENTITY_SCHEMES: Final = ("client:", "sip:", "sips:")
_SEPARATORS = re.compile(r"[\s\-.()/]")
_DIALABLE = re.compile(r"\+?[0-9]{2,20}")
_PREFIX = re.compile(r"\+?[0-9]{1,15}")
MAX_ADDRESS_CHARS: Final = 255


@dataclass(frozen=True)
class Address:
    """A caller or callee as routing sees it.

    Attributes:
        raw: what was given, unchanged.
        e164: its E.164 form when it is a phone number, else ``None`` (an identity).
    """

    raw: str
    e164: str | None

    @property
    def key(self) -> str:
        """What matching compares: the E.164 form of a number, an identity as given."""
        return self.e164 or self.raw

    def __str__(self) -> str:
        return self.key


def to_e164(value: str, default_country: str | None = None) -> str | None:
    """``value`` in E.164 when it is a phone number, else ``None``.

    International forms (``+44…``, ``0044…``) need no country; a national form (``(415)
    555-0100``, ``020 7946 0958``) is read with ``default_country`` (ISO 3166 alpha-2); digits
    alone with no country are tried as international (``14155550100``). Identities and
    anything with a scheme, an ``@`` or letters are not numbers.
    """
    text = value.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    if not text or text.lower().startswith(_IDENTITY_SCHEMES) or "@" in text:
        return None
    compact = _SEPARATORS.sub("", text)
    if not _DIALABLE.fullmatch(compact):
        return None
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    candidates: list[tuple[str, str | None]] = []
    if compact.startswith("+"):
        candidates.append((compact, None))
    else:
        if default_country:
            candidates.append((compact, default_country.upper()))
        candidates.append(("+" + compact, None))
    for number, country in candidates:
        try:
            parsed = phonenumbers.parse(number, country)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None


def address(value: str | None, default_country: str | None = None) -> Address | None:
    """The :class:`Address` of a webhook's caller or callee (``None`` when absent)."""
    if value is None or not value.strip():
        return None
    return Address(value, to_e164(value, default_country))


def rule_address(value: str, default_country: str | None = None) -> str:
    """A number or identity written in a rule, as matching compares it: a phone number in
    E.164, anything else (an identity, a short code) exactly as given.

    Raises:
        ValueError: it is empty or too long.
    """
    text = value.strip()
    if not text or len(text) > MAX_ADDRESS_CHARS:
        raise ValueError(f"{value!r} is empty or longer than {MAX_ADDRESS_CHARS} characters")
    return to_e164(text, default_country) or text


def rule_prefix(value: str) -> str:
    """A number prefix written in a rule, as ``+`` and digits (``1415`` → ``+1415``).

    Raises:
        ValueError: it is not a country code and digits (national prefixes are ambiguous).
    """
    compact = _SEPARATORS.sub("", value.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _PREFIX.fullmatch(compact):
        raise ValueError(
            f"{value!r} is not a number prefix; write the country code and digits (+1415)"
        )
    return compact if compact.startswith("+") else "+" + compact


def country_of(number: Address | None) -> str | None:
    """The ISO country (``US``, ``IN``) of a phone number; ``None`` for identities."""
    if number is None or number.e164 is None:
        return None
    try:
        parsed = phonenumbers.parse(number.e164, None)
    except phonenumbers.NumberParseException:  # pragma: no cover - e164 came from the parser
        return None
    return phonenumbers.region_code_for_number(parsed)


def calling_code_of(number: Address | None) -> int | None:
    """The country calling code (``1``, ``91``) of a phone number; ``None`` for identities."""
    if number is None or number.e164 is None:
        return None
    return phonenumbers.parse(number.e164, None).country_code
