"""SIP calls end to end: a real softphone (Debian's baresip, driven over its control socket)
dials ``sip:<roomId>@…`` with the credentials of an API key and talks with a room participant;
the tones both ways are checked for frequency and level, and the call's record, events and
hang-ups for what a provider call would have."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import twilio_wire as tw
from tests.baresip import Baresip, baresip, tone_wav
from tests.calls import assert_heard
from tests.live_calls import CALLER_HZ, ROOM_HZ, tone_participant, twilio_caller
from tests.servers import InProcessServer, create_connector, free_port, running_in_process
from tests.sip_client import SDP_OFFER, UdpUac, header_of, sip_credential, status_of

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[InProcessServer]:
    overrides = {"sip": {"enabled": True, "host": "127.0.0.1", "port": free_port()}}
    with running_in_process(tmp_path, overrides) as server:
        yield server


def softphone(
    folder: Path, credential: dict[str, Any], source: Path | None = None
) -> AbstractAsyncContextManager[Baresip]:
    """baresip with ``credential``'s username and password, ``source`` as its microphone."""
    return baresip(
        folder, user=credential["username"], password=credential["password"], source=source
    )


def sip_port(server: InProcessServer) -> int:
    return int(server.app.state.sip.endpoint.udp_port)


def room_url(server: InProcessServer, room: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token()}"


async def calls(server: InProcessServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {server.token()}"}
        )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]  # type: ignore[no-any-return]


async def ended(server: InProcessServer, within: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            rows = await calls(server)
            if rows and rows[0]["status"] in ("ended", "failed"):
                return rows[0]
            await asyncio.sleep(0.1)


async def all_ended(server: InProcessServer, count: int) -> list[dict[str, Any]]:
    """The ``count`` calls of the server, once every one is over."""
    async with asyncio.timeout(10):
        while True:
            rows = await calls(server)
            if len(rows) == count and all(row["status"] in ("ended", "failed") for row in rows):
                return rows
            await asyncio.sleep(0.1)


async def dial(phone: Baresip, server: InProcessServer, user: str, transport: str) -> None:
    reply = await phone.command(
        "dial", f"sip:{user}@127.0.0.1:{sip_port(server)};transport={transport}"
    )
    assert reply["ok"], reply
    await phone.wait_event("CALL_ESTABLISHED")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_softphone_and_a_room_participant_hear_each_other(
    sip_server: InProcessServer, tmp_path: Path, transport: str
) -> None:
    """baresip sends 440 Hz, the participant 1000 Hz: each hears the other's tone at its
    level; baresip hangs up and the call ends ``caller-hangup`` with provider ``sip`` and the
    media figures of both RTP directions."""
    server = sip_server
    credential = sip_credential(server)
    source = tone_wav(tmp_path / "tone.wav", CALLER_HZ, 10)
    async with (
        tone_participant(room_url(server, "sip-desk")) as participant,
        softphone(tmp_path / "phone", credential, source) as phone,
    ):
        await dial(phone, server, "sip-desk", transport)
        joined = await participant.wait_for("participant-joined")
        started = time.monotonic()
        await asyncio.sleep(2.5)
        participant.heard.assert_tone_since(started + 0.3, CALLER_HZ, min_seconds=1.5)
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
        left = await participant.wait_for("participant-left")
    assert left["participantId"] == joined["participantId"]
    recordings = phone.recordings()
    assert recordings, "baresip recorded what it heard"
    assert_heard(recordings[-1], ROOM_HZ, rate=8000, min_seconds=1.5)
    row = await ended(server)
    assert (row["provider"], row["status"], row["endReason"]) == ("sip", "ended", "caller-hangup")
    assert row["roomId"] == "sip-desk"
    assert (row["from"], row["to"]) == (credential["username"], "sip-desk")
    media = row["media"]
    assert media["rtp_packets_in"] > 100 and media["rtp_packets_out"] > 100, media
    assert media["frames_in"] > 100 and media["frames_out"] > 100, media


async def test_dtmf_both_ways(sip_server: InProcessServer, tmp_path: Path) -> None:
    """Keys pressed on the softphone (RFC 4733) reach the room once each, in order, and a
    participant's ``dtmf`` command reaches the softphone as telephone-events."""
    server = sip_server
    credential = sip_credential(server)
    async with (
        tone_participant(room_url(server, "sip-keys")) as participant,
        softphone(tmp_path / "phone", credential) as phone,
    ):
        await dial(phone, server, "sip-keys", "udp")
        joined = await participant.wait_for("participant-joined")
        await phone.command("sndcode", "42#")
        await asyncio.sleep(2.0)  # three presses of 180 ms each, with gaps
        await participant.send({"event": "dtmf", "digits": "7", "callId": joined["participantId"]})
        pressed = await phone.wait_event("CALL_DTMF_START")
        await asyncio.sleep(0.5)
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
    digits = [e["digit"] for e in participant.events if e.get("event") == "dtmf"]
    assert digits == ["4", "2", "#"]
    assert pressed["param"] == "7"
    received = [e["param"] for e in phone.events if e.get("type") == "CALL_DTMF_START"]
    assert received == ["7"], "one press, reported once"
    row = await ended(server)
    assert row["media"]["dtmf"] == 3 and row["media"]["dtmf_out"] == 1, row["media"]


@pytest.mark.parametrize(("who", "transport"), [("room", "udp"), ("api", "udp"), ("api", "tcp")])
async def test_a_hang_up_from_our_side_sends_bye(
    sip_server: InProcessServer, tmp_path: Path, who: str, transport: str
) -> None:
    """A participant's ``hangup`` or ``POST /v2/calls/{id}/hangup`` ends the call at the
    softphone with a BYE (baresip sees the call closed by the remote); over TCP the BYE goes
    over the connection the call came on."""
    server = sip_server
    credential = sip_credential(server)
    async with (
        tone_participant(room_url(server, "sip-bye")) as participant,
        softphone(tmp_path / "phone", credential) as phone,
    ):
        await dial(phone, server, "sip-bye", transport)
        joined = await participant.wait_for("participant-joined")
        await asyncio.sleep(0.5)
        if who == "room":
            await participant.send({"event": "hangup", "callId": joined["participantId"]})
        else:
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"{server.url}/v2/calls/{joined['participantId']}/hangup",
                    headers={"Authorization": f"Bearer {server.token()}"},
                )
            assert answer.status_code in (200, 202), answer.text
        closed = await phone.wait_event("CALL_CLOSED")
    assert closed["param"] == "Connection reset by peer", "baresip's words for a BYE it got"
    row = await ended(server)
    assert row["endReason"] == ("room-hangup" if who == "room" else "api-hangup")


async def test_hold_silences_the_leg_and_resume_brings_it_back(
    sip_server: InProcessServer, tmp_path: Path
) -> None:
    """The softphone holds (re-INVITE ``sendonly``): the room hears no more of its tone and
    the call stays up; it resumes and the tone is back, both ways."""
    server = sip_server
    credential = sip_credential(server)
    source = tone_wav(tmp_path / "tone.wav", CALLER_HZ, 15)
    async with (
        tone_participant(room_url(server, "sip-hold")) as participant,
        softphone(tmp_path / "phone", credential, source) as phone,
    ):
        await dial(phone, server, "sip-hold", "udp")
        await asyncio.sleep(1.5)
        reply = await phone.command("hold")
        assert reply["ok"], reply
        await asyncio.sleep(0.5)
        held_from = time.monotonic()
        await asyncio.sleep(1.5)
        held = participant.heard.since(held_from)
        reply = await phone.command("resume")
        assert reply["ok"], reply
        resumed = time.monotonic()
        await asyncio.sleep(2.0)
        participant.heard.assert_tone_since(resumed + 0.3, CALLER_HZ, min_seconds=1.2)
        assert not [e for e in phone.events if e.get("type") == "CALL_CLOSED"]
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
    assert len(held) > 8000, "the participant kept hearing frames (silence) while held"
    assert float(abs(held.astype(float)).mean()) < 50, "nothing of the held caller's tone"
    row = await ended(server)
    assert row["endReason"] == "caller-hangup"


async def test_a_phone_number_is_routed_by_a_rule(
    sip_server: InProcessServer, tmp_path: Path
) -> None:
    """A trunk dials a phone number (``sip:+14155550100@…``): the routing rule for that number
    sends the call to its room, recorded with the rule; explain says the same."""
    server = sip_server
    credential = sip_credential(server)
    headers = {"Authorization": f"Bearer {server.token()}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        created = await client.post(
            "/v2/routing-rules",
            json={
                "priority": 10,
                "match": {"to": ["+1 (415) 555-0100"]},
                "dispatch": {"type": "room", "roomId": "sales-floor"},
            },
        )
        assert created.status_code == 201, created.text
        rule_id = created.json()["data"]["id"]
        explained = await client.post(
            "/v2/routing/explain", json={"connectorId": credential["id"], "to": "+14155550100"}
        )
        assert explained.status_code == 200, explained.text
        decision = explained.json()["data"]["decision"]
        assert (decision["roomId"], decision["ruleId"]) == ("sales-floor", rule_id)
    source = tone_wav(tmp_path / "tone.wav", CALLER_HZ, 10)
    async with (
        tone_participant(room_url(server, "sales-floor")) as participant,
        softphone(tmp_path / "phone", credential, source) as phone,
    ):
        await dial(phone, server, "+14155550100", "udp")
        started = time.monotonic()
        await asyncio.sleep(2.0)
        participant.heard.assert_tone_since(started + 0.3, CALLER_HZ, min_seconds=1.2)
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
    row = await ended(server)
    assert (row["roomId"], row["to"]) == ("sales-floor", "+14155550100")
    assert row["routeRuleId"] == rule_id, row


async def test_a_softphone_and_a_twilio_caller_talk_in_one_room(
    sip_server: InProcessServer, tmp_path: Path
) -> None:
    """The SIP caller (700 Hz) and a caller on Twilio's media stream (440 Hz) share a room:
    each hears the other's tone, through one media clock."""
    server = sip_server
    credential = sip_credential(server)
    connector = create_connector(server.url, server.token(), defaultRoomId="mixed")
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    source = tone_wav(tmp_path / "tone.wav", 700.0, 10)
    async with (
        twilio_caller(answer.stream_url, form["CallSid"]) as caller,
        softphone(tmp_path / "phone", credential, source) as phone,
    ):
        await dial(phone, server, "mixed", "udp")
        started = time.monotonic()
        await asyncio.sleep(2.5)
        caller.heard.assert_tone_since(started + 0.3, 700.0, min_seconds=1.5)
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
    assert_heard(phone.recordings()[-1], CALLER_HZ, rate=8000, min_seconds=1.5)
    providers = sorted(row["provider"] for row in await calls(server))
    assert providers == ["sip", "twilio"]


async def test_ten_concurrent_calls(sip_server: InProcessServer, tmp_path: Path) -> None:
    """Ten softphones call ten rooms at once, each with its own participant: every room hears
    its caller's own tone (different frequencies), every caller its room's."""
    server = sip_server
    credential = sip_credential(server)
    frequencies = [400.0 + 60 * index for index in range(10)]

    async def one(index: int, frequency: float) -> None:
        room = f"desk-{index}"
        source = tone_wav(tmp_path / f"tone-{index}.wav", frequency, 10)
        async with (
            tone_participant(room_url(server, room)) as participant,
            softphone(tmp_path / f"phone-{index}", credential, source) as phone,
        ):
            await dial(phone, server, room, "udp" if index % 2 else "tcp")
            started = time.monotonic()
            await asyncio.sleep(3.0)
            participant.heard.assert_tone_since(started + 0.5, frequency, min_seconds=1.5)
            await phone.command("hangup")
            await phone.wait_event("CALL_CLOSED")
        assert_heard(phone.recordings()[-1], ROOM_HZ, rate=8000, min_seconds=1.5)

    await asyncio.gather(*(one(index, hz) for index, hz in enumerate(frequencies)))
    rows = await all_ended(server, 10)
    assert {row["endReason"] for row in rows} == {"caller-hangup"}


async def test_calls_beyond_max_calls_are_busy(tmp_path: Path) -> None:
    """With ``sip.max_calls: 1`` a second call while the first is up is answered 486 Busy Here
    with a reason, and the first call is untouched."""
    overrides = {"sip": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "max_calls": 1}}
    with running_in_process(tmp_path, overrides) as server:
        credential = sip_credential(server)
        first, second = UdpUac(), UdpUac()
        try:
            answered = await first.authenticated_invite(
                "busy-room", sip_port(server), credential["username"], credential["password"]
            )
            assert status_of(answered) == 200, answered
            busy = await second.authenticated_invite(
                "busy-room", sip_port(server), credential["username"], credential["password"]
            )
        finally:
            first.close()
            second.close()
        assert status_of(busy) == 486, busy
        assert header_of(busy, "Reason") == 'SIP;text="this server takes 1 SIP calls"'
        rows = await calls(server)
    assert [row["status"] for row in rows] == ["answered"]


async def test_a_sip_call_is_one_trace(tmp_path: Path) -> None:
    """The INVITE's ``call.invite`` span is the root of the call's trace; its ``call.media``
    span is its child with the call's attributes, and no span carries the password."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    overrides = {"sip": {"enabled": True, "host": "127.0.0.1", "port": free_port()}}
    with running_in_process(
        tmp_path, overrides, span_processors=[SimpleSpanProcessor(spans)]
    ) as server:
        credential = sip_credential(server)
        async with softphone(tmp_path / "phone", credential) as phone:
            await dial(phone, server, "traced-room", "udp")
            await asyncio.sleep(0.5)
            await phone.command("hangup")
            await phone.wait_event("CALL_CLOSED")
        row = await ended(server)
    finished = spans.get_finished_spans()
    (invite,) = [span for span in finished if span.name == "call.invite"]
    (media,) = [span for span in finished if span.name == "call.media"]
    assert invite.parent is None
    assert media.parent is not None and media.parent.span_id == invite.context.span_id
    assert media.context.trace_id == invite.context.trace_id
    attributes = dict(media.attributes or {})
    assert attributes["callbridge.provider"] == "sip"
    assert attributes["callbridge.call.id"] == row["id"]
    assert attributes["callbridge.room.id"] == "traced-room"
    assert attributes["callbridge.end_reason"] == "caller-hangup"
    everything = repr([dict(span.attributes or {}) for span in finished])
    assert credential["password"] not in everything


async def test_an_offer_without_g711_is_refused_488_with_a_warning(
    sip_server: InProcessServer,
) -> None:
    """An INVITE offering only G.729 gets 488 with a Warning naming what was offered, and no
    call is answered."""
    server = sip_server
    credential = sip_credential(server)
    g729_only = SDP_OFFER.replace("RTP/AVP 0 101", "RTP/AVP 18").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000"
    )
    phone = UdpUac(g729_only)
    try:
        refused = await phone.authenticated_invite(
            "codec-room", sip_port(server), credential["username"], credential["password"]
        )
    finally:
        phone.close()
    assert status_of(refused) == 488, refused
    warning = header_of(refused, "Warning") or ""
    assert warning.startswith("305 ") and "G729/8000" in warning, warning
    assert [row["status"] for row in await calls(server)] == []
