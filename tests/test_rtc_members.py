"""WebRTC room members over the ``/rtc`` signalling socket, with aiortc playing the browser:
tones both ways with a room participant (frequency and level), mute, hold, DTMF into the room,
custom headers in the member's metadata, and refusals."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.live_calls import ROOM_HZ, tone_participant
from tests.rtc_client import rtc_member
from tests.servers import InProcessServer, running_in_process

pytestmark = pytest.mark.timeout(60)

MEMBER_HZ = 700.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with running_in_process(tmp_path) as running:
        yield running


def rtc_url(server: InProcessServer, room: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/rtc"


def room_url(server: InProcessServer, room: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token()}"


async def test_a_webrtc_member_and_a_participant_hear_each_other(server: InProcessServer) -> None:
    """The member sends 700 Hz, the participant 1000 Hz: each hears the other at its level;
    the participant saw the member join with its display name and headers."""
    async with (
        tone_participant(room_url(server, "rtc-room")) as participant,
        rtc_member(
            rtc_url(server, "rtc-room"), server.token(), headers={"X-Team": "blue"}
        ) as member,
    ):
        joined = await participant.wait_for("participant-joined")
        started = time.monotonic()
        await asyncio.sleep(2.5)
        participant.heard.assert_tone_since(started + 0.5, MEMBER_HZ, min_seconds=1.5)
        member.heard.assert_tone_since(started + 0.5, ROOM_HZ, min_seconds=1.5)
        levels = [m["levels"] for m in member.messages if m.get("type") == "levels"][-1]
    assert joined["participantId"] == member.joined["participantId"]
    others = [pid for pid in levels if pid != member.joined["participantId"]]
    assert len(others) == 1 and -12 <= levels[others[0]] <= 0, levels  # the 1000 Hz at -6 dBFS
    assert -15 <= levels[member.joined["participantId"]] <= 0, levels
    assert joined["displayName"] == "Ada"
    assert joined["metadata"] == {"X-Team": "blue", "via": "webrtc"}
    assert member.joined["codec"] == "opus"


async def test_mute_hold_and_dtmf(server: InProcessServer) -> None:
    """Muted, the member's tone no longer reaches the room (announced); unmuted it does
    again; on hold it hears silence; its digits reach the room as ``dtmf``."""
    async with (
        tone_participant(room_url(server, "rtc-keys")) as participant,
        rtc_member(rtc_url(server, "rtc-keys"), server.token()) as member,
    ):
        await asyncio.sleep(1.0)
        await member.send({"type": "mute"})
        await member.wait_for("muted")
        muted_at = time.monotonic()
        await asyncio.sleep(1.0)
        muted = participant.heard.since(muted_at + 0.2)
        await member.send({"type": "unmute"})
        await member.wait_for("unmuted")
        unmuted_at = time.monotonic()
        await asyncio.sleep(1.5)
        participant.heard.assert_tone_since(unmuted_at + 0.3, MEMBER_HZ, min_seconds=1.0)
        await member.send({"type": "hold"})
        await member.wait_for("held")
        held_at = time.monotonic()
        await asyncio.sleep(1.0)
        held = member.heard.since(held_at + 0.3)
        await member.send({"type": "dtmf", "digits": "42#"})
        await asyncio.sleep(0.3)
    events = [event.get("event") for event in participant.events]
    assert "participant-muted" in events and "participant-unmuted" in events
    assert "participant-held" in events
    assert len(muted) > 8000 and float(abs(muted.astype(float)).mean()) < 50
    assert len(held) > 10000 and float(abs(held.astype(float)).mean()) < 50
    dtmf = [event for event in participant.events if event.get("event") == "dtmf"]
    assert [event.get("digits") for event in dtmf] == ["42#"]


async def test_a_bad_token_is_refused_and_messages_before_login_too(
    server: InProcessServer,
) -> None:
    """No login → 401 error; a forged token → 401 and the socket closes with 4401-free close
    after the error; nothing joined the room."""
    async with connect(rtc_url(server, "rtc-closed"), open_timeout=5) as socket:
        await socket.send(json.dumps({"type": "join"}))
        refused = json.loads(await socket.recv())
    assert (refused["type"], refused["code"]) == ("error", 401)
    async with connect(rtc_url(server, "rtc-closed"), open_timeout=5) as socket:
        await socket.send(json.dumps({"type": "login", "token": "not-a-token"}))
        refused = json.loads(await socket.recv())
        assert (refused["type"], refused["code"]) == ("error", 401)
        with pytest.raises(Exception):  # noqa: B017 - the server closes the socket
            async with asyncio.timeout(5):
                await socket.recv()


async def test_room_tokens_join_only_their_room_and_never_the_api(
    server: InProcessServer,
) -> None:
    """A room token from ``POST /v2/rooms/{roomId}/tokens`` joins its room over WebRTC; it is
    refused (403) for another room, on the REST API and on the event socket; an API token
    may not be minted for a bad room id."""
    headers = {"Authorization": f"Bearer {server.token()}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        minted = await client.post("/v2/rooms/desk-7/tokens", json={"ttlSeconds": 600})
        assert minted.status_code == 201, minted.text
        bad = await client.post("/v2/rooms/not%20a%20room/tokens", json={})
        assert bad.status_code == 400, bad.text
    data = minted.json()["data"]
    assert (data["roomId"], data["permissions"]) == ("desk-7", ["allow_join"])
    room_token = data["token"]
    async with rtc_member(rtc_url(server, "desk-7"), room_token) as member:
        assert member.joined["roomId"] == "desk-7"
    async with connect(rtc_url(server, "desk-8"), open_timeout=5) as socket:
        await socket.send(json.dumps({"type": "login", "token": room_token}))
        refused = json.loads(await socket.recv())
    assert (refused["type"], refused["code"]) == ("error", 403)
    async with httpx.AsyncClient(base_url=server.url) as client:
        api = await client.get("/v2/calls", headers={"Authorization": f"Bearer {room_token}"})
    assert api.status_code == 403, api.text
    for refused_url in (
        room_url_with(server, "desk-8", room_token),
        f"ws://127.0.0.1:{server.port}/v2/ws?token={room_token}",
    ):
        with pytest.raises(InvalidStatus) as rejected:
            async with connect(refused_url, open_timeout=5):
                pass
        assert rejected.value.response.status_code == 403


def room_url_with(server: InProcessServer, room: str, token: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={token}"


def test_the_token_command_mints_room_tokens(tmp_path: Path) -> None:
    """``callbridge token --room R --ttl 1h`` prints a token with only ``allow_join``, the
    room, and an hour of life, which the server takes for that room; a bad room id or
    duration is refused."""
    import subprocess

    import jwt

    from tests.servers import cli_command, start_process

    server = start_process(tmp_path)
    try:
        config = str(server.config_path)
        made = subprocess.run(
            cli_command("token", "--config", config, "--room", "demo", "--ttl", "1h"),
            check=True,
            capture_output=True,
            text=True,
        )
        claims = jwt.decode(made.stdout.strip(), options={"verify_signature": False})
        assert (claims["roomId"], claims["permissions"]) == ("demo", ["allow_join"])
        assert claims["exp"] - claims["iat"] == 3600
        for bad in (["--room", "no room"], ["--ttl", "soon"]):
            refused = subprocess.run(
                cli_command("token", "--config", config, *bad), capture_output=True, text=True
            )
            assert refused.returncode != 0 and "callbridge" in refused.stderr
    finally:
        server.stop()


async def test_a_member_whose_socket_drops_resumes_within_the_grace_period(
    tmp_path: Path,
) -> None:
    """The signalling socket closes without ``leave``: the member stays (its audio still
    reaches the room); a new socket resumes it as the same member, and the room saw no
    left/joined. A member that does not come back leaves once the grace period is over."""
    with running_in_process(tmp_path, {"rtc": {"reconnect_grace_seconds": 1.5}}) as server:
        async with (
            tone_participant(room_url(server, "rtc-resume")) as participant,
            rtc_member(rtc_url(server, "rtc-resume"), server.token()) as member,
        ):
            first = member.joined
            await member.socket.close()
            await asyncio.sleep(0.5)
            async with connect(rtc_url(server, "rtc-resume"), open_timeout=5) as socket:
                await socket.send(json.dumps({"type": "login", "token": server.token()}))
                assert json.loads(await socket.recv())["type"] == "login-ok"
                await socket.send(
                    json.dumps({"type": "resume", "resumeToken": first["resumeToken"]})
                )
                resumed = json.loads(await socket.recv())
                resumed_at = time.monotonic()
                await asyncio.sleep(2.0)  # past the grace period: resumed, it stays
                participant.heard.assert_tone_since(resumed_at, MEMBER_HZ, min_seconds=1.5)
                kinds = [event.get("event") for event in participant.events]
            await asyncio.sleep(2.0)  # this socket is lost too, and not resumed
            gone = [event.get("event") for event in participant.events]
    assert (resumed["type"], resumed["resumed"]) == ("joined", True)
    assert resumed["participantId"] == first["participantId"]
    assert resumed["resumeToken"] != first["resumeToken"]
    assert kinds.count("participant-joined") == 1 and "participant-left" not in kinds
    assert gone.count("participant-left") == 1


async def test_pcmu_preferred_saves_opus(tmp_path: Path) -> None:
    """With ``rtc.codecs: [PCMU]`` the member talks G.711 μ-law, and the tones still cross."""
    with running_in_process(tmp_path, {"rtc": {"codecs": ["PCMU"]}}) as server:
        async with (
            tone_participant(room_url(server, "rtc-g711")) as participant,
            rtc_member(rtc_url(server, "rtc-g711"), server.token()) as member,
        ):
            started = time.monotonic()
            await asyncio.sleep(2.0)
            participant.heard.assert_tone_since(started + 0.5, MEMBER_HZ, min_seconds=1.2)
            member.heard.assert_tone_since(started + 0.5, ROOM_HZ, min_seconds=1.2)
    assert member.joined["codec"] == "PCMU"
    assert member.heard.rate == 8000, "PCMU arrives at 8 kHz"


def test_host_addresses_choose_where_candidates_are_gathered() -> None:
    """``rtc.host_addresses`` replaces aioice's address finder (it has no option of its own)."""
    import aioice.ice

    from callbridge.rtc.signalling import use_host_addresses

    original = aioice.ice.get_host_addresses
    try:
        use_host_addresses([])
        assert aioice.ice.get_host_addresses is original, "nothing configured: untouched"
        use_host_addresses(["203.0.113.7"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["203.0.113.7"]
    finally:
        aioice.ice.get_host_addresses = original
