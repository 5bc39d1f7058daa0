"""The SIP endpoint's transport and transaction layer, over real UDP and TCP sockets and with
SIPp (Debian's sip-tester, installed by scripts/install-test-packages.sh): keep-alives answered,
retransmissions absorbed, final INVITE responses retransmitted until the ACK, malformed input
dropped while the endpoint keeps serving, stream framing over TCP."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.servers import InProcessServer, free_port, running_in_process
from tests.services import require_or_skip
from tests.sip_client import sip_credential


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[tuple[InProcessServer, int]]:
    port = free_port()
    overrides = {"sip": {"enabled": True, "host": "127.0.0.1", "port": port}}
    with running_in_process(tmp_path, overrides) as server:
        yield server, port


def request(
    method: str,
    port: int,
    *,
    branch: str | None = None,
    transport: str = "UDP",
    local_port: int = 5999,
    call_id: str | None = None,
    extra: str = "",
) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    call_id = call_id or secrets.token_hex(8)
    cseq_method = "INVITE" if method == "ACK" else method
    return (
        f"{method} sip:room1@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:room1@127.0.0.1>\r\n"
        f"From: <sip:tester@127.0.0.1>;tag=t{secrets.token_hex(3)}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {cseq_method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class UdpPeer:
    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.port = self.socket.getsockname()[1]

    async def send(self, data: bytes, port: int) -> None:
        await asyncio.get_running_loop().sock_sendto(self.socket, data, ("127.0.0.1", port))

    async def receive(self, within: float = 3.0) -> bytes:
        async with asyncio.timeout(within):
            data, _ = await asyncio.get_running_loop().sock_recvfrom(self.socket, 65536)
        return data

    async def quiet(self, seconds: float) -> bool:
        try:
            await self.receive(seconds)
        except TimeoutError:
            return True
        return False


@pytest.fixture
async def udp() -> AsyncIterator[UdpPeer]:
    peer = UdpPeer()
    yield peer
    peer.socket.close()


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


async def test_options_keepalives_are_answered_and_retransmissions_absorbed(
    sip_server: tuple[InProcessServer, int], udp: UdpPeer
) -> None:
    server, port = sip_server
    options = request("OPTIONS", port, local_port=udp.port)
    await udp.send(options, port)
    first = await udp.receive()
    assert status(first) == 200
    assert b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS" in first
    assert f";rport={udp.port};received=127.0.0.1".encode() in first, "RFC 3581"
    await udp.send(options, port)  # the same transaction again
    assert await udp.receive() == first, "the same response, not a second handling"
    await udp.send(b"\r\n\r\n", port)  # a CRLF keep-alive: no answer
    assert await udp.quiet(0.2)
    endpoint = server.app.state.sip
    assert (endpoint.counters.requests, endpoint.counters.retransmissions) == (2, 1)


async def test_malformed_input_is_dropped_and_the_endpoint_keeps_serving(
    sip_server: tuple[InProcessServer, int], udp: UdpPeer
) -> None:
    server, port = sip_server
    hostile = [
        b"GARBAGE\r\n\r\n",
        b"\x00\xff" * 500,
        b"OPTIONS sip:x@y SIP/2.0\r\nCSeq: banana\r\n\r\n",
        request("OPTIONS", port).replace(b"Via:", b"Xia:"),
        request("OPTIONS", port).replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"),
        b"OPTIONS sip:x@y SIP/2.0\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    ]
    for data in hostile:
        await udp.send(data[:65000], port)
    assert await udp.quiet(0.3), "nothing is answered to what cannot be answered"
    folded = request("OPTIONS", port, local_port=udp.port).replace(
        b"Max-Forwards: 70\r\n", b"Subject: a\r\n  folded line\r\nMax-Forwards: 70\r\n"
    )
    await udp.send(folded, port)
    assert status(await udp.receive()) == 200, "folded headers are unfolded (RFC 3261 §7.3.1)"
    assert server.app.state.sip.counters.malformed >= 5


async def test_a_challenged_invite_is_retransmitted_until_its_ack(
    sip_server: tuple[InProcessServer, int], udp: UdpPeer
) -> None:
    _, port = sip_server
    branch = "z9hG4bK" + secrets.token_hex(6)
    call_id = secrets.token_hex(8)
    await udp.send(
        request("INVITE", port, branch=branch, call_id=call_id, local_port=udp.port), port
    )
    assert status(await udp.receive()) == 100
    final = await udp.receive()
    assert status(final) == 401 and b'WWW-Authenticate: Digest realm="127.0.0.1"' in final
    assert await udp.receive(within=1.0) == final, "timer G: the final response again after T1"
    ack = request("ACK", port, branch=branch, call_id=call_id, local_port=udp.port)
    await udp.send(ack, port)
    assert await udp.quiet(1.5), "the ACK stops the retransmissions"


async def test_other_methods_and_calls_that_do_not_exist(
    sip_server: tuple[InProcessServer, int], udp: UdpPeer
) -> None:
    _, port = sip_server
    answers = {}
    for method in ("BYE", "CANCEL", "INFO", "REGISTER", "SUBSCRIBE"):
        await udp.send(request(method, port, local_port=udp.port), port)
        answers[method] = await udp.receive()
    assert [status(answers[method]) for method in ("BYE", "CANCEL", "INFO")] == [481] * 3
    assert status(answers["REGISTER"]) == 401, "registration is challenged too"
    assert status(answers["SUBSCRIBE"]) == 405 and b"Allow: INVITE" in answers["SUBSCRIBE"]


async def test_tcp_frames_by_content_length(sip_server: tuple[InProcessServer, int]) -> None:
    _, port = sip_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        one = request("OPTIONS", port, transport="TCP")
        two = request("OPTIONS", port, transport="TCP")
        writer.write(b"\r\n\r\n" + one + two[:40])  # a keep-alive, a whole one, half another
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(two[40:])
        await writer.drain()
        seen = b""
        async with asyncio.timeout(3):
            while seen.count(b"SIP/2.0 200 OK") < 2:
                seen += await reader.read(65536)
        assert seen.count(b"Content-Length: 0") == 2
    finally:
        writer.close()


def test_sipp_options_scenario(sip_server: tuple[InProcessServer, int], tmp_path: Path) -> None:
    sipp = shutil.which("sipp")
    if sipp is None:
        require_or_skip("sipp (Debian sip-tester) is not installed")
    _, port = sip_server
    scenario = tmp_path / "options.xml"
    scenario.write_text(
        """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options keepalive">
  <send retrans="500">
    <![CDATA[
OPTIONS sip:room1@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:trunk@[local_ip]>;tag=[call_number]
To: <sip:room1@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
""",
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            sipp,
            "-sf",
            str(scenario),
            "-m",
            "5",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-timeout",
            "10",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


async def test_a_wrong_password_is_refused_without_a_401_loop(
    sip_server: tuple[InProcessServer, int], tmp_path: Path
) -> None:
    from tests.baresip import baresip

    server, port = sip_server
    credential = sip_credential(server)
    async with baresip(
        tmp_path / "baresip", user=credential["username"], password="not-the-password"
    ) as phone:
        await phone.command("dial", f"sip:room1@127.0.0.1:{port}")
        closed = await phone.wait_event("CALL_CLOSED")
    assert "403" in closed.get("param", ""), closed
    # INVITE → 401, ACK, INVITE with credentials → 403, ACK: no second challenge
    assert server.app.state.sip.counters.requests == 4


async def test_an_authenticated_register_is_accepted_and_stored_nowhere(
    sip_server: tuple[InProcessServer, int], udp: UdpPeer
) -> None:
    from callbridge.sip.digest import digest_response, parse_auth_params

    server, port = sip_server
    credential = sip_credential(server)
    contact = f"Contact: <sip:{credential['username']}@127.0.0.1:{udp.port}>;expires=7200\r\n"
    call_id = secrets.token_hex(8)
    await udp.send(
        request("REGISTER", port, local_port=udp.port, call_id=call_id, extra=contact), port
    )
    challenge = await udp.receive()
    assert status(challenge) == 401
    header = next(
        line for line in challenge.decode().split("\r\n") if line.startswith("WWW-Authenticate:")
    )
    params = parse_auth_params(header.split("Digest", 1)[1])
    uri = f"sip:room1@127.0.0.1:{port}"
    response = digest_response(
        algorithm="MD5",
        username=credential["username"],
        realm=params["realm"],
        password=credential["password"],
        method="REGISTER",
        uri=uri,
        nonce=params["nonce"],
        qop="auth",
        nc="00000001",
        cnonce="abc123",
    )
    authorization = (
        f'Authorization: Digest username="{credential["username"]}", realm="{params["realm"]}", '
        f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5, '
        f'qop=auth, nc=00000001, cnonce="abc123", opaque="{params["opaque"]}"\r\n'
    )
    await udp.send(
        request(
            "REGISTER", port, local_port=udp.port, call_id=call_id, extra=contact + authorization
        ),
        port,
    )
    accepted = await udp.receive()
    assert status(accepted) == 200, accepted
    assert b"Expires: 3600" in accepted and b";expires=3600" in accepted, "capped at an hour"


def _self_signed(folder: Path) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1 signed by itself: its file, its key's file, its PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sip.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = folder / "sip.pem", folder / "sip.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, pem.decode()


async def test_sip_over_tls_with_a_configured_certificate(tmp_path: Path) -> None:
    """With ``sip.tls_certificate`` and ``sip.tls_key`` the endpoint also listens for TLS on
    the next port: a client that trusts the certificate gets OPTIONS answered there."""
    import ssl

    cert_file, key_file, pem = _self_signed(tmp_path)
    port = free_port()
    overrides = {
        "sip": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "tls_certificate": str(cert_file),
            "tls_key": str(key_file),
        }
    }
    with running_in_process(tmp_path, overrides) as server:
        tls_port = server.app.state.sip.endpoint.tls_port
        assert tls_port == port + 1
        trusting = ssl.create_default_context(cadata=pem)
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=trusting)
        try:
            writer.write(request("OPTIONS", tls_port, transport="TLS"))
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
    assert status(head) == 200
    assert b"Via: SIP/2.0/TLS" in head
