"""Egress guard for webhook deliveries: which URLs we may POST to, and pinning the address.

Customers choose webhook URLs, so a URL is a request to make our server connect somewhere. The
guard follows Svix's resolver filter: every resolved address is checked and only the allowed
ones are ever dialled, so the check and the connect use one resolution and a DNS answer that
changes afterwards (rebinding) cannot slip in.

- :class:`EgressPolicy` decides per address: public (``is_global``) and outside an explicit deny
  list, or inside an operator's allow-listed network. Cloud metadata addresses are refused even
  when allow-listed. IPv4-mapped, 6to4 and NAT64 addresses are judged by the IPv4 address they
  embed. The deny list does not trust :mod:`ipaddress` classifications alone: they changed
  between Python releases (CVE-2024-4032, gh-122792) and 3.11 calls 224.0.0.0/4 global.
- :func:`parse_webhook_url` and :func:`check_url` validate a URL at registration time.
- :class:`PinnedTransport` is the httpx transport for deliveries: it resolves at send time,
  connects to an allowed IP only, and keeps the ``Host`` header and the TLS server name (SNI and
  certificate check) on the URL's hostname. It never follows redirects.

Refusals raise :class:`UrlRefused`, whose message is safe to show to the API client: it may
name the host, never the path or the query string.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final, Protocol
from urllib.parse import SplitResult, urlsplit

import httpx

MAX_URL_LENGTH: Final = 2048
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Instance metadata and credential endpoints: refused even inside an allow-listed network
# (GitLab issue 628701). AWS/GCP/Azure/OCI 169.254.169.254, AWS IPv6 fd00:ec2::254, AWS ECS
# task credentials 169.254.170.2, EKS Pod Identity 169.254.170.23 and fd00:ec2::23, Alibaba
# 100.100.100.200, Azure WireServer 168.63.129.16, legacy OCI 192.0.0.192.
METADATA_ADDRESSES: Final[frozenset[IPv4Address | IPv6Address]] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)

# Svix's list plus IPv6 forms that older Pythons call global. 6to4 and NAT64 are not listed:
# they are judged by their embedded IPv4 address.
DENIED_NETWORKS: Final[tuple[IPv4Network | IPv6Network, ...]] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT: neither private nor global in ipaddress
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)

_NAT64: Final = IPv6Network("64:ff9b::/96")


class UrlRefused(ValueError):
    """A webhook URL, or the address it resolves to, is not allowed.

    The message says why and is safe to show to the API client: it never contains the URL's
    path or query string.
    """


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002::/16``) or
    NAT64 (``64:ff9b::/96``) address, else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _judged(ip: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if isinstance(ip, IPv4Address):
        return ip
    bare = IPv6Address(int(ip))  # drops a %zone, which would defeat equality with the lists
    return embedded_ipv4(bare) or bare


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses webhook deliveries may connect to.

    Attributes:
        allow_networks: operator-approved networks (for example an internal receiver); an
            address inside one of them is allowed even if it is not public. Each entry opens
            only itself. Metadata addresses stay refused.
        https_only: refuse ``http://`` URLs.
    """

    allow_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    https_only: bool = False

    @classmethod
    def from_strings(cls, networks: Iterable[str], https_only: bool = False) -> EgressPolicy:
        """Build a policy from CIDR strings such as ``"10.1.2.0/24"`` or ``"fd12::5/128"``.

        Raises:
            ValueError: an entry is not a network, or has host bits set (``10.0.0.1/8``).
        """
        if isinstance(networks, str):
            raise TypeError("networks must be an iterable of CIDR strings, not one string")
        parsed: list[IPv4Network | IPv6Network] = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(
                    f"invalid network {text!r} in the egress allow-list: {exc}"
                ) from exc
        return cls(allow_networks=tuple(parsed), https_only=https_only)

    def allows(self, ip: IPv4Address | IPv6Address) -> bool:
        """Whether a delivery may connect to ``ip``."""
        judged = _judged(ip)
        if judged in METADATA_ADDRESSES:
            return False
        if any(judged in network for network in self.allow_networks):
            return True
        return judged.is_global and not any(judged in network for network in DENIED_NETWORKS)


class Resolver(Protocol):
    """Turns a hostname into IP address strings (tests script the answers)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to, in preference order.

        Raises:
            OSError: the name cannot be resolved.
        """
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), answers deduplicated in order."""

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as exc:  # the idna codec rejects the name
            raise OSError(f"invalid host name: {exc}") from exc
        answers = (
            str(sockaddr[0])
            for family, _, _, _, sockaddr in infos
            if family in (socket.AF_INET, socket.AF_INET6)
        )
        return list(dict.fromkeys(answers))


def _target(url: httpx.URL, policy: EgressPolicy) -> tuple[str, int]:
    if url.scheme not in DEFAULT_PORTS:
        raise UrlRefused("URL scheme must be http or https")
    if policy.https_only and url.scheme != "https":
        raise UrlRefused("URL must use https")
    if url.userinfo:
        raise UrlRefused("URL must not contain a user name or password")
    host = url.raw_host.decode("ascii")
    if not host:
        raise UrlRefused("URL has no host")
    port = DEFAULT_PORTS[url.scheme] if url.port is None else url.port
    if not 1 <= port <= 65535:
        raise UrlRefused("URL port must be between 1 and 65535")
    return host, port


def parse_webhook_url(url: str, policy: EgressPolicy) -> SplitResult:
    """Check a webhook URL's form (no network access) and return its parts.

    Accepted: ``http`` or ``https`` (``https`` only when ``policy.https_only``), a host, no
    ``user:password@``, a port from 1 to 65535, at most :data:`MAX_URL_LENGTH` characters, no
    whitespace, control characters or backslashes. The standard library and httpx must read
    the same host and port from it, so the address checked is the address httpx would use.

    Raises:
        UrlRefused: with the reason.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise UrlRefused("URL contains whitespace or control characters")
    if "\\" in url:  # browsers read it as "/", urlsplit and httpx do not
        raise UrlRefused("URL contains a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("URL is malformed or its port is out of range") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlRefused("URL scheme must be http or https")
    if "@" in parts.netloc:
        raise UrlRefused("URL must not contain a user name or password")
    if not parts.hostname:
        raise UrlRefused("URL has no host")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise UrlRefused("URL is malformed") from None
    _, effective_port = _target(parsed, policy)
    if not _same_host(parsed.host, parts.hostname) or effective_port != (
        DEFAULT_PORTS[parts.scheme] if port is None else port
    ):
        raise UrlRefused("URL is ambiguous: its host or port cannot be read unambiguously")
    return parts


def _same_host(first: str, second: str) -> bool:
    first_ip, second_ip = _ip_or_none(first), _ip_or_none(second)
    if first_ip is not None or second_ip is not None:
        return first_ip == second_ip
    return first.lower() == second.lower()


def _ip_or_none(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _connect_form(ip: IPv4Address | IPv6Address) -> str:
    # An IPv4-mapped answer is the IPv4 host itself: dial it as IPv4.
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


async def _allowed_addresses(
    host: str, port: int, policy: EgressPolicy, resolver: Resolver, resolve_timeout: float
) -> list[str]:
    literal = _ip_or_none(host)
    if literal is not None:
        if policy.allows(literal):
            return [_connect_form(literal)]
        raise UrlRefused(f"address {host} is not a public address")
    try:
        async with asyncio.timeout(resolve_timeout):
            answers = await resolver.resolve(host, port)
    except OSError as exc:  # includes TimeoutError
        raise UrlRefused(f"cannot resolve host {host!r}") from exc
    if not answers:
        raise UrlRefused(f"cannot resolve host {host!r}")
    allowed: dict[str, None] = {}
    for answer in answers:
        ip = _ip_or_none(answer)
        if ip is not None and policy.allows(ip):
            allowed[_connect_form(ip)] = None
    if not allowed:
        raise UrlRefused(f"host {host!r} resolves only to non-public addresses")
    return list(allowed)


async def check_url(
    url: str, policy: EgressPolicy, resolver: Resolver, *, resolve_timeout: float = 10.0
) -> list[str]:
    """Registration-time check: the URL's form, then the addresses its host resolves to.

    A literal IP must itself be allowed; a hostname must resolve to at least one allowed
    address (the others are ignored, and will never be dialled by :class:`PinnedTransport`).

    Returns:
        The allowed addresses, in resolver order.

    Raises:
        UrlRefused: bad form, resolution failure or timeout (``cannot resolve ...``), or no
            allowed address (``resolves only to non-public addresses``).
    """
    parse_webhook_url(url, policy)
    host, port = _target(httpx.URL(url), policy)
    return await _allowed_addresses(host, port, policy, resolver, resolve_timeout)


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves at send time, connects only to an allowed address (so the check and the
    connect use one resolution: a DNS answer that changed since registration cannot slip in),
    keeps the Host header and TLS SNI/certificate checks on the hostname.

    The request is re-addressed to the first allowed IP; the ``Host`` header is the original
    ``host[:port]`` and, for https, the httpcore request extension ``sni_hostname`` carries the
    hostname, which httpcore uses as ``server_hostname`` for SNI and certificate verification.
    Nothing here follows redirects. A refused request raises :class:`UrlRefused` before any
    connection is made.

    httpcore pools connections by (scheme, IP, port) only, not by ``sni_hostname``: a kept-alive
    TLS connection verified for one name would be reused for another name on the same IP. So
    https connections are not kept alive; plain http ones are (an http connection carries no
    identity beyond its IP).

    Args:
        policy: the egress policy.
        resolver: resolves hostnames at send time.
        connect_timeout: bound on the name resolution, and the connect timeout when the
            request does not set one.
        verify: TLS verification: True (certifi's CA bundle), an SSL context, or False.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver,
        *,
        connect_timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)
        self._http = httpx.AsyncHTTPTransport(retries=0, verify=context)
        self._https = httpx.AsyncHTTPTransport(
            retries=0, verify=context, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host, port = _target(url, self._policy)
        addresses = await _allowed_addresses(
            host, port, self._policy, self._resolver, self._connect_timeout
        )
        headers = request.headers.copy()
        headers["Host"] = url.netloc.decode("ascii")
        extensions = dict(request.extensions)
        timeouts = dict(extensions.get("timeout") or {})
        if timeouts.get("connect") is None:
            timeouts["connect"] = self._connect_timeout
        extensions["timeout"] = timeouts
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        else:
            extensions.pop("sni_hostname", None)
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=addresses[0]),
            headers=headers,
            stream=request.stream,
            extensions=extensions,
        )
        inner = self._https if url.scheme == "https" else self._http
        return await inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._https.aclose()
