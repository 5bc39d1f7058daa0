"""SIP credentials of API keys: the ``sip_credentials`` table and its queries.

A credential is a digest ``username`` (unique on the server, so a SIP request names its API
key) and a password kept encrypted: a :class:`~callbridge.crypto.CredentialBox` token bound to
the credential id (:func:`seal_password`, :func:`open_password`). ``allowed_networks`` is a JSON
list of CIDR networks requests must come from; ``NULL`` allows any source address. A credential
that authenticates by ``source`` (``authenticate_by``) also takes an INVITE without digest
credentials from one of its networks (:func:`source_credential`).

Every function works inside the caller's session and transaction (see
:func:`callbridge.store.repository.transaction`); only :func:`get_by_username` is not scoped to
an API key (the SIP endpoint does not know the key before it knows the username). The table is
created by migration ``0006``; ``authenticate_by`` by ``0007``.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import string
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import ForeignKey, String, Text, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from callbridge.crypto import CredentialBox
from callbridge.redaction import remember_secrets
from callbridge.store.models import Base, UTCDateTime

CREDENTIAL_ID_PREFIX: Final = "sc_"
USERNAME_PREFIX: Final = "sip"
PASSWORD_LENGTH: Final = 32
"""Generated passwords: 32 letters and digits (about 190 bits), which every SIP client takes."""
MAX_NETWORKS: Final = 100
"""The most networks one credential's allow-list may hold."""
DIGEST: Final = "digest"
SOURCE: Final = "source"
MIN_SOURCE_PREFIX: Final = {4: 16, 6: 48}
"""The widest network (by IP version) a credential that authenticates by source may name: a
whole provider's /8 would let anyone on it call in as this API key."""

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SipCredential(Base):
    """A digest username and encrypted password that authenticate SIP requests as an API key.

    ``password`` is an opaque :class:`~callbridge.crypto.CredentialBox` token bound to ``id``;
    ``allowed_networks`` a JSON list of CIDR strings (``NULL``: any source address);
    ``authenticate_by`` is ``digest`` or ``source`` (an INVITE from its networks needs no
    digest); ``rotated_at`` is ``NULL`` until the password is first rotated.
    """

    __tablename__ = "sip_credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    apikey: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_keys.apikey", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password: Mapped[str] = mapped_column(Text())
    allowed_networks: Mapped[str | None] = mapped_column(Text())
    authenticate_by: Mapped[str] = mapped_column(String(16), server_default=DIGEST)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:  # never show the password token
        return f"SipCredential(id={self.id!r}, apikey={self.apikey!r}, username={self.username!r})"

    @property
    def networks(self) -> list[Network] | None:
        """The allow-list as networks; ``None`` allows any source address."""
        if self.allowed_networks is None:
            return None
        return [ipaddress.ip_network(text) for text in json.loads(self.allowed_networks)]

    def allows(self, address: str) -> bool:
        """Whether a request from ``address`` (an IPv4 or IPv6 literal; IPv4-mapped IPv6 is
        taken as IPv4) may use this credential."""
        return self.allowed_networks is None or self.longest_match(address) is not None

    def longest_match(self, address: str) -> int | None:
        """The prefix length of this credential's narrowest network holding ``address``;
        ``None`` when none does (or it has no allow-list)."""
        networks = self.networks
        source = _address(address)
        if networks is None or source is None:
            return None
        lengths = [
            net.prefixlen for net in networks if source.version == net.version and source in net
        ]
        return max(lengths, default=None)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        source = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
        return source.ipv4_mapped
    return source


# --------------------------------------------------------------------------- values


def new_credential_id() -> str:
    """A new credential id: ``sc_`` + 16 lowercase alphanumerics."""
    return CREDENTIAL_ID_PREFIX + "".join(secrets.choice(_LOWER_ALNUM) for _ in range(16))


def new_username() -> str:
    """A new digest username: ``sip`` + 17 lowercase alphanumerics (valid in any SIP URI)."""
    return USERNAME_PREFIX + "".join(secrets.choice(_LOWER_ALNUM) for _ in range(17))


def new_password() -> str:
    """A new password (:data:`PASSWORD_LENGTH` letters and digits), redacted from logs from
    now on."""
    password = "".join(secrets.choice(_ALNUM) for _ in range(PASSWORD_LENGTH))
    remember_secrets([password])
    return password


def seal_password(box: CredentialBox, password: str, credential_id: str) -> str:
    """``password`` encrypted for storage, bound to the credential."""
    return box.encrypt({"password": password}, credential_id)


def open_password(box: CredentialBox, credential: SipCredential) -> str:
    """The credential's password in clear (redacted from logs from now on).

    Raises:
        CredentialDecryptError: (a ``ValueError``) wrong key, or a token of another row.
    """
    password = box.decrypt(credential.password, credential.id)["password"]
    remember_secrets([password])
    return password


def parse_network(text: str) -> Network:
    """A network in CIDR notation (``203.0.113.0/24``, ``2001:db8::/32``), or one address
    (``/32``, ``/128``). Host bits are cleared: ``203.0.113.7/24`` is ``203.0.113.0/24``.

    Raises:
        ValueError: not an IPv4 or IPv6 network (the message quotes nothing).
    """
    candidate = text.strip()
    if not candidate or "%" in candidate:
        raise ValueError("not a network in CIDR notation")
    try:
        return ipaddress.ip_network(candidate, strict=False)
    except ValueError:
        raise ValueError("not a network in CIDR notation") from None


def encode_networks(networks: Sequence[Network] | None) -> str | None:
    """The ``allowed_networks`` column value: a JSON list of CIDR strings, duplicates
    dropped, order kept; ``None`` for any source address."""
    if networks is None:
        return None
    return json.dumps(list(dict.fromkeys(str(network) for network in networks)))


def shown_networks(credential: SipCredential) -> list[str] | None:
    """The allow-list as stored (CIDR strings), ``None`` for any source address."""
    if credential.allowed_networks is None:
        return None
    values: list[str] = json.loads(credential.allowed_networks)
    return values


# --------------------------------------------------------------------------- queries


async def create_credential(
    session: AsyncSession,
    *,
    credential_id: str,
    apikey: str,
    username: str,
    password_token: str,
    now: datetime,
    name: str | None = None,
    allowed_networks: Sequence[Network] | None = None,
    authenticate_by: str = DIGEST,
) -> SipCredential:
    """Insert a credential (``password_token`` from :func:`seal_password` for
    ``credential_id``; one that authenticates by ``source`` needs ``allowed_networks``)."""
    if authenticate_by == SOURCE and not allowed_networks:
        raise ValueError("a credential that authenticates by source needs networks")
    credential = SipCredential(
        id=credential_id,
        apikey=apikey,
        name=name,
        username=username,
        password=password_token,
        allowed_networks=encode_networks(allowed_networks),
        authenticate_by=authenticate_by,
        created_at=now,
    )
    session.add(credential)
    await session.flush()
    return credential


async def list_credentials(
    session: AsyncSession, apikey: str, *, limit: int, offset: int = 0
) -> tuple[int, list[SipCredential]]:
    """How many credentials ``apikey`` holds, and one page of them, newest first."""
    total = await session.scalar(
        select(func.count()).select_from(SipCredential).where(SipCredential.apikey == apikey)
    )
    rows = await session.scalars(
        select(SipCredential)
        .where(SipCredential.apikey == apikey)
        .order_by(SipCredential.created_at.desc(), SipCredential.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return int(total or 0), list(rows)


async def get_credential(
    session: AsyncSession, apikey: str, credential_id: str
) -> SipCredential | None:
    """``apikey``'s credential ``credential_id``; ``None`` when it has none of that id."""
    if "\x00" in credential_id:  # PostgreSQL refuses NUL even in a WHERE clause
        return None
    return await session.scalar(
        select(SipCredential).where(
            SipCredential.id == credential_id, SipCredential.apikey == apikey
        )
    )


async def get_by_username(session: AsyncSession, username: str) -> SipCredential | None:
    """The credential with this digest username, whichever API key holds it."""
    if "\x00" in username or len(username) > 64:
        return None
    return await session.scalar(select(SipCredential).where(SipCredential.username == username))


async def source_credential(
    session: AsyncSession, address: str
) -> tuple[SipCredential | None, bool]:
    """The credential that authenticates requests from ``address`` by source, whichever API
    key holds it: the one whose narrowest network holding ``address`` is narrowest of all.
    ``(None, False)`` when none holds it; ``(None, True)`` when two tie (which API key would
    the call be?)."""
    rows = await session.scalars(
        select(SipCredential).where(SipCredential.authenticate_by == SOURCE)
    )
    matches = [(length, row) for row in rows if (length := row.longest_match(address)) is not None]
    if not matches:
        return None, False
    matches.sort(key=lambda match: match[0], reverse=True)
    if len(matches) > 1 and matches[0][0] == matches[1][0]:
        return None, True
    return matches[0][1], False


def too_wide_for_source(network: Network) -> bool:
    """Whether ``network`` is wider than a credential authenticating by source may name."""
    return network.prefixlen < MIN_SOURCE_PREFIX[network.version]


def set_password(credential: SipCredential, password_token: str, now: datetime) -> None:
    """Replace the password (``password_token`` from :func:`seal_password` for this
    credential's id). The old password stops authenticating as soon as this commits."""
    credential.password = password_token
    credential.rotated_at = now


async def delete_credential(session: AsyncSession, apikey: str, credential_id: str) -> bool:
    """Delete ``apikey``'s credential ``credential_id``; whether there was one."""
    if "\x00" in credential_id:
        return False
    result = await session.execute(
        delete(SipCredential).where(
            SipCredential.id == credential_id, SipCredential.apikey == apikey
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def touch_last_used(session: AsyncSession, credential_id: str, now: datetime) -> None:
    """Record that the credential just authenticated a request."""
    await session.execute(
        update(SipCredential).where(SipCredential.id == credential_id).values(last_used_at=now),
        execution_options={"synchronize_session": False},
    )
