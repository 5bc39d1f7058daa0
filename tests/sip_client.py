"""A hand-driven SIP user agent client over UDP for tests that need to see the exact responses
(a redirect, a retransmission): it sends an INVITE, answers the digest challenge with the
credentials it was given, and returns the final response."""

from __future__ import annotations

import asyncio
import secrets
import socket
from typing import Any

import httpx

from callbridge.sip.digest import digest_response, parse_auth_params
from tests.servers import InProcessServer

SDP_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def sip_credential(server: InProcessServer, **fields: Any) -> dict[str, Any]:
    """A new SIP credential of the server's test API key, with its password (``fields``: more
    of the create body, e.g. ``authenticateBy``)."""
    answer = httpx.post(
        f"{server.url}/v2/sip/credentials",
        json={"name": "softphone", **fields},
        headers={"Authorization": f"Bearer {server.token()}"},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]  # type: ignore[no-any-return]


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def header_of(data: bytes, name: str) -> str | None:
    for line in data.decode(errors="replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


class UdpUac:
    """One UDP socket playing a SIP phone at 127.0.0.1 (``offer``: its SDP, ``{port}`` the RTP
    port)."""

    def __init__(self, offer: str = SDP_OFFER) -> None:
        self.offer = offer
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.port = int(self.socket.getsockname()[1])
        self.call_id = secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)

    def close(self) -> None:
        self.socket.close()

    async def send(self, data: bytes, port: int) -> None:
        await asyncio.get_running_loop().sock_sendto(self.socket, data, ("127.0.0.1", port))

    async def receive(self, within: float = 5.0) -> bytes:
        async with asyncio.timeout(within):
            data, _ = await asyncio.get_running_loop().sock_recvfrom(self.socket, 65536)
        return data

    async def final(self, within: float = 5.0) -> bytes:
        """The next response that is not 1xx."""
        while True:
            data = await self.receive(within)
            if status_of(data) >= 200:
                return data

    def invite(
        self, user: str, port: int, *, cseq: int, branch: str, authorization: str = ""
    ) -> bytes:
        body = self.offer.format(port=self.port + 2).encode()
        return (
            f"INVITE sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\n"
            f"From: <sip:uac@127.0.0.1>;tag={self.from_tag}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:uac@127.0.0.1:{self.port}>\r\n"
            f"{authorization}"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def ack(self, response: bytes, user: str, port: int, branch: str, cseq: int) -> bytes:
        to = header_of(response, "To") or f"<sip:{user}@127.0.0.1>"
        return (
            f"ACK sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"To: {to}\r\n"
            f"From: <sip:uac@127.0.0.1>;tag={self.from_tag}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    async def authenticated_invite(
        self, user: str, port: int, username: str, password: str
    ) -> bytes:
        """INVITE, the 401, its ACK, the INVITE with credentials: its final response (not
        acknowledged: the caller decides)."""
        branch = "z9hG4bK" + secrets.token_hex(6)
        await self.send(self.invite(user, port, cseq=1, branch=branch), port)
        challenge = await self.final()
        assert status_of(challenge) == 401, challenge
        await self.send(self.ack(challenge, user, port, branch, 1), port)
        params = parse_auth_params((header_of(challenge, "WWW-Authenticate") or "")[7:])
        uri = f"sip:{user}@127.0.0.1:{port}"
        response = digest_response(
            algorithm="MD5",
            username=username,
            realm=params["realm"],
            password=password,
            method="INVITE",
            uri=uri,
            nonce=params["nonce"],
            qop="auth",
            nc="00000001",
            cnonce="c0ffee",
        )
        authorization = (
            f'Authorization: Digest username="{username}", realm="{params["realm"]}", '
            f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5, '
            f'qop=auth, nc=00000001, cnonce="c0ffee", opaque="{params.get("opaque", "")}"\r\n'
        )
        branch = "z9hG4bK" + secrets.token_hex(6)
        await self.send(
            self.invite(user, port, cseq=2, branch=branch, authorization=authorization), port
        )
        final = await self.final()
        if status_of(final) >= 300:
            await self.send(self.ack(final, user, port, branch, 2), port)
        return final
