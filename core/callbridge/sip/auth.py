"""Authenticating SIP requests with the SIP credentials of API keys.

What a SIP endpoint does with an out-of-dialog request (INVITE, OPTIONS, REGISTER…)::

    digest = await load_digest_auth(StoredKeys(db, clock), settings.sip, clock)   # once
    realm, algorithm = settings.sip.domain, settings.sip.digest_algorithm

    header = request.headers.get("Authorization")
    if header is None and request.method == "INVITE":
        result = await authenticate_by_source(db, source_ip=peer_ip, clock=clock)
        OK -> serve; FORBIDDEN -> reply 403; REFUSED -> challenge, as below
    if header is None:
        reply 401, WWW-Authenticate: digest.challenge(realm, algorithm)
    result = await authenticate(db, box, digest, authorization=header, method=request.method,
                                source_ip=peer_ip, realm=realm, algorithm=algorithm, clock=clock)
    match result.verdict:
        OK        -> serve as result.principal.apikey (result.principal.credential_id)
        STALE     -> reply 401, digest.challenge(realm, algorithm, stale=True)
        REFUSED   -> reply 401 with a fresh challenge (clients retry once, then give up) or 403
        FORBIDDEN -> reply 403 (the source address is not allowed; do not challenge again)

Requests inside a dialog that was authenticated (ACK, BYE, re-INVITE) need no new check: some
clients repeat ``Authorization`` there with ``nc`` counting up (accepted if checked), but
challenging them breaks calls. ``source_ip`` is the address the packet came from (the
transport's peer), never a header's.

Passwords are decrypted only to check a response and are redacted from logs from then on;
nothing here logs a password or a response.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from callbridge.crypto import CredentialBox, CredentialDecryptError
from callbridge.protocols import KeyStore
from callbridge.settings import SipSettings
from callbridge.sip.digest import (
    Algorithm,
    DigestAuth,
    DigestCredentials,
    DigestParseError,
    Verdict,
    parse_authorization,
)
from callbridge.sip.store import (
    SipCredential,
    get_by_username,
    open_password,
    source_credential,
    touch_last_used,
)
from callbridge.store.db import Database
from callbridge.store.repository import transaction

logger = logging.getLogger(__name__)

NONCE_KEY_NAME: Final = "sip-digest-nonce"
"""The shared key (``signing_keys`` table) that signs digest nonces on every replica."""
LAST_USED_RESOLUTION: Final = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per credential (not on every request)."""


@dataclass(frozen=True, slots=True)
class SipPrincipal:
    """Who a SIP request authenticated as: the API key every resource is scoped to, and the
    credential that proved it."""

    apikey: str
    credential_id: str
    username: str


@dataclass(frozen=True, slots=True)
class SipAuthResult:
    """The outcome of :func:`authenticate`: a :class:`~callbridge.sip.digest.Verdict`, a
    reason safe to log, and the principal when the verdict is ``OK``."""

    verdict: Verdict
    reason: str
    principal: SipPrincipal | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def stale(self) -> bool:
        """Challenge again with ``stale=true`` (the password was right)."""
        return self.verdict is Verdict.STALE


async def load_digest_auth(
    keys: KeyStore, settings: SipSettings, clock: Callable[[], float] = time.time
) -> DigestAuth:
    """The :class:`~callbridge.sip.digest.DigestAuth` of this server: its nonces are signed
    with a key kept in the store (created by the first replica that needs it), so every
    replica accepts every replica's nonces; they are good for ``sip.nonce_seconds``. Replays
    are tracked in this process's memory (see :class:`~callbridge.sip.digest.SeenNonces`)."""
    secret = await keys.get_or_create(NONCE_KEY_NAME, lambda: secrets.token_urlsafe(32))
    return DigestAuth(secret.encode("ascii"), nonce_seconds=settings.nonce_seconds, clock=clock)


async def authenticate(
    db: Database,
    box: CredentialBox,
    digest: DigestAuth,
    *,
    authorization: str | DigestCredentials,
    method: str,
    source_ip: str,
    realm: str,
    algorithm: Algorithm = "MD5",
    clock: Callable[[], float] = time.time,
) -> SipAuthResult:
    """Check a SIP request's digest credentials against the SIP credentials in the store.

    In order: the ``Authorization`` value parses (else ``REFUSED``); a credential has its
    ``username`` (else ``REFUSED``); ``source_ip`` is in its allow-list, if it has one (else
    ``FORBIDDEN``, before any password is looked at); the response is right for its current
    password, ``method`` and the digest ``uri`` as the client sent it, on a nonce this server
    issued, within ``nonce_seconds``, used once (``OK``, ``STALE`` or ``REFUSED``, see
    :meth:`~callbridge.sip.digest.DigestAuth.verify`). On ``OK`` the credential's
    ``last_used_at`` is updated (at most once a :data:`LAST_USED_RESOLUTION`).

    Args:
        db: the store.
        box: the server's credential box (``runtime.credential_box``).
        digest: from :func:`load_digest_auth`, made once and shared by every request.
        authorization: the ``Authorization``/``Proxy-Authorization`` value, or its parse.
        method: the request's SIP method.
        source_ip: the IP address the request came from (the transport's peer).
        realm: ``sip.domain``.
        algorithm: ``sip.digest_algorithm`` (what the challenges offered).
        clock: wall-clock seconds, for ``last_used_at``.
    """
    try:
        credentials = (
            authorization
            if isinstance(authorization, DigestCredentials)
            else parse_authorization(authorization)
        )
    except DigestParseError as exc:
        return _refused(Verdict.REFUSED, f"malformed Authorization: {exc}", None, source_ip)
    async with transaction(db, clock) as repo:
        credential = await get_by_username(repo.session, credentials.username)
    if credential is None:
        return _refused(Verdict.REFUSED, "unknown username", None, source_ip)
    if not credential.allows(source_ip):
        return _refused(
            Verdict.FORBIDDEN, "source address not allowed", credential.username, source_ip
        )
    try:
        password = open_password(box, credential)
    except CredentialDecryptError:
        logger.warning(
            "SIP credential %s cannot be decrypted (was security.credentials_key changed?)",
            credential.id,
        )
        return SipAuthResult(Verdict.REFUSED, "credential cannot be decrypted")
    outcome = digest.verify(
        credentials, method=method, password=password, realm=realm, algorithm=algorithm
    )
    if not outcome.ok:
        return _refused(outcome.verdict, outcome.reason, credential.username, source_ip)
    return await _authenticated(db, credential, outcome.reason, clock)


async def authenticate_by_source(
    db: Database, *, source_ip: str, clock: Callable[[], float] = time.time
) -> SipAuthResult:
    """An INVITE without digest credentials: ``OK`` as the API key of the credential that
    authenticates ``source_ip`` by source (:func:`~callbridge.sip.store.source_credential`);
    ``REFUSED`` when none does (challenge it); ``FORBIDDEN`` when several do equally (an
    operator's mistake to mend: the call could belong to either API key)."""
    async with transaction(db, clock) as repo:
        credential, ambiguous = await source_credential(repo.session, source_ip)
    if credential is not None:
        return await _authenticated(db, credential, "source address", clock)
    if ambiguous:
        reason = "several credentials authenticate this source address equally"
        logger.warning("SIP INVITE from %s refused: %s", source_ip, reason)
        return SipAuthResult(Verdict.FORBIDDEN, reason)
    return SipAuthResult(Verdict.REFUSED, "no credential authenticates this source address")


async def _authenticated(
    db: Database, credential: SipCredential, reason: str, clock: Callable[[], float]
) -> SipAuthResult:
    """``OK`` as ``credential``, its ``last_used_at`` updated (at most once a
    :data:`LAST_USED_RESOLUTION`)."""
    now = datetime.fromtimestamp(clock(), UTC)
    if credential.last_used_at is None or now - credential.last_used_at >= LAST_USED_RESOLUTION:
        try:
            async with transaction(db, clock, write=True) as repo:
                await touch_last_used(repo.session, credential.id, now)
        except SQLAlchemyError as exc:  # bookkeeping only: the request stays authenticated
            logger.warning("could not record the use of SIP credential %s: %s", credential.id, exc)
    return SipAuthResult(
        Verdict.OK,
        reason,
        SipPrincipal(
            apikey=credential.apikey, credential_id=credential.id, username=credential.username
        ),
    )


def _refused(verdict: Verdict, reason: str, username: str | None, source_ip: str) -> SipAuthResult:
    # Debug only: scanners try SIP servers all day long.
    logger.debug("SIP digest %s from %s (user %s): %s", verdict.value, source_ip, username, reason)
    return SipAuthResult(verdict, reason)
