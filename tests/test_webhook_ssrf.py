"""The webhook egress guard: address policy, URL checks, and the IP-pinning httpx transport.

Connection tests use real sockets on loopback: an HTTP/1.1 receiver written on asyncio streams
(plain, or TLS with a certificate for ``webhooks.test`` signed by a throwaway CA) records every
connection, SNI name and request. A scripted resolver stands in for DNS.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callbridge.webhooks.ssrf import (
    EgressPolicy,
    PinnedTransport,
    SystemResolver,
    UrlRefused,
    check_url,
    parse_webhook_url,
)

OPEN = EgressPolicy()
LOOPBACK = EgressPolicy.from_strings(["127.0.0.0/8"])
SECRET = "token=SECRET-QUERY-VALUE"


class ScriptedResolver:
    """Answers each lookup with the next scripted answer (a list of IPs, or an error to raise)."""

    def __init__(self, *answers: list[str] | OSError) -> None:
        self._answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        assert self._answers, f"unexpected lookup of {host}"
        answer = self._answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


class HangingResolver:
    async def resolve(self, host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return ["8.8.8.8"]


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server that records what reaches it and answers ``status``."""

    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    port: int = 0
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, target, headers, body))
                extra = "".join(
                    f"{name}: {value}\r\n" for name, value in self.extra_headers.items()
                )
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\ncontent-length: 2\r\n{extra}\r\n".encode() + b"ok"
                )
                await writer.drain()
        finally:
            writer.close()
            with suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


@asynccontextmanager
async def running(
    receiver: Receiver, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[Receiver]:
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
    server = await asyncio.start_server(receiver.handle, host, 0, ssl=tls)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


def client(transport: PinnedTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=3.0)


# --------------------------------------------------------------------------- TLS material


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A throwaway CA and a server certificate valid for ``webhooks.test`` only."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("callbridge test CA"))
        .issuer_name(_name("callbridge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("webhooks.test"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("webhooks.test")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return Tls(server=server, client=trusting)


# --------------------------------------------------------------------------- EgressPolicy


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2002:808:808::1",  # 6to4 around 8.8.8.8
        "64:ff9b::8.8.8.8",  # NAT64 around 8.8.8.8
        "::ffff:8.8.8.8",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert OPEN.allows(ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",  # RFC 1918
        "172.16.5.4",
        "172.31.255.254",
        "192.168.1.1",
        "127.0.0.1",  # loopback
        "127.255.255.254",
        "169.254.1.1",  # link-local
        "255.255.255.255",  # broadcast
        "224.0.0.251",  # multicast (ipaddress on 3.11 calls it global)
        "239.255.255.250",
        "192.0.2.1",  # documentation
        "198.51.100.7",
        "203.0.113.9",
        "100.64.0.1",  # CGNAT (neither private nor global)
        "100.127.255.254",
        "192.0.0.9",  # IETF protocol assignments
        "192.88.99.1",  # 6to4 relay anycast
        "240.0.0.1",  # reserved
        "198.18.0.1",  # benchmarking
        "198.19.255.254",
        "0.0.0.0",  # this network
        "0.1.2.3",
        "::1",
        "::",
        "::7f00:1",  # deprecated IPv4-compatible 127.0.0.1
        "ff02::1",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "2001:db8::1",
        "100::1",
        "5f00::1",  # SRv6
        "2001::1",  # Teredo
        "64:ff9b:1::a00:1",  # local-use NAT64
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:c0a8:101::",  # 6to4 around 192.168.1.1
        "64:ff9b::10.0.0.1",  # NAT64 around 10.0.0.1
        "64:ff9b::127.0.0.1",
        "64:ff9b::169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not OPEN.allows(ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "fd00:ec2::254",
        "fd00:ec2::254%eth0",  # a zone id must not defeat the comparison
        "100.100.100.200",
        "::ffff:169.254.169.254",
        "64:ff9b::169.254.169.254",
    ],
)
def test_metadata_addresses_stay_refused_when_their_networks_are_allow_listed(
    address: str,
) -> None:
    policy = EgressPolicy.from_strings(["169.254.0.0/16", "fd00::/8", "100.64.0.0/10"])
    # The allow-list is in force for the neighbours...
    assert policy.allows(ip_address("169.254.1.1"))
    assert policy.allows(ip_address("fd00::1"))
    assert policy.allows(ip_address("100.64.0.1"))
    # ...but never for the metadata endpoints.
    assert not policy.allows(ip_address(address))


def test_allow_listing_one_address_opens_only_that_address() -> None:
    policy = EgressPolicy.from_strings(["127.0.0.1/32"])
    assert policy.allows(ip_address("127.0.0.1"))
    assert policy.allows(ip_address("::ffff:127.0.0.1"))
    assert not policy.allows(ip_address("127.0.0.2"))
    assert not policy.allows(ip_address("10.0.0.1"))
    assert not policy.allows(ip_address("::1"))
    assert policy.allows(ip_address("8.8.8.8"))


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "not-a-network", "10.0.0.1/8", "fd00::1/8", ""])
def test_from_strings_refuses_a_bad_cidr(entry: str) -> None:
    with pytest.raises(ValueError, match="egress allow-list"):
        EgressPolicy.from_strings(["192.168.0.0/16", entry])


def test_from_strings_builds_the_networks() -> None:
    policy = EgressPolicy.from_strings([" 10.1.0.0/16", "fd12::/16"], https_only=True)
    assert [str(network) for network in policy.allow_networks] == ["10.1.0.0/16", "fd12::/16"]
    assert policy.https_only


# --------------------------------------------------------------------------- parse_webhook_url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"ftp://hooks.example.com/x?{SECRET}", "scheme"),
        (f"javascript://hooks.example.com/%0aalert(1)?{SECRET}", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("hooks.example.com/x", "scheme"),
        (f"https://user:pass@hooks.example.com/x?{SECRET}", "user name or password"),
        (f"https://user@hooks.example.com/x?{SECRET}", "user name or password"),
        (f"https://hooks.example.com\\@evil.example/x?{SECRET}", "backslash"),
        (f"https:///x?{SECRET}", "no host"),
        (f"https://:443/x?{SECRET}", "no host"),
        (f"https://hooks.example.com:0/x?{SECRET}", "port"),
        (f"https://hooks.example.com:70000/x?{SECRET}", "port"),
        (f"https://hooks.example.com:http/x?{SECRET}", "port"),
        (f"https://hooks.example.com/x?{SECRET}&pad=" + "a" * 2048, "longer than 2048"),
        (f"https://hooks.example.com/a b?{SECRET}", "whitespace"),
        (f"https://hooks.example.com/x\t?{SECRET}", "whitespace"),
        (f"https://hooks.example.com\n.evil/x?{SECRET}", "whitespace"),
        (f"https://hooks.example.com\x00.evil/x?{SECRET}", "control"),
        (f" https://hooks.example.com/x?{SECRET}", "whitespace"),
    ],
)
def test_parse_refuses_bad_urls_without_echoing_the_query(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=reason) as refused:
        parse_webhook_url(url, OPEN)
    assert "SECRET" not in str(refused.value)


def test_parse_refuses_http_when_https_only() -> None:
    strict = EgressPolicy(https_only=True)
    with pytest.raises(UrlRefused, match="https"):
        parse_webhook_url("http://hooks.example.com/x", strict)
    assert parse_webhook_url("http://hooks.example.com/x", OPEN).scheme == "http"
    assert parse_webhook_url("https://hooks.example.com/x", strict).scheme == "https"


def test_parse_accepts_a_normal_url_and_returns_its_parts() -> None:
    url = "https://Hooks.Example.com:8443/callbridge/events?tenant=7"
    assert len(url) < 2048
    parts = parse_webhook_url(url, OPEN)
    assert (parts.scheme, parts.hostname, parts.port, parts.path, parts.query) == (
        "https",
        "hooks.example.com",
        8443,
        "/callbridge/events",
        "tenant=7",
    )
    assert parse_webhook_url("https://hooks.example.com/" + "a" * 2000, OPEN).hostname


# --------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "https://10.0.0.5/hook",
    ],
)
async def test_check_url_refuses_literal_non_public_addresses(url: str) -> None:
    resolver = ScriptedResolver()
    with pytest.raises(UrlRefused, match="not a public address"):
        await check_url(url, OPEN, resolver)
    assert resolver.calls == []


async def test_check_url_accepts_a_literal_public_address() -> None:
    assert await check_url("https://8.8.8.8/hook", OPEN, ScriptedResolver()) == ["8.8.8.8"]
    assert await check_url("https://[::ffff:8.8.8.8]/hook", OPEN, ScriptedResolver()) == ["8.8.8.8"]


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "localhost"])
async def test_check_url_refuses_numeric_and_local_names_through_the_system_resolver(
    host: str,
) -> None:
    # getaddrinfo reads these as 127.0.0.1; ipaddress does not, so they arrive as names.
    with pytest.raises(UrlRefused):
        await check_url(f"http://{host}/hook", OPEN, SystemResolver())


async def test_system_resolver_normalises_and_deduplicates() -> None:
    assert await SystemResolver().resolve("2130706433", 80) == ["127.0.0.1"]


async def test_check_url_keeps_only_the_public_answers() -> None:
    resolver = ScriptedResolver(
        ["10.0.0.5", "93.184.216.34", "::1", "2606:4700:4700::1111", "93.184.216.34", "junk"]
    )
    addresses = await check_url("https://hooks.example.com/x", OPEN, resolver)
    assert addresses == ["93.184.216.34", "2606:4700:4700::1111"]
    assert resolver.calls == [("hooks.example.com", 443)]


async def test_check_url_resolves_the_idna_name_on_the_url_port() -> None:
    resolver = ScriptedResolver(["93.184.216.34"])
    await check_url("http://Bücher.example:8080/x", OPEN, resolver)
    assert resolver.calls == [("xn--bcher-kva.example", 8080)]


@pytest.mark.parametrize(
    "failure", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), []]
)
async def test_check_url_refuses_when_resolution_fails(failure: list[str] | OSError) -> None:
    with pytest.raises(UrlRefused, match=r"cannot resolve host 'hooks\.example\.com'"):
        await check_url("https://hooks.example.com/x", OPEN, ScriptedResolver(failure))


async def test_check_url_refuses_when_resolution_hangs() -> None:
    with pytest.raises(UrlRefused, match="cannot resolve"):
        await check_url(
            "https://hooks.example.com/x", OPEN, HangingResolver(), resolve_timeout=0.05
        )


async def test_check_url_refuses_all_private_answers_without_naming_the_query() -> None:
    resolver = ScriptedResolver(["10.0.0.5", "192.168.1.2", "fd00::5"])
    with pytest.raises(UrlRefused) as refused:
        await check_url(f"https://hooks.example.com/path?{SECRET}", OPEN, resolver)
    message = str(refused.value)
    assert "resolves only to non-public addresses" in message
    assert "hooks.example.com" in message
    assert "SECRET" not in message and "token" not in message and "/path" not in message


# --------------------------------------------------------------------------- PinnedTransport


async def test_dns_rebinding_after_registration_is_refused_without_connecting() -> None:
    resolver = ScriptedResolver(["93.184.216.34"], ["127.0.0.1"])
    async with running(Receiver()) as receiver:
        url = f"http://rebind.example:{receiver.port}/hook"
        assert await check_url(url, OPEN, resolver) == ["93.184.216.34"]
        async with client(PinnedTransport(OPEN, resolver)) as http:
            with pytest.raises(UrlRefused, match="non-public"):
                await http.post(url, content=b"{}")
    assert resolver.calls == [("rebind.example", receiver.port)] * 2
    assert receiver.connections == 0


async def test_resolution_failure_at_send_time_is_refused_without_connecting() -> None:
    # GitLab H1 #632101: a failed lookup must not skip the check and fall back to a connect.
    resolver = ScriptedResolver(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    async with running(Receiver()) as receiver:
        async with client(PinnedTransport(LOOPBACK, resolver)) as http:
            with pytest.raises(UrlRefused, match="cannot resolve"):
                await http.post(f"http://flaky.example:{receiver.port}/hook", content=b"{}")
    assert receiver.connections == 0


async def test_mixed_answers_at_send_time_connect_only_to_the_allowed_one() -> None:
    # Only 127.0.0.1 is allowed; the receiver listens on 127.0.0.1 alone, so dialling
    # 127.0.0.2 would fail fast with "connection refused" and 10.0.0.5 would time out.
    policy = EgressPolicy.from_strings(["127.0.0.1/32"])
    resolver = ScriptedResolver(["10.0.0.5", "127.0.0.2", "127.0.0.1"])
    async with running(Receiver()) as receiver:
        async with client(PinnedTransport(policy, resolver)) as http:
            response = await http.post(f"http://mixed.example:{receiver.port}/hook", content=b"1")
    assert response.status_code == 200
    assert [request.body for request in receiver.requests] == [b"1"]


async def test_an_ipv4_mapped_answer_is_dialled_as_ipv4() -> None:
    resolver = ScriptedResolver(["::ffff:127.0.0.1"])
    async with running(Receiver()) as receiver:
        async with client(PinnedTransport(LOOPBACK, resolver)) as http:
            response = await http.post(f"http://mapped.example:{receiver.port}/", content=b"1")
    assert response.status_code == 200
    assert receiver.requests[0].headers["host"] == f"mapped.example:{receiver.port}"


async def test_post_reaches_an_allow_listed_receiver_with_the_original_host() -> None:
    resolver = ScriptedResolver(["127.0.0.1"])
    async with running(Receiver()) as receiver:
        url = f"http://receiver.example:{receiver.port}/hook/path?tenant=7&x=%20"
        async with client(PinnedTransport(LOOPBACK, resolver)) as http:
            response = await http.post(
                url, content=b'{"event":"call-started"}', headers={"Host": "internal.admin"}
            )
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.request.url == httpx.URL(url)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.target == "/hook/path?tenant=7&x=%20"
    assert request.headers["host"] == f"receiver.example:{receiver.port}"
    assert request.body == b'{"event":"call-started"}'


async def test_loopback_receiver_is_refused_without_the_allow_list() -> None:
    async with running(Receiver()) as receiver:
        async with client(PinnedTransport(OPEN, ScriptedResolver(["127.0.0.1"]))) as http:
            with pytest.raises(UrlRefused, match="non-public"):
                await http.post(f"http://receiver.example:{receiver.port}/hook", content=b"{}")
        async with client(PinnedTransport(OPEN, ScriptedResolver())) as http:
            with pytest.raises(UrlRefused, match="not a public address"):
                await http.post(f"http://127.0.0.1:{receiver.port}/hook", content=b"{}")
    assert receiver.connections == 0


async def test_transport_enforces_https_only_and_userinfo_at_send_time() -> None:
    strict = EgressPolicy(allow_networks=LOOPBACK.allow_networks, https_only=True)
    async with running(Receiver()) as receiver:
        async with client(PinnedTransport(strict, ScriptedResolver())) as http:
            with pytest.raises(UrlRefused, match="https"):
                await http.post(f"http://127.0.0.1:{receiver.port}/hook", content=b"{}")
        async with client(PinnedTransport(LOOPBACK, ScriptedResolver())) as http:
            with pytest.raises(UrlRefused, match="user name"):
                await http.post(f"http://u:p@127.0.0.1:{receiver.port}/hook", content=b"{}")
    assert receiver.connections == 0


async def test_a_redirect_is_returned_as_is_and_never_followed() -> None:
    async with running(Receiver()) as target:
        redirect = Receiver(
            status=302, extra_headers={"location": f"http://127.0.0.1:{target.port}/target"}
        )
        async with running(redirect):
            async with client(PinnedTransport(LOOPBACK, ScriptedResolver(["127.0.0.1"]))) as http:
                response = await http.post(
                    f"http://redirect.example:{redirect.port}/hook", content=b"{}"
                )
    assert response.status_code == 302
    assert response.headers["location"].endswith("/target")
    assert len(redirect.requests) == 1
    assert target.connections == 0


async def test_resolution_at_send_time_is_bounded_by_the_connect_timeout() -> None:
    transport = PinnedTransport(OPEN, HangingResolver(), connect_timeout=0.05)
    async with client(transport) as http:
        with pytest.raises(UrlRefused, match="cannot resolve"):
            await http.post("https://slow.example/hook", content=b"{}")


async def test_https_is_pinned_with_sni_and_certificate_checked_on_the_hostname(tls: Tls) -> None:
    resolver = ScriptedResolver(["127.0.0.1"])
    async with running(Receiver(), tls=tls.server) as receiver:
        transport = PinnedTransport(LOOPBACK, resolver, verify=tls.client)
        async with client(transport) as http:
            response = await http.post(
                f"https://webhooks.test:{receiver.port}/hook?a=1", content=b"signed"
            )
    assert response.status_code == 200
    assert receiver.server_names == ["webhooks.test"]
    [request] = receiver.requests
    assert request.headers["host"] == f"webhooks.test:{receiver.port}"
    assert (request.target, request.body) == ("/hook?a=1", b"signed")


async def test_https_connection_is_not_reused_for_another_name_on_the_same_ip(tls: Tls) -> None:
    # httpcore pools by (scheme, IP, port); reusing the webhooks.test connection for
    # other.test would send other.test's webhook over a session verified for another name.
    resolver = ScriptedResolver(["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"])
    async with running(Receiver(), tls=tls.server) as receiver:
        transport = PinnedTransport(LOOPBACK, resolver, verify=tls.client)
        async with client(transport) as http:
            first = await http.post(f"https://webhooks.test:{receiver.port}/a", content=b"1")
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.post(f"https://other.test:{receiver.port}/b", content=b"2")
            again = await http.post(f"https://webhooks.test:{receiver.port}/c", content=b"3")
    assert (first.status_code, again.status_code) == (200, 200)
    assert [request.target for request in receiver.requests] == ["/a", "/c"]
    assert receiver.server_names == ["webhooks.test", "other.test", "webhooks.test"]


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback")
async def test_ipv6_answers_are_dialled_in_brackets_with_the_original_host() -> None:
    policy = EgressPolicy.from_strings(["::1/128"])
    async with running(Receiver(), host="::1") as receiver:
        async with client(PinnedTransport(policy, ScriptedResolver(["::1"]))) as http:
            named = await http.post(f"http://v6.example:{receiver.port}/n?q=1", content=b"1")
            literal = await http.post(f"http://[::1]:{receiver.port}/l", content=b"2")
    assert (named.status_code, literal.status_code) == (200, 200)
    assert [(r.target, r.headers["host"]) for r in receiver.requests] == [
        ("/n?q=1", f"v6.example:{receiver.port}"),
        ("/l", f"[::1]:{receiver.port}"),
    ]
