"""SIP protocol scenarios against a running server: scripted calls with SIPp (Debian's
sip-tester; scenario files in ``tests/sipp/``), hand-made requests on raw UDP and TCP sockets
(retransmissions, a withheld ACK, CANCEL, late offer with our own RTP, malformed input), and a
carrier-trunk stand-in (Kamailio, ``tests/kamailio.py``) that answers our digest challenge itself
and Record-Routes the call between a softphone (baresip) and the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from callbridge.media.codecs import get_codec
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import CodecSpec
from callbridge.sip.digest import digest_response, parse_auth_params
from tests.baresip import Baresip, baresip, tone_wav
from tests.calls import assert_heard, assert_tone
from tests.kamailio import kamailio
from tests.live_calls import CALLER_HZ, ROOM_HZ, tone_participant
from tests.servers import InProcessServer, free_port, running_in_process
from tests.services import require_or_skip
from tests.test_sip_endpoint import UdpPeer, request, sip_credential, status

pytestmark = pytest.mark.timeout(60)

SCENARIOS = Path(__file__).parent / "sipp"
PCMA = get_codec(CodecSpec("PCMA", 8000))
PCMU = get_codec(CodecSpec("PCMU", 8000))

# --------------------------------------------------------------------------- the server


@dataclass
class Sip:
    """A server with SIP on: its SIP port (UDP and TCP) and a SIP credential of its key."""

    server: InProcessServer
    port: int
    credential: dict[str, Any]

    @property
    def counters(self) -> Any:
        return self.server.app.state.sip.counters

    def room_url(self, room: str) -> str:
        server = self.server
        return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token()}"

    async def calls(self) -> list[dict[str, Any]]:
        server = self.server
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {server.token()}"}
            )
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]  # type: ignore[no-any-return]

    async def ended(self, within: float = 8.0) -> dict[str, Any]:
        """The only call, once it has ended or failed."""
        async with asyncio.timeout(within):
            while True:
                rows = await self.calls()
                assert len(rows) <= 1, rows
                if rows and rows[0]["status"] in ("ended", "failed"):
                    return rows[0]
                await asyncio.sleep(0.05)


@pytest.fixture
def sip(tmp_path: Path) -> Iterator[Sip]:
    port = free_port()
    overrides = {"sip": {"enabled": True, "host": "127.0.0.1", "port": port}}
    with running_in_process(tmp_path, overrides) as server:
        yield Sip(server, port, sip_credential(server))


@pytest.fixture
async def udp() -> AsyncIterator[UdpPeer]:
    peer = UdpPeer()
    yield peer
    peer.socket.close()


class JoinGate:
    """Holds every room join (the answer of an early-offer call waits for it) until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 5), "no room join started"


@pytest.fixture
def held_joins(sip: Sip, monkeypatch: pytest.MonkeyPatch) -> Iterator[JoinGate]:
    """The local room transport's ``join`` waits (in the server's loop) for the gate."""
    rooms = sip.server.runtime.room_transports["local"].wrapped
    real_join = rooms.join
    gate = JoinGate()

    async def join(*args: Any, **kwargs: Any) -> Any:
        gate.entered.set()
        await asyncio.to_thread(gate.opened.wait, 10)
        return await real_join(*args, **kwargs)

    monkeypatch.setattr(rooms, "join", join)
    try:
        yield gate
    finally:
        gate.opened.set()  # never leave a call stuck in a join when the server stops


# --------------------------------------------------------------------------- SIP by hand


def headers(data: bytes, name: str) -> list[str]:
    """The values of header ``name`` in a message, one per line (no compact forms)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    found = []
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            found.append(value.strip())
    return found


def header(data: bytes, name: str) -> str | None:
    """The first value of header ``name`` in a message (no compact forms)."""
    return next(iter(headers(data, name)), None)


def body_of(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[1].decode()


def to_tag(data: bytes) -> str:
    match = re.search(r";\s*tag=([^;>\s]+)", header(data, "To") or "")
    assert match is not None, data
    return match.group(1)


def branch_of(request: bytes) -> str:
    match = re.search(r";branch=([^;\s]+)", header(request, "Via") or "")
    assert match is not None, request
    return match.group(1)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def sdp(rtp_port: int, formats: str = "0 101", *, codec: str = "PCMU") -> bytes:
    """An SDP offer or answer from 127.0.0.1:``rtp_port``."""
    number = formats.split()[0]
    return (
        "v=0\r\n"
        f"o=tester {rtp_port} 1 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {formats}\r\n"
        f"a=rtpmap:{number} {codec}/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    ).encode()


@dataclass
class Uac:
    """A caller on a raw UDP socket: requests made by hand, digest computed with
    :mod:`callbridge.sip.digest`."""

    udp: UdpPeer
    port: int
    room: str
    credential: dict[str, Any]
    call_id: str = field(default_factory=lambda: secrets.token_hex(8) + "@127.0.0.1")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    remote_tag: str | None = None
    trying: bytes = b""

    @property
    def uri(self) -> str:
        return f"sip:{self.room}@127.0.0.1:{self.port}"

    def build(
        self,
        method: str,
        *,
        branch: str,
        cseq: int,
        cseq_method: str | None = None,
        tag: str | None = None,
        headers: tuple[str, ...] = (),
        body: bytes = b"",
        content_type: str = "application/sdp",
    ) -> bytes:
        lines = [
            f"{method} {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.udp.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag={self.from_tag}",
            f"To: <sip:{self.room}@127.0.0.1>" + (f";tag={tag}" if tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            f"Contact: <sip:caller@127.0.0.1:{self.udp.port}>",
            *headers,
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, data: bytes) -> None:
        await self.udp.send(data, self.port)

    async def expect(self, code: int, within: float = 3.0) -> bytes:
        data = await self.udp.receive(within)
        assert status(data) == code, data.decode(errors="replace")
        return data

    async def authorization(self, body: bytes = b"") -> str:
        """INVITE without credentials: 100, 401, our ACK; the ``Authorization`` header line
        answering the challenge for the next INVITE (CSeq 2)."""
        invite = self.build("INVITE", branch=new_branch(), cseq=1, body=body)
        await self.send(invite)
        await self.expect(100)
        challenge = await self.expect(401)
        await self.ack_final(invite, challenge)
        offered = header(challenge, "WWW-Authenticate") or ""
        params = parse_auth_params(offered.split("Digest", 1)[1])
        username, cnonce = self.credential["username"], secrets.token_hex(4)
        response = digest_response(
            algorithm="MD5",
            username=username,
            realm=params["realm"],
            password=self.credential["password"],
            method="INVITE",
            uri=self.uri,
            nonce=params["nonce"],
            qop="auth",
            nc="00000001",
            cnonce=cnonce,
        )
        return (
            f'Authorization: Digest username="{username}", realm="{params["realm"]}", '
            f'nonce="{params["nonce"]}", uri="{self.uri}", response="{response}", '
            f'algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}", '
            f'opaque="{params["opaque"]}"'
        )

    async def invite(self, body: bytes = b"") -> bytes:
        """Challenge, then the authenticated INVITE (sent, its 100 received): its bytes."""
        authorization = await self.authorization(body)
        invite = self.build(
            "INVITE", branch=new_branch(), cseq=2, headers=(authorization,), body=body
        )
        await self.send(invite)
        self.trying = await self.expect(100)
        return invite

    async def call(self, body: bytes = b"") -> bytes:
        """An authenticated INVITE up to its 200 (not acknowledged yet): the 200."""
        await self.invite(body)
        ok = await self.expect(200, within=5.0)
        self.remote_tag = to_tag(ok)
        return ok

    async def ack(self, body: bytes = b"") -> None:
        """The ACK of the 200 (a transaction of its own), with an SDP answer if given."""
        await self.send(
            self.build("ACK", branch=new_branch(), cseq=2, tag=self.remote_tag, body=body)
        )

    async def ack_final(self, invite: bytes, final: bytes) -> None:
        """The ACK of a final response other than 2xx: in the INVITE's transaction (its
        branch and CSeq number), with the response's To tag."""
        cseq = int((header(invite, "CSeq") or "0").split()[0])
        await self.send(
            self.build(
                "ACK", branch=branch_of(invite), cseq=cseq, cseq_method="ACK", tag=to_tag(final)
            )
        )

    async def bye(self, cseq: int = 3) -> bytes:
        await self.send(self.build("BYE", branch=new_branch(), cseq=cseq, tag=self.remote_tag))
        return await self.expect(200)


# --------------------------------------------------------------------------- RTP by hand


def rtp_packet(payload_type: int, sequence: int, ssrc: int, payload: bytes) -> bytes:
    """One RTP packet of 20 ms (160 samples a packet)."""
    header = struct.pack(
        "!BBHII", 0x80, payload_type, sequence & 0xFFFF, (sequence * 160) & 0xFFFFFFFF, ssrc
    )
    return header + payload


async def exchange_rtp(
    rtp: UdpPeer, port: int, payload_type: int, seconds: float
) -> list[tuple[int, bytes]]:
    """Send a 440 Hz tone as G.711 (``payload_type`` 0 or 8) to 127.0.0.1:``port`` from
    ``rtp``, paced at 20 ms, for ``seconds``; what arrived meanwhile: (payload type,
    payload) of each packet."""
    codec = PCMU if payload_type == 0 else PCMA
    tone, ssrc = ToneGenerator(CALLER_HZ, 8000, 0.5), secrets.randbits(32)
    received: list[tuple[int, bytes]] = []
    loop = asyncio.get_running_loop()

    async def receive() -> None:
        while True:
            data, _ = await loop.sock_recvfrom(rtp.socket, 2048)
            if len(data) > 12 and data[0] >> 6 == 2:
                skip = 12 + 4 * (data[0] & 0x0F)
                received.append((data[1] & 0x7F, data[skip:]))

    receiving = asyncio.create_task(receive())
    try:
        deadline = time.monotonic()
        for sequence in range(int(seconds / 0.02)):
            payload = codec.encode(tone.next_frame(160))
            await rtp.send(rtp_packet(payload_type, sequence, ssrc, payload), port)
            deadline += 0.02
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
    return received


# --------------------------------------------------------------------------- SIPp


def ulaw_wav(path: Path, frequency: float, seconds: float) -> Path:
    """A G.711 u-law WAV (format 7, 8 kHz mono, 8 bit) of a half-scale tone, what SIPp's
    ``rtp_stream`` plays."""
    data = PCMU.encode(ToneGenerator(frequency, 8000, 0.5).next_frame(int(seconds * 8000)))
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(chunks)) + chunks)
    return path


def sipp_command(scenario: Path, port: int, folder: Path, transport: str) -> list[str]:
    """SIPp running one call of ``scenario`` against 127.0.0.1:``port`` (its files in
    ``folder``, made here)."""
    binary = shutil.which("sipp")
    if binary is None:
        require_or_skip("sipp (Debian sip-tester) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "-sf",
        str(scenario),
        "-m",
        "1",
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-timeout",
        "15",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
    ]


def sipp_errors(folder: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in folder.glob("*_errors.log"))


async def sipp(
    scenario: Path, port: int, folder: Path, *args: str, transport: str = "u1"
) -> tuple[int, str]:
    """Run one call of a SIPp scenario against 127.0.0.1:``port`` (in ``folder``; killed
    after 20 s, as a failing SIPp can hang): its exit code (0: the call passed), and its output
    with its error log."""
    command = sipp_command(scenario, port, folder, transport)
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        f"127.0.0.1:{port}",
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TERM": "dumb"},
    )
    try:
        async with asyncio.timeout(20):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("sipp hung") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")[-3000:] + sipp_errors(folder)[-3000:]


# --------------------------------------------------------------------------- 1. SIPp call


async def test_sipp_authenticated_call_with_a_tone(sip: Sip, tmp_path: Path) -> None:
    """SIPp over UDP: INVITE (PCMU, telephone-event) → 401 → ACK → INVITE with digest → 200 →
    ACK → 2 s of a 440 Hz tone as RTP → BYE → 200 passes (exit 0); a participant of the room
    named by the Request-URI hears the tone; the call is recorded ended ``caller-hangup`` with
    provider ``sip``, that room, the From user as caller and the RTP counted in."""
    folder = tmp_path / "sipp"
    folder.mkdir()
    ulaw_wav(folder / "tone.wav", CALLER_HZ, 2.0)
    async with tone_participant(sip.room_url("sipp-room")) as participant:
        started = time.monotonic()
        code, output = await sipp(
            SCENARIOS / "uac_auth_call.xml",
            sip.port,
            folder,
            "-s",
            "sipp-room",
            "-au",
            sip.credential["username"],
            "-ap",
            sip.credential["password"],
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_port()),
        )
        assert code == 0, output
        joined = await participant.wait_for("participant-joined")
        left = await participant.wait_for("participant-left")
        participant.heard.assert_tone_since(started, CALLER_HZ, min_seconds=1.2)
    assert left["participantId"] == joined["participantId"]
    row = await sip.ended()
    assert (row["provider"], row["status"], row["endReason"]) == ("sip", "ended", "caller-hangup")
    assert (row["roomId"], row["from"], row["to"]) == ("sipp-room", "sipp", "sipp-room")
    assert (row["connectorId"], row["answeredAt"] is not None) == (sip.credential["id"], True)
    assert row["media"]["rtp_packets_in"] >= 80, row["media"]


# --------------------------------------------------------------------------- trunks by address


async def test_a_trunk_that_authenticates_by_address_calls_in_unchallenged(
    sip: Sip, udp: UdpPeer
) -> None:
    """A carrier that never answers a digest challenge: with a credential that authenticates
    by source for its address (127.0.0.1/32, beside a wider 127.0.0.0/16 one), its INVITE
    without Authorization gets 100 and 200 (no 401), the call is the narrower credential's and
    ends normally. A REGISTER from there is still challenged (source auth is for calls only)."""
    wide = sip_credential(sip.server, authenticateBy="source", allowedNetworks=["127.0.0.0/16"])
    trunk = sip_credential(sip.server, authenticateBy="source", allowedNetworks=["127.0.0.1/32"])
    assert wide["authenticateBy"] == trunk["authenticateBy"] == "source"
    uac = Uac(udp, sip.port, "by-address", sip.credential)
    await uac.send(uac.build("INVITE", branch=new_branch(), cseq=1, body=sdp(free_port())))
    await uac.expect(100)
    ok = await uac.expect(200, within=5.0)
    uac.remote_tag = to_tag(ok)
    await uac.send(uac.build("ACK", branch=new_branch(), cseq=1, tag=uac.remote_tag))
    await uac.send(uac.build("BYE", branch=new_branch(), cseq=2, tag=uac.remote_tag))
    await uac.expect(200)
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")
    assert row["connectorId"] == trunk["id"], "the narrowest network's credential"

    register = Uac(udp, sip.port, "by-address", sip.credential)
    await register.send(register.build("REGISTER", branch=new_branch(), cseq=1))
    await register.expect(401)


async def test_an_address_two_trunks_claim_equally_is_refused_and_others_are_challenged(
    sip: Sip, udp: UdpPeer
) -> None:
    """Two credentials authenticating 127.0.0.1/32 by source (whose call would it be?): an
    INVITE without Authorization from there is refused 403 with a Reason, never challenged.
    Without any source credential for an address, an INVITE is challenged as always."""
    far = sip_credential(sip.server, authenticateBy="source", allowedNetworks=["10.9.0.0/16"])
    assert far["authenticateBy"] == "source"
    uac = Uac(udp, sip.port, "not-by-address", sip.credential)
    invite = uac.build("INVITE", branch=new_branch(), cseq=1, body=sdp(free_port()))
    await uac.send(invite)
    await uac.expect(100)
    challenge = await uac.expect(401)
    await uac.ack_final(invite, challenge)

    for _ in range(2):
        sip_credential(sip.server, authenticateBy="source", allowedNetworks=["127.0.0.1/32"])
    tied = Uac(udp, sip.port, "tied", sip.credential)
    invite = tied.build("INVITE", branch=new_branch(), cseq=1, body=sdp(free_port()))
    await tied.send(invite)
    await tied.expect(100)
    refused = await tied.expect(403)
    assert "several credentials" in (header(refused, "Reason") or "")
    await tied.ack_final(invite, refused)
    assert await udp.quiet(0.3)
    assert await sip.calls() == []


# --------------------------------------------------------------------------- 2. retransmissions


async def test_a_retransmitted_invite_is_one_call_with_one_answer(
    sip: Sip, udp: UdpPeer, held_joins: JoinGate
) -> None:
    """The authenticated INVITE sent again (same branch) while its room join is under way gets
    the same 100 Trying again, and sent again after the answer gets the same 200 OK (same To
    tag); the endpoint counts both as retransmissions and there is exactly one call."""
    uac = Uac(udp, sip.port, "retransmitted", sip.credential)
    invite = await uac.invite(sdp(free_port()))
    await held_joins.wait_entered()
    await uac.send(invite)
    assert await uac.expect(100) == uac.trying, "the same provisional answer again"
    assert await udp.quiet(0.2), "and nothing else: no second call's answer"
    held_joins.opened.set()
    ok = await uac.expect(200)
    uac.remote_tag = to_tag(ok)
    await uac.send(invite)
    assert await uac.expect(200, within=0.3) == ok, "the same 200 OK, not a second call"
    await uac.ack()
    assert await udp.quiet(0.8), "the ACK ends the 200's retransmissions"
    assert sip.counters.retransmissions == 2
    await uac.bye()
    row = await sip.ended()
    assert len(await sip.calls()) == 1
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")


async def test_the_200_is_retransmitted_until_its_ack(sip: Sip, udp: UdpPeer) -> None:
    """A caller that withholds the ACK gets the 200 OK again after T1 (0.5 s), then after 2·T1
    (1 s): byte for byte the same; once the ACK arrives no more come (the next was due 2 s
    later), and the call goes on until the BYE."""
    uac = Uac(udp, sip.port, "no-ack-yet", sip.credential)
    ok = await uac.call(sdp(free_port()))
    first = time.monotonic()
    arrivals = []
    for _ in range(2):
        assert await uac.expect(200, within=1.5) == ok
        arrivals.append(time.monotonic() - first)
    await uac.ack()
    gaps = [arrivals[0], arrivals[1] - arrivals[0]]
    assert 0.35 <= gaps[0] <= 0.8 and 0.8 <= gaps[1] <= 1.4, gaps
    assert await udp.quiet(2.4), "no retransmission after the ACK"
    await uac.bye()
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")


# --------------------------------------------------------------------------- key presses in INFO


async def test_key_presses_sent_as_info_reach_the_room_and_other_infos_are_refused(
    sip: Sip, udp: UdpPeer
) -> None:
    """A trunk that sends its DTMF as SIP INFO: ``application/dtmf-relay`` (a keypad
    character or its event code) and ``application/dtmf`` bodies are answered 200 and each
    reaches the room as ``dtmf``; an Info Package is refused 469 (empty Recv-Info), another
    body type 415 (with Accept), a body naming no digit 400: none of those reaches the room.
    The call's media counts the three presses."""
    async with tone_participant(sip.room_url("info-keys")) as participant:
        uac = Uac(udp, sip.port, "info-keys", sip.credential)
        await uac.call(sdp(free_port()))
        await uac.ack()
        await participant.wait_for("participant-joined")
        cseq = 2

        async def info(content_type: str, body: bytes, *extra: str) -> bytes:
            nonlocal cseq
            cseq += 1
            request = uac.build(
                "INFO",
                branch=new_branch(),
                cseq=cseq,
                tag=uac.remote_tag,
                headers=extra,
                body=body,
                content_type=content_type,
            )
            await uac.send(request)
            return await udp.receive()

        taken = [
            await info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            await info("application/dtmf-relay", b"Signal=11\r\nDuration=160\r\n"),
            await info("application/dtmf", b"9"),
        ]
        assert [status(answer) for answer in taken] == [200, 200, 200]
        package = await info("application/dtmf-relay", b"Signal=1\r\n", "Info-Package: dtmf")
        assert status(package) == 469 and header(package, "Recv-Info") == ""
        other = await info("application/media_control+xml", b"<media_control/>")
        assert status(other) == 415
        assert header(other, "Accept") == "application/dtmf-relay, application/dtmf"
        no_digit = await info("application/dtmf-relay", b"Duration=160\r\n")
        assert status(no_digit) == 400 and "no keypad digit" in (header(no_digit, "Reason") or "")
        async with asyncio.timeout(5):
            while len([e for e in participant.events if e.get("event") == "dtmf"]) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # nothing more follows
        digits = [e["digit"] for e in participant.events if e.get("event") == "dtmf"]
        assert digits == ["5", "#", "9"]
        await uac.bye(cseq=cseq + 1)
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")
    assert row["media"]["dtmf"] == 3, row["media"]


# --------------------------------------------------------------------------- 3. CANCEL


async def cancel(uac: Uac, invite: bytes) -> tuple[bytes, bytes]:
    """CANCEL ``invite`` (its Via, From, To, Call-ID and CSeq number): the answers to the
    CANCEL and to the INVITE, in that order."""
    cseq = int((header(invite, "CSeq") or "0").split()[0])
    await uac.send(uac.build("CANCEL", branch=branch_of(invite), cseq=cseq))
    answers = [await uac.udp.receive(), await uac.udp.receive()]
    answers.sort(key=lambda data: "CANCEL" not in (header(data, "CSeq") or ""))
    return answers[0], answers[1]


async def test_cancel_before_the_answer(sip: Sip, udp: UdpPeer, held_joins: JoinGate) -> None:
    """A CANCEL while the room join holds the answer back gets 200 and the INVITE 487
    (retransmitted until its ACK, then quiet); no 200 OK follows when the join completes, and
    the call ends ``cancelled``, never answered."""
    uac = Uac(udp, sip.port, "cancelled", sip.credential)
    invite = await uac.invite(sdp(free_port()))
    await held_joins.wait_entered()
    assert [row["status"] for row in await sip.calls()] == ["routed"]
    cancelled, terminated = await cancel(uac, invite)
    assert (status(cancelled), header(cancelled, "CSeq")) == (200, "2 CANCEL")
    assert (status(terminated), header(terminated, "CSeq")) == (487, "2 INVITE")
    assert await uac.expect(487, within=0.8) == terminated, "retransmitted until the ACK"
    await uac.ack_final(invite, terminated)
    held_joins.opened.set()
    assert await udp.quiet(1.2), "the ACK stops the 487; no 200 OK after the join"
    row = await sip.ended()
    assert (row["status"], row["endReason"], row["answeredAt"]) == ("ended", "cancelled", None)


async def test_a_cancel_right_behind_its_invite(sip: Sip, udp: UdpPeer) -> None:
    """The authenticated INVITE and its CANCEL sent back to back (the CANCEL arrives while
    the INVITE is still being authenticated and routed): the CANCEL gets 200 and the INVITE
    487, and no call is answered."""
    uac = Uac(udp, sip.port, "cancelled-early", sip.credential)
    authorization = await uac.authorization(sdp(free_port()))
    branch = new_branch()
    invite = uac.build(
        "INVITE", branch=branch, cseq=2, headers=(authorization,), body=sdp(free_port())
    )
    await uac.send(invite)
    await uac.send(uac.build("CANCEL", branch=branch, cseq=2))
    answers = [await udp.receive() for _ in range(3)]
    codes = sorted((status(data), header(data, "CSeq")) for data in answers)
    assert codes == [(100, "2 INVITE"), (200, "2 CANCEL"), (487, "2 INVITE")], codes
    row = await sip.ended()
    assert (row["endReason"], row["answeredAt"]) == ("cancelled", None)


# --------------------------------------------------------------------------- 4. late offer


async def test_a_late_offer_is_answered_in_the_ack(sip: Sip, udp: UdpPeer) -> None:
    """An INVITE without SDP gets a 200 OK carrying our offer (PCMU, PCMA, telephone-event
    at 127.0.0.1); the ACK's answer picks PCMA; then the call is in its room: our PCMA 440 Hz
    reaches a participant, and its 1000 Hz comes back to us as PCMA (payload type 8 only);
    BYE → 200, and the call is recorded answered, ended ``caller-hangup``, with its RTP."""
    rtp = UdpPeer()
    try:
        async with tone_participant(sip.room_url("late-offer")) as participant:
            uac = Uac(udp, sip.port, "late-offer", sip.credential)
            ok = await uac.call()
            offer = body_of(ok)
            assert header(ok, "Content-Type") == "application/sdp"
            media = re.search(r"^m=audio ([0-9]+) RTP/AVP ([0-9 ]+)\r$", offer, re.M)
            assert media is not None and media.group(2).split() == ["0", "8", "101"], offer
            for line in (
                "c=IN IP4 127.0.0.1",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
            ):
                assert line in offer.splitlines(), (line, offer)
            await uac.ack(sdp(rtp.port, "8 101", codec="PCMA"))
            joined = await participant.wait_for("participant-joined")
            started = time.monotonic()
            heard = await exchange_rtp(rtp, int(media.group(1)), 8, seconds=2.0)
            participant.heard.assert_tone_since(started, CALLER_HZ, min_seconds=1.2)
            assert heard and {kind for kind, _ in heard} == {8}, "PCMA, as the answer said"
            pcm = np.concatenate([PCMA.decode(payload) for _, payload in heard])
            assert_tone(pcm, 8000, ROOM_HZ, min_seconds=1.0)
            await uac.bye()
            left = await participant.wait_for("participant-left")
    finally:
        rtp.socket.close()
    assert left["participantId"] == joined["participantId"]
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")
    assert row["answeredAt"] is not None
    assert row["media"]["rtp_packets_in"] >= 90 and row["media"]["rtp_packets_out"] >= 50, row


# --------------------------------------------------------------------------- 5. OPTIONS over TCP


async def test_sipp_options_keepalive_over_tcp(sip: Sip, tmp_path: Path) -> None:
    """SIPp's OPTIONS over TCP gets 200 whose Allow names INVITE, ACK, CANCEL, BYE and
    OPTIONS (the scenario checks each); the same scenario asking for SUBSCRIBE fails, so the
    checks do bite."""
    code, output = await sipp(
        SCENARIOS / "options_allow.xml", sip.port, tmp_path / "ok", "-s", "room1", transport="t1"
    )
    assert code == 0, output
    assert sip.counters.requests == 1
    strict = tmp_path / "subscribe.xml"
    strict.write_text(
        (SCENARIOS / "options_allow.xml")
        .read_text(encoding="utf-8")
        .replace('regexp="OPTIONS"', 'regexp="SUBSCRIBE"'),
        encoding="utf-8",
    )
    code, output = await sipp(strict, sip.port, tmp_path / "strict", transport="t1")
    assert code != 0, output


# --------------------------------------------------------------------------- 6. malformed input


def options(port: int, local_port: int, transport: str = "UDP") -> bytes:
    return request("OPTIONS", port, local_port=local_port, transport=transport)


TORTURE = (
    "OPTIONS sip:room1@127.0.0.1:{port};unknownparam SIP/2.0\r\n"
    "Via: SIP  /   2.0\r\n /UDP\r\n    127.0.0.1:{local};branch={branch};rport\r\n"
    "TO:\r\n <sip:room1@127.0.0.1>\r\n"
    'from: "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n'
    "MaX-fOrWaRdS: 0068\r\n"
    "i: wsinv.{call_id}@192.0.2.1\r\n"
    "cseq: 0009\r\n  OPTIONS\r\n"
    "s:\r\n"
    "NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    "l: 0\r\n\r\n"
)
"""Folding everywhere, odd case, compact forms, LWS in Via and around a tag's ``=`` (after
RFC 4475 §3.1.1.1 "wsinv", addressed to us): a valid request."""


async def test_malformed_input_is_refused_or_ignored_and_calls_still_work(
    sip: Sip, udp: UdpPeer
) -> None:
    """Garbage, NUL bytes, a request without Call-ID and cut-off header blocks over UDP are
    ignored (or answered 400) and counted malformed; over TCP an over-long header block (over
    64 KiB, more than a UDP datagram can carry) and a Content-Length that is no number close
    that connection only. A valid torture request (folding, compact
    forms, LWS) gets 200. Then OPTIONS still gets 200 over UDP and TCP, and an authenticated
    call still works."""
    port = sip.port
    no_call_id = re.sub(rb"Call-ID: [^\r]+\r\n", b"", options(port, udp.port))
    hostile = {
        "garbage": b"\x16\x03\x01\x00\xa5" + bytes(range(256)) * 4,
        "no Call-ID": no_call_id,
        "no end of headers": options(port, udp.port).split(b"\r\n\r\n")[0],
        "cut in a header": options(port, udp.port)[:70],
        "NUL bytes": b"\x00" * 1000,
    }
    for name, data in hostile.items():
        await udp.send(data, port)
        with contextlib.suppress(TimeoutError):
            answer = await udp.receive(0.25)
            assert status(answer) == 400, (name, answer)
    assert sip.counters.malformed == len(hostile)
    assert sip.counters.requests == 0, "none of them was taken for a request"

    bystander_reader, bystander = await asyncio.open_connection("127.0.0.1", port)
    streams = {
        "over-long": b"OPTIONS sip:room1@127.0.0.1 SIP/2.0\r\nX-Long: " + b"a" * 70000,
        "bad Content-Length": options(port, 5999, "TCP").replace(
            b"Content-Length: 0", b"Content-Length: banana"
        ),
    }
    for name, data in streams.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        try:
            async with asyncio.timeout(3):
                answer = await reader.read(65536)
        except ConnectionResetError:  # closed with our bytes unread
            answer = b""
        writer.close()
        assert answer == b"" or status(answer) == 400, (name, answer)
    assert sip.counters.malformed == len(hostile) + len(streams)

    call_id = secrets.token_hex(6)
    torture = TORTURE.format(port=port, local=udp.port, branch=new_branch(), call_id=call_id)
    await udp.send(torture.encode(), port)
    answer = await udp.receive()
    assert status(answer) == 200 and header(answer, "Call-ID") == f"wsinv.{call_id}@192.0.2.1"

    await udp.send(options(port, udp.port), port)
    assert status(await udp.receive()) == 200, "UDP still served"
    bystander.write(options(port, 5999, "TCP"))
    await bystander.drain()
    async with asyncio.timeout(3):
        assert status(await bystander_reader.read(65536)) == 200, "other connections unharmed"
    bystander.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(options(port, 5999, "TCP"))
    await writer.drain()
    async with asyncio.timeout(3):
        assert status(await reader.read(65536)) == 200, "new connections served"
    writer.close()

    uac = Uac(udp, port, "after-the-storm", sip.credential)
    await uac.call(sdp(free_port()))
    await uac.ack()
    await uac.bye()
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")


async def test_a_datagram_holds_the_body_its_content_length_declares(
    sip: Sip, udp: UdpPeer
) -> None:
    """RFC 3261 §18.3 over UDP: a request whose datagram ends before its Content-Length is
    answered 400 (with a Reason), such a response is dropped, both counted malformed; bytes
    past the declared length are no part of the body: an INVITE whose SDP is followed by junk
    in its datagram is answered 200 as if the junk were not there."""
    port = sip.port
    short = options(port, udp.port).replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: 40\r\n\r\nabcd"
    )
    await udp.send(short, port)
    answer = await udp.receive()
    assert status(answer) == 400 and "Content-Length" in (header(answer, "Reason") or ""), answer
    cut_response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKcut\r\n"
        b"Call-ID: cut\r\nCSeq: 1 OPTIONS\r\nContent-Length: 40\r\n\r\nabcd"
    )
    await udp.send(cut_response, port)
    assert await udp.quiet(0.3), "a response is never answered"
    assert sip.counters.malformed == 2

    uac = Uac(udp, port, "junk-after-the-body", sip.credential)
    offer = sdp(free_port())
    authorization = await uac.authorization(offer)
    invite = uac.build("INVITE", branch=new_branch(), cseq=2, headers=(authorization,), body=offer)
    await uac.send(invite + b"\x00\xffnot SDP at all\r\nm=video 9 RTP/AVP 96\r\n")
    await uac.expect(100)
    ok = await uac.expect(200, within=5.0)
    assert "m=audio" in body_of(ok)
    uac.remote_tag = to_tag(ok)
    await uac.ack()
    await uac.bye()
    row = await sip.ended()
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")


async def test_whitespace_before_a_header_colon_is_accepted(sip: Sip, udp: UdpPeer) -> None:
    """``Via  :``, ``TO :``, ``Content-Length   :`` (RFC 3261 §7.3.1: HCOLON allows spaces
    and tabs before the colon; RFC 4475 §3.1.1.1) is a valid request: OPTIONS → 200."""
    torture = TORTURE.format(
        port=sip.port, local=udp.port, branch=new_branch(), call_id=secrets.token_hex(6)
    )
    spaced = torture.replace("Via:", "Via  :").replace("TO:", "TO :").replace("l: 0", "l   : 0")
    await udp.send(spaced.encode(), sip.port)
    assert status(await udp.receive(0.5)) == 200


async def test_tcp_framing_with_content_length_before_other_headers(sip: Sip) -> None:
    """Over TCP, a request whose Content-Length is followed by other headers (any order is
    valid; Kamailio's uac_auth appends Authorization last) is framed and answered 200."""
    data = options(sip.port, 5999, "TCP").replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: 0\r\nSubject: after it\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sip.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(3):
            answer = await reader.read(65536)
    finally:
        writer.close()
    assert answer.startswith(b"SIP/2.0 200 "), answer


# --------------------------------------------------------------------------- 7. a trunk proxy


Seen = list[tuple[str, tuple[str, int], bytes]]


def tap(sip: Sip, monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Everything the SIP endpoint receives from now on: (transport, source, bytes)."""
    endpoint = sip.server.app.state.sip.endpoint
    real = endpoint._received
    seen: Seen = []

    def received(data: bytes, source: tuple[str, int], transport: str, *rest: Any) -> None:
        seen.append((transport, source, data))
        real(data, source, transport, *rest)

    monkeypatch.setattr(endpoint, "_received", received)
    return seen


async def established(phone: Baresip, sip: Sip) -> None:
    """Wait for baresip's ``CALL_ESTABLISHED``; fail at once if the server dropped a message
    as malformed meanwhile."""
    async with asyncio.timeout(8):
        while not any(event.get("type") == "CALL_ESTABLISHED" for event in phone.events):
            assert sip.counters.malformed == 0, "the server dropped a message as malformed"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_call_through_a_trunk_proxy_that_answers_our_challenge(
    sip: Sip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """baresip calls the room through Kamailio, which answers our 401 with the credential
    itself and Record-Routes: the server sees the same Call-ID again with Authorization, a
    new branch and both Vias, and makes one call of it; baresip's 440 Hz reaches a room
    participant and the participant's 1000 Hz reaches baresip; the participant hangs up and
    our BYE goes back through Kamailio (its answer comes from where the INVITE came from) to
    baresip, which sees the call closed by the remote; the call ends ``room-hangup``."""
    seen = tap(sip, monkeypatch)
    username, realm = sip.credential["username"], sip.server.runtime.settings.sip.domain
    tone = tone_wav(tmp_path / "tone.wav", CALLER_HZ, 10)
    async with (
        kamailio(
            tmp_path / "kamailio",
            target_port=sip.port,
            username=username,
            password=sip.credential["password"],
            realm=realm,
        ) as proxy,
        tone_participant(sip.room_url("trunk-room")) as participant,
        baresip(tmp_path / "phone", user="carrier", password="unused", source=tone) as phone,
    ):
        reply = await phone.command(
            "dial", f"sip:trunk-room@127.0.0.1:{proxy.port};transport={transport}"
        )
        assert reply["ok"], reply
        await established(phone, sip)
        joined = await participant.wait_for("participant-joined")
        started = time.monotonic()
        await asyncio.sleep(2.0)
        participant.heard.assert_tone_since(started + 0.3, CALLER_HZ, min_seconds=1.2)
        await participant.send({"event": "hangup", "callId": joined["participantId"]})
        closed = await phone.wait_event("CALL_CLOSED")
    assert closed["param"] == "Connection reset by peer", "baresip's words for a BYE it got"
    assert_heard(phone.recordings()[-1], ROOM_HZ, rate=8000, min_seconds=1.2)

    invites = [(source, data) for _, source, data in seen if data.startswith(b"INVITE ")]
    assert len(invites) == 2, [data[:300] for _, data in invites]
    (_, challenged), (relay, authorized) = invites
    assert header(challenged, "Call-ID") == header(authorized, "Call-ID")
    assert header(challenged, "Authorization") is None
    assert f'username="{username}"' in (header(authorized, "Authorization") or "")
    assert branch_of(challenged) != branch_of(authorized)
    assert len(headers(authorized, "Via")) == 2, "Kamailio's Via on top of baresip's"
    assert f"127.0.0.1:{proxy.port}" in (header(authorized, "Record-Route") or "")
    if transport == "udp":
        assert relay == ("127.0.0.1", proxy.port)
    bye_answers = [
        source
        for _, source, data in seen
        if data.startswith(b"SIP/2.0 200") and (header(data, "CSeq") or "").endswith(" BYE")
    ]
    assert bye_answers == [relay], "our BYE was answered through Kamailio"

    row = await sip.ended()
    assert len(await sip.calls()) == 1, "one call of the challenged INVITE and its retry"
    assert (row["status"], row["endReason"]) == ("ended", "room-hangup")
    assert row["roomId"] == "trunk-room"
    assert row["providerCallId"].startswith(f"{header(authorized, 'Call-ID')};")
    assert (row["from"], row["connectorId"]) == ("carrier", sip.credential["id"])
