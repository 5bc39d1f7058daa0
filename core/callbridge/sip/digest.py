"""SIP digest authentication, server side (RFC 7616, RFC 2617, RFC 3261 §22): challenges,
``Authorization`` parsing, response checks, and nonces bound to time and used once.

Pure and I/O-free: no sockets, no store; time comes from an injected clock.

- **Nonces** are stateless: ``base64url(issued_ms ‖ 12 random bytes ‖ HMAC-SHA256(secret,
  realm ‖ issued_ms ‖ random)[:16])``. Any replica holding the same secret checks them, and a
  nonce made up by a client (or issued for another realm) is refused. A nonce is good for
  ``nonce_seconds``; an expired one with an otherwise correct response gets
  :attr:`Verdict.STALE`, so the caller challenges again with ``stale=true`` and the client
  retries with the same password instead of asking its user.
- **Single use**: a ``(nonce, nc)`` pair (or, without ``qop``, the nonce itself) is accepted
  once; a second use with a correct response is :attr:`Verdict.STALE` too (a fresh nonce helps
  an honest client and is useless to a replayer). In-dialog requests that count ``nc`` up on
  the same nonce (baresip's ACK and BYE) are accepted. The pairs seen are kept by a
  :class:`ReplayGuard`; :class:`SeenNonces` keeps them in this process's memory, which means
  **per replica**: with several replicas behind one address, replaying a captured request to
  another replica within the nonce lifetime is the residual risk (keep ``nonce_seconds`` short,
  or give every replica a shared guard).
- **The digest** ``uri`` is used exactly as the client sent it: never re-derived from the
  Request-URI, so ports and ``;transport=tcp`` a proxy appended are fine. Re-deriving it is the
  known cause of endless 401 loops between peers.
- **Algorithms**: MD5 (the default: baresip 1.0 and SIPp fail when offered SHA-256), SHA-256
  and both ``-sess`` variants; ``qop=auth`` with ``nc``/``cnonce``, or no ``qop`` (RFC 2069).
  The client must answer with the algorithm it was challenged with.

Typical use by a SIP endpoint::

    digest = DigestAuth(secret, nonce_seconds=30, clock=clock)
    header = digest.challenge("sip.example.com", "MD5")          # WWW-Authenticate value
    credentials = parse_authorization(request_authorization)    # DigestParseError: 400/401
    outcome = digest.verify(credentials, method="INVITE", password=password,
                            realm="sip.example.com", algorithm="MD5")
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

Algorithm = Literal["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"]
"""A digest algorithm, spelled as RFC 7616 spells it."""
ALGORITHMS: Final[tuple[Algorithm, ...]] = get_args(Algorithm)
DEFAULT_MAX_SEEN: Final = 100_000
"""How many ``(nonce, nc)`` pairs :class:`SeenNonces` keeps by default."""
MAX_HEADER_LENGTH: Final = 8192
"""Longer ``Authorization`` values are refused unparsed."""

_HASH_NAMES: Final = {"MD5": "md5", "SHA-256": "sha256"}
_BY_LOWER: Final = {name.lower(): name for name in ALGORITHMS}
_NONCE_CONTEXT: Final = b"callbridge/sip-digest-nonce/v1\x00"
_OPAQUE_CONTEXT: Final = b"callbridge/sip-digest-opaque/v1\x00"
_RANDOM_BYTES: Final = 12
_MAC_BYTES: Final = 16
_NONCE_BYTES: Final = 8 + _RANDOM_BYTES + _MAC_BYTES
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NC_RE: Final = re.compile(r"[0-9A-Fa-f]{8}")
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]+")
_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")


class DigestParseError(ValueError):
    """An ``Authorization`` value that is not a usable Digest credential. The message names
    what is wrong and never quotes the response."""


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """What a client sent in ``Authorization`` (or ``Proxy-Authorization``), as sent.

    ``algorithm`` is canonical (``MD5`` when the client named none) or, for one this module
    does not know, as sent; ``qop`` is lower-case; ``nc`` is lower-case hex.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    def __repr__(self) -> str:
        return (
            f"DigestCredentials(username={self.username!r}, realm={self.realm!r}, "
            f"uri={self.uri!r}, algorithm={self.algorithm!r}, qop={self.qop!r}, nc={self.nc!r})"
        )


class Verdict(enum.Enum):
    """What a SIP endpoint does with a request after :meth:`DigestAuth.verify`."""

    OK = "ok"
    """Authenticated: serve the request."""
    STALE = "stale"
    """The password is right but the nonce expired or was used already: challenge again with
    ``stale=true`` (the client retries without asking its user)."""
    REFUSED = "refused"
    """Wrong password, forged nonce, wrong realm or algorithm: challenge again (``stale``
    false) or answer 403."""
    FORBIDDEN = "forbidden"
    """Not allowed whatever the password (e.g. from an address outside the credential's
    allow-list; see :mod:`callbridge.sip.auth`): answer 403, do not challenge again."""


@dataclass(frozen=True, slots=True)
class DigestOutcome:
    """A :class:`Verdict` and why, in words safe to log (never a secret)."""

    verdict: Verdict
    reason: str

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def stale(self) -> bool:
        return self.verdict is Verdict.STALE


class ReplayGuard(Protocol):
    """Remembers which ``(nonce, nc)`` pairs were accepted, at least as long as the nonce is
    good."""

    def first_use(self, nonce: str, nc: int | None, issued_at: float) -> bool:
        """Record this use and say whether it is the first. ``nc`` is ``None`` for requests
        without ``qop``; ``issued_at`` is when the nonce was issued (clock seconds)."""
        ...


class SeenNonces:
    """An in-memory :class:`ReplayGuard` for one process (one replica).

    A pair is remembered for ``lifetime`` seconds after it was seen (longer than its nonce is
    good). At most ``max_entries`` pairs are kept: when more arrive, the oldest are forgotten
    and every nonce issued no later than a forgotten one counts as used from then on, so an
    overloaded guard makes clients fetch fresh nonces rather than letting a replay through.
    Thread-safe.
    """

    def __init__(
        self,
        lifetime: float,
        *,
        max_entries: int = DEFAULT_MAX_SEEN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._lifetime = lifetime
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # (nonce, nc) -> (forget at, issued at); insertion order = the order they were seen.
        self._seen: OrderedDict[tuple[str, int | None], tuple[float, float]] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, nonce: str, nc: int | None, issued_at: float) -> bool:
        now = self._clock()
        key = (nonce, nc)
        with self._lock:
            self._forget_expired(now)
            if issued_at <= self._floor or key in self._seen:
                return False
            self._seen[key] = (max(now, issued_at) + self._lifetime, issued_at)
            while len(self._seen) > self._max:
                _, (_, forgotten_issued_at) = self._seen.popitem(last=False)
                self._floor = max(self._floor, forgotten_issued_at)
            return True

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            key, (forget_at, _) = next(iter(self._seen.items()))
            if forget_at > now:
                return
            del self._seen[key]


def canonical_algorithm(name: str | None) -> str:
    """``name`` as RFC 7616 spells it (matched case-insensitively); ``MD5`` for ``None``; a
    name this module does not know comes back unchanged."""
    if name is None:
        return "MD5"
    return _BY_LOWER.get(name.lower(), name)


def parse_auth_params(text: str) -> dict[str, str]:
    """The ``name=value`` pairs of a challenge or credentials (after the scheme): names
    lower-cased, values unquoted (``\\`` escapes resolved). Commas inside quotes are part of
    the value; tokens may be unquoted even where RFC 7616 wants quotes.

    Raises:
        DigestParseError: a malformed list, an unterminated quote, or a repeated name.
    """
    params: dict[str, str] = {}
    length = len(text)
    index = 0
    while True:
        while index < length and (text[index] in ", \t\r\n"):
            index += 1
        if index >= length:
            return params
        name_match = _TOKEN_RE.match(text, index)
        if name_match is None:
            raise DigestParseError(f"expected a parameter name at character {index}")
        name = name_match.group().lower()
        index = _skip_space(text, name_match.end())
        if index >= length or text[index] != "=":
            raise DigestParseError(f"parameter {name}: expected '='")
        index = _skip_space(text, index + 1)
        if index < length and text[index] == '"':
            value, index = _quoted(text, index + 1, name)
        else:
            start = index
            while index < length and text[index] not in ', \t\r\n"':
                index += 1
            value = text[start:index]
        if name in params:
            raise DigestParseError(f"parameter {name} appears twice")
        params[name] = value
        index = _skip_space(text, index)
        if index < length and text[index] != ",":
            raise DigestParseError(f"parameter {name}: expected ',' after its value")


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _quoted(text: str, index: int, name: str) -> tuple[str, int]:
    out: list[str] = []
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
        elif char == '"':
            return "".join(out), index + 1
        else:
            out.append(char)
            index += 1
    raise DigestParseError(f"parameter {name}: unterminated quoted string")


def parse_authorization(value: str) -> DigestCredentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` value of the Digest scheme (the
    scheme name matched case-insensitively).

    Raises:
        DigestParseError: another scheme, a malformed parameter list, a missing required
            parameter (``username``, ``realm``, ``nonce``, ``uri``, ``response``), ``qop``
            without ``nc``/``cnonce``, a malformed ``nc``, or ``userhash=true``.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestParseError(f"longer than {MAX_HEADER_LENGTH} characters")
    parts = value.strip().split(None, 1)
    scheme, rest = (parts[0], parts[1]) if len(parts) == 2 else (value.strip(), "")
    if scheme.lower() != "digest":
        raise DigestParseError("not the Digest scheme")
    params = parse_auth_params(rest)
    missing = [name for name in _REQUIRED if not params.get(name)]
    if missing:
        raise DigestParseError(f"missing {', '.join(missing)}")
    if params.get("userhash", "false").lower() == "true":
        raise DigestParseError("userhash is not supported")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        qop = qop.lower()
        if nc is None or not cnonce:
            raise DigestParseError("qop needs nc and cnonce")
        if not _NC_RE.fullmatch(nc):
            raise DigestParseError("nc must be 8 hexadecimal digits")
        nc = nc.lower()
    else:
        nc = None  # meaningless without qop (RFC 2617 §3.2.2)
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=canonical_algorithm(params.get("algorithm")),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
    )


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` a client that knows ``password`` computes (lower-case hex).

    ``uri`` is the digest ``uri`` parameter exactly as sent; ``qop`` ``None`` is the RFC 2069
    form (no ``nc``/``cnonce``).

    Raises:
        ValueError: an unknown algorithm, or a ``-sess`` algorithm without ``cnonce``.
    """
    canonical = canonical_algorithm(algorithm)
    if canonical not in ALGORITHMS:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    hash_name = _HASH_NAMES[canonical.removesuffix("-sess")]

    def digest(text: str) -> str:
        return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()

    ha1 = digest(f"{username}:{realm}:{password}")
    if canonical.endswith("-sess"):
        if not cnonce:
            raise ValueError(f"{canonical} needs a cnonce")
        ha1 = digest(f"{ha1}:{nonce}:{cnonce}")
    ha2 = digest(f"{method}:{uri}")
    if qop is None:
        return digest(f"{ha1}:{nonce}:{ha2}")
    return digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def response_matches(credentials: DigestCredentials, *, method: str, password: str) -> bool:
    """Whether ``credentials.response`` is what ``password`` gives for ``method`` and the
    ``uri`` as sent (constant-time comparison; hex case ignored). Checks nothing about the
    nonce; :meth:`DigestAuth.verify` does."""
    canonical = canonical_algorithm(credentials.algorithm)
    if canonical not in ALGORITHMS:
        return False
    size = hashlib.new(_HASH_NAMES[canonical.removesuffix("-sess")]).digest_size * 2
    sent = credentials.response
    if len(sent) != size or not _HEX_RE.fullmatch(sent):
        return False
    if canonical.endswith("-sess") and not credentials.cnonce:
        return False
    expected = digest_response(
        algorithm=canonical,
        username=credentials.username,
        realm=credentials.realm,
        password=password,
        method=method,
        uri=credentials.uri,
        nonce=credentials.nonce,
        qop=credentials.qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    return hmac.compare_digest(expected, sent.lower())


def quote(value: str) -> str:
    """``value`` as an RFC 7230 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestAuth:
    """Digest challenges and checks with HMAC-signed, time-bound, single-use nonces.

    Args:
        secret: the nonce signing key (at least 16 bytes); replicas that share it accept each
            other's nonces. See :func:`callbridge.sip.auth.load_digest_auth`.
        nonce_seconds: how long a nonce is good (``sip.nonce_seconds``).
        clock: wall-clock seconds (injected by tests).
        seen: where accepted ``(nonce, nc)`` pairs are remembered; by default a
            :class:`SeenNonces` in this process's memory.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        nonce_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        seen: ReplayGuard | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if nonce_seconds <= 0:
            raise ValueError("nonce_seconds must be positive")
        self._secret = bytes(secret)
        self.nonce_seconds = nonce_seconds
        self._clock = clock
        # Remember pairs a little beyond the nonce lifetime: replicas' clocks differ a bit.
        self.seen: ReplayGuard = seen or SeenNonces(nonce_seconds + 5.0, clock=clock)

    def __repr__(self) -> str:
        return f"DigestAuth(secret=<hidden>, nonce_seconds={self.nonce_seconds})"

    def new_nonce(self, realm: str) -> str:
        """A fresh nonce for ``realm``: its issue time and randomness, signed."""
        issued_ms = int(self._clock() * 1000)
        body = struct.pack(">Q", issued_ms) + secrets.token_bytes(_RANDOM_BYTES)
        return _b64(body + self._mac(realm, body))

    def nonce_issued_at(self, nonce: str, realm: str) -> float | None:
        """When this server (or a replica sharing its secret) issued ``nonce`` for ``realm``,
        in clock seconds; ``None`` for a nonce it did not issue."""
        if len(nonce) != (_NONCE_BYTES * 4 + 2) // 3:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) != _NONCE_BYTES or not hmac.compare_digest(mac, self._mac(realm, body)):
            return None
        (issued_ms,) = struct.unpack(">Q", body[:8])
        return float(issued_ms) / 1000.0

    def opaque(self, realm: str) -> str:
        """The ``opaque`` value of this server's challenges for ``realm`` (clients echo it)."""
        mac = hmac.new(self._secret, _OPAQUE_CONTEXT + realm.encode("utf-8"), "sha256")
        return _b64(mac.digest()[:12])

    def challenge(self, realm: str, algorithm: Algorithm = "MD5", stale: bool = False) -> str:
        """A ``WWW-Authenticate`` (401) or ``Proxy-Authenticate`` (407) value: ``qop="auth"``,
        an ``opaque``, a fresh nonce, and ``stale=true`` when asked.

        Example: ``Digest realm="sip.example.com", nonce="AAABj…", opaque="Zr4…",
        algorithm=MD5, qop="auth"``.
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of: {', '.join(ALGORITHMS)}")
        parts = [
            f"realm={quote(realm)}",
            f"nonce={quote(self.new_nonce(realm))}",
            f"opaque={quote(self.opaque(realm))}",
            f"algorithm={algorithm}",
            'qop="auth"',
        ]
        if stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        password: str,
        realm: str,
        algorithm: Algorithm = "MD5",
    ) -> DigestOutcome:
        """Check credentials sent in answer to :meth:`challenge` and, when they pass, record
        their ``(nonce, nc)`` as used.

        Args:
            credentials: from :func:`parse_authorization`.
            method: the SIP method of the request carrying them (``INVITE``, ``ACK``, ``BYE``…).
            password: the credential's password in clear.
            realm: this server's realm (``sip.domain``).
            algorithm: the algorithm this server challenges with (``sip.digest_algorithm``).

        Returns:
            :attr:`Verdict.OK`; :attr:`Verdict.STALE` for a right response on an expired or
            already used nonce; :attr:`Verdict.REFUSED` otherwise.
        """
        refused = _problem(credentials, realm, algorithm)
        if refused is not None:
            return DigestOutcome(Verdict.REFUSED, refused)
        opaque = credentials.opaque
        expected_opaque = self.opaque(realm).encode()
        if opaque is not None and not hmac.compare_digest(opaque.encode(), expected_opaque):
            return DigestOutcome(Verdict.REFUSED, "opaque is not the one challenged with")
        issued_at = self.nonce_issued_at(credentials.nonce, realm)
        if issued_at is None:
            return DigestOutcome(Verdict.REFUSED, "nonce not issued by this server")
        if not response_matches(credentials, method=method, password=password):
            return DigestOutcome(Verdict.REFUSED, "wrong response (password, method or uri)")
        now = self._clock()
        if abs(now - issued_at) > self.nonce_seconds:
            return DigestOutcome(Verdict.STALE, "nonce expired")
        nc = None if credentials.nc is None or credentials.qop is None else int(credentials.nc, 16)
        if not self.seen.first_use(credentials.nonce, nc, issued_at):
            return DigestOutcome(Verdict.STALE, "nonce count already used")
        return DigestOutcome(Verdict.OK, "authenticated")

    def _mac(self, realm: str, body: bytes) -> bytes:
        message = _NONCE_CONTEXT + realm.encode("utf-8") + b"\x00" + body
        return hmac.new(self._secret, message, "sha256").digest()[:_MAC_BYTES]


def _problem(credentials: DigestCredentials, realm: str, algorithm: Algorithm) -> str | None:
    if credentials.realm != realm:
        return "realm is not this server's"
    if credentials.algorithm != algorithm:
        return f"algorithm {credentials.algorithm[:32]!r} was not offered"
    if credentials.qop not in (None, "auth"):
        return f"qop {credentials.qop[:32]!r} was not offered"
    if credentials.qop is not None and not (
        credentials.cnonce and credentials.nc and _NC_RE.fullmatch(credentials.nc)
    ):
        return "qop needs nc (8 hexadecimal digits) and cnonce"
    if credentials.algorithm.endswith("-sess") and not credentials.cnonce:
        return f"{credentials.algorithm} needs a cnonce"
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
