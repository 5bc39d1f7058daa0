"""The custom protocol over real HTTP and WebSockets (in-process server): the two-tone test at
8 and 16 kHz, DTMF, marks and clear, malformed messages, room hang-up, webhook retries and
signatures. The caller is either the reference client (the simulator) or a raw socket driven
message by message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callbridge.clients.call import CallOptions
from callbridge.media.analysis import dominant_frequency
from callbridge.media.framing import Pacer
from callbridge.media.tones import ToneGenerator
from callbridge_plugins.simulators.custom import (
    SIGNATURE_HEADER,
    sign_get,
    sign_webhook,
    simulate_custom_call,
)
from tests.calls import assert_heard, calls_of, with_tone_participant
from tests.rooms import room_url
from tests.servers import FakeClock, InProcessServer, create_connector, running_in_process

SECRET = "whsec_" + "k" * 32


@pytest.fixture
def server(tmp_path: Path, fake_clock: FakeClock) -> Iterator[InProcessServer]:
    overrides = {"providers": {"enabled": ["custom"]}}
    with running_in_process(tmp_path, overrides, clock=fake_clock) as running:
        yield running


def connector_url(server: InProcessServer, room: str, **fields: Any) -> str:
    return create_connector(
        server.url, server.token(), provider="custom", defaultRoomId=room, **fields
    ).webhook_url


async def post_json(
    url: str, document: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    body = json.dumps(document).encode()
    async with httpx.AsyncClient() as http:
        return await http.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )


async def calls(server: InProcessServer) -> list[dict[str, Any]]:
    return await asyncio.to_thread(calls_of, server)


async def ended_call(server: InProcessServer, provider_call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        rows = [row for row in await calls(server) if row["providerCallId"] == provider_call_id]
        if rows and rows[0]["status"] in ("ended", "failed"):
            return rows[0]
        assert time.monotonic() < deadline, f"call not ended: {rows}"
        await asyncio.sleep(0.05)


class Peer:
    """A raw WebSocket peer: JSON text messages queued, binary frames collected."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.texts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[bytes] = []
        self._frame = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.socket:
                if isinstance(message, bytes):
                    self.frames.append(message)
                    self._frame.set()
                else:
                    self.texts.put_nowait(json.loads(message))

    async def next_text(self, accept: Callable[[dict[str, Any]], bool] = lambda _: True) -> Any:
        """The next JSON message ``accept`` takes, skipping the others."""
        async with asyncio.timeout(5):
            while True:
                message = await self.texts.get()
                if accept(message):
                    return message

    async def wait_frames(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.frames) < count:
                self._frame.clear()
                await self._frame.wait()

    async def closed(self) -> int | None:
        await asyncio.wait_for(self._reader, 5)
        return self.socket.close_code

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))


def named(event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("event") == event


async def join(server: InProcessServer, room: str) -> Peer:
    participant = Peer(await connect(room_url(server, room), open_timeout=5))
    assert (await participant.next_text())["event"] == "joined"
    return participant


async def dial(webhook_url: str, call_id: str) -> tuple[Peer, dict[str, Any]]:
    """Post the webhook, open the socket and send ``start``: a client, message by message."""
    response = await post_json(webhook_url, {"callId": call_id, "from": "+14155550100"})
    assert response.status_code == 200, response.text
    answer = response.json()
    client = Peer(await connect(answer["socketUrl"], open_timeout=5))
    await client.send_json({"event": "start", "callId": call_id})
    return client, answer


# --------------------------------------------------------------------------- audio and DTMF


@pytest.mark.parametrize(
    ("fields", "rate"), [({}, 8000), ({"codec": "L16", "sampleRate": 16000}, 16000)]
)
async def test_two_tones_cross_the_bridge(
    server: InProcessServer, tmp_path: Path, fields: dict[str, Any], rate: int
) -> None:
    webhook_url = connector_url(server, "tones", **fields)
    participant_wav, caller_wav = tmp_path / "participant.wav", tmp_path / "caller.wav"
    options = CallOptions(
        webhook_url=webhook_url,
        provider="custom",
        tone_hz=440,
        seconds=2.5,
        dtmf="12#",
        dtmf_delay=0.5,
        record_path=str(caller_wav),
        extra_params={"callId": f"tones-{rate}"},
    )
    room, caller = await with_tone_participant(
        server, "tones", participant_wav, simulate_custom_call(options)
    )

    assert caller.outcome == "completed"
    assert room.outcome == "completed"
    assert_heard(caller_wav, 1000, rate=rate, min_seconds=1.8)
    assert_heard(participant_wav, 440, rate=16000, min_seconds=1.8)

    assert [e for e in caller.events if e["event"] == "answer"] == [
        {"event": "answer", "callId": f"tones-{rate}", "roomId": "tones", "sampleRate": rate}
    ]
    problems = [e for e in caller.events if e["event"] in {"protocol-error", "bad-frame-size"}]
    assert problems == []
    assert caller.frames_received >= 100

    digits = [e for e in room.events if e["event"] == "dtmf"]
    assert [e["digit"] for e in digits] == ["1", "2", "#"]
    joined = [e["participantId"] for e in room.events if e["event"] == "participant-joined"]
    left = [e["participantId"] for e in room.events if e["event"] == "participant-left"]
    assert joined == left == [digits[0]["callId"]], "the call joined once and its leg was freed"
    row = await ended_call(server, f"tones-{rate}")
    assert (row["status"], row["endReason"]) == ("ended", "caller-hangup")


async def test_dtmf_reaches_the_room_in_order(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "keys")
    participant = await join(server, "keys")
    client, _ = await dial(webhook_url, "keys-1")
    joined = await participant.next_text(named("participant-joined"))
    for digit in "0123456789*#ABCD":
        await client.send_json({"event": "dtmf", "digit": digit})
        await client.send_json({"event": "dtmf", "digit": "E"})  # not a key: dropped
    heard = [(await participant.next_text(named("dtmf"))) for _ in range(16)]
    assert "".join(event["digit"] for event in heard) == "0123456789*#ABCD"
    assert {event["callId"] for event in heard} == {joined["participantId"]}
    await client.send_json({"event": "stop"})
    assert await client.closed() == 1000
    await participant.next_text(named("participant-left"))
    await participant.socket.close()


# --------------------------------------------------------------------------- marks and clear


async def test_marks_and_clear_round_trip(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "marks")
    participant = await join(server, "marks")
    client, _ = await dial(webhook_url, "marks-1")
    call_id = (await participant.next_text(named("participant-joined")))["participantId"]

    await participant.send_json({"event": "mark", "name": "utt-1"})
    assert await client.next_text() == {"event": "mark", "name": "utt-1"}
    await client.send_json({"event": "mark", "name": "utt-1", "cleared": False})
    assert await participant.next_text(named("mark")) == {
        "event": "mark",
        "name": "utt-1",
        "status": "played",
        "callId": call_id,
    }

    await participant.send_json({"event": "mark", "name": "utt-2"})
    await participant.send_json({"event": "clear", "callId": call_id})
    assert await client.next_text() == {"event": "mark", "name": "utt-2"}
    assert await client.next_text() == {"event": "clear"}
    await client.send_json({"event": "mark", "name": "utt-2", "cleared": True})
    assert await participant.next_text(named("mark")) == {
        "event": "mark",
        "name": "utt-2",
        "status": "cleared",
        "callId": call_id,
    }
    await client.wait_frames(10)
    assert {len(frame) for frame in client.frames} == {320}, "whole 20 ms frames at 8 kHz"

    await client.send_json({"event": "stop"})
    await client.closed()
    await participant.socket.close()


async def test_reference_client_plays_marks_and_clears(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "marks-sim")
    participant = await join(server, "marks-sim")
    caller = asyncio.create_task(
        simulate_custom_call(CallOptions(webhook_url=webhook_url, provider="custom", seconds=2.5))
    )
    call_id = (await participant.next_text(named("participant-joined")))["participantId"]
    tone, pacer = ToneGenerator(1000, 16000, 0.5), Pacer(0.02, lead=0)

    async def talk(frames: int) -> None:
        for _ in range(frames):
            await pacer.wait()
            await participant.socket.send(tone.next_frame(320).astype("<i2").tobytes())

    await talk(25)
    await participant.send_json({"event": "mark", "name": "greeting"})
    await talk(25)
    played = await participant.next_text(named("mark"))
    await talk(10)
    await participant.send_json({"event": "mark", "name": "barged"})
    await participant.send_json({"event": "clear"})
    cleared = await participant.next_text(named("mark"))
    summary = await caller

    assert played == {"event": "mark", "name": "greeting", "status": "played", "callId": call_id}
    assert cleared == {"event": "mark", "name": "barged", "status": "cleared", "callId": call_id}
    assert summary.outcome == "completed"
    echoes = [e for e in summary.events if e["event"] == "mark"]
    assert echoes[0] == {"event": "mark", "name": "greeting", "cleared": False}
    assert [e["name"] for e in echoes] == ["greeting", "barged"]
    assert [e["event"] for e in summary.events].count("clear") == 1
    assert [e for e in summary.events if e["event"] == "protocol-error"] == []
    await participant.socket.close()


# --------------------------------------------------------------------------- robustness


async def test_malformed_and_oversized_messages_do_not_end_the_call(
    server: InProcessServer,
) -> None:
    webhook_url = connector_url(server, "junk")
    participant = await join(server, "junk")
    client, _ = await dial(webhook_url, "junk-1")
    await participant.next_text(named("participant-joined"))
    garbage: list[str | bytes] = [
        "not json",
        "[]",
        '{"event": 5}',
        '{"event": "dtmf", "digit": "55"}',
        '{"event": "mark"}',
        '{"event": "start", "callId": "again"}',
        b"\x01\x02\x03",
        "x" * 70_000,
        bytes(70_000),
    ]
    tone, pacer = ToneGenerator(440, 8000, 0.5), Pacer(0.02, lead=0)
    for tick in range(75):
        await pacer.wait()
        await client.socket.send(tone.next_frame(160).astype("<i2").tobytes())
        if tick < len(garbage):
            await client.socket.send(garbage[tick])
    await client.send_json({"event": "future-event"})
    await client.send_json({"event": "dtmf", "digit": "5"})
    assert (await participant.next_text(named("dtmf")))["digit"] == "5"

    (bridge,) = server.runtime.active_calls.values()
    assert bridge.stream.malformed == len(garbage)
    assert bridge.stream.ignored == 1
    await client.send_json({"event": "stop"})
    await participant.next_text(named("participant-left"))
    await participant.socket.close()

    audio = np.frombuffer(b"".join(participant.frames), dtype="<i2")
    assert len(audio[np.abs(audio) > 1000]) > 16000 * 0.8, "the tone kept flowing"
    assert abs(dominant_frequency(audio, 16000) - 440) <= 10
    row = await ended_call(server, "junk-1")
    assert row["endReason"] == "caller-hangup"


async def test_room_hangup_sends_stop_and_closes_the_socket(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "bye", credentials={"signingSecret": SECRET})
    participant = await join(server, "bye")
    client, _ = await dial(webhook_url, "bye-1")
    await participant.next_text(named("participant-joined"))
    await participant.send_json({"event": "hangup"})
    assert await client.next_text() == {"event": "stop", "reason": "hangup"}
    assert await client.closed() == 1000
    await participant.next_text(named("participant-left"))
    await participant.socket.close()
    row = await ended_call(server, "bye-1")
    assert (row["status"], row["endReason"]) == ("ended", "room-hangup")


# --------------------------------------------------------------------------- webhooks


async def test_webhook_retry_gets_the_same_answer_and_one_call(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "retry")
    document = {"callId": "pbx-42", "from": "+14155550100", "to": "+14155550199"}
    first = await post_json(webhook_url + "?roomId=retry-room", document)
    second = await post_json(webhook_url + "?roomId=retry-room", document)
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"].startswith("application/json")
    assert first.json() == second.json()
    assert first.json()["roomId"] == "retry-room"
    other = await post_json(webhook_url, {"callId": "pbx-43"})
    assert other.json()["socketUrl"] != first.json()["socketUrl"]
    rows = await calls(server)
    assert sorted(row["providerCallId"] for row in rows) == ["pbx-42", "pbx-43"]


async def test_bad_webhooks_are_400_naming_the_field(server: InProcessServer) -> None:
    webhook_url = connector_url(server, "bad")
    async with httpx.AsyncClient() as http:
        not_json = await http.post(
            webhook_url, content=b"{", headers={"Content-Type": "application/json"}
        )
        bare_get = await http.get(webhook_url + "?roomId=r")
    wrong_type = await post_json(webhook_url, {"callId": 42})
    in_body = await post_json(webhook_url, {"roomId": "r"})
    for response, field in [
        (not_json, "body"),
        (bare_get, "callId"),
        (wrong_type, "callId"),
        (in_body, "roomId"),
    ]:
        assert response.status_code == 400
        assert response.json()["message"].startswith(f"{field}: ")
    assert await calls(server) == []


async def test_unroutable_call_gets_a_reject_answer(server: InProcessServer) -> None:
    webhook_url = create_connector(server.url, server.token(), provider="custom").webhook_url
    response = await post_json(webhook_url, {"callId": "lost-1"})
    assert response.status_code == 200
    assert response.json() == {
        "action": "reject",
        "message": "Sorry, this call cannot be connected.",
    }
    summary = await simulate_custom_call(CallOptions(webhook_url=webhook_url, provider="custom"))
    assert summary.outcome == "rejected: Sorry, this call cannot be connected."


# --------------------------------------------------------------------------- signatures


async def test_signed_calls_are_accepted_and_bad_signatures_refused(
    server: InProcessServer,
) -> None:
    webhook_url = connector_url(
        server, "signed", credentials={"signingSecret": SECRET}, verifySignatures=True
    )

    def options(**changes: Any) -> CallOptions:
        return CallOptions(
            webhook_url=webhook_url, provider="custom", tone_hz=440, seconds=0.4, **changes
        )

    unsigned = await simulate_custom_call(options())
    wrong = await simulate_custom_call(options(credentials={"signingSecret": "whsec_wrong"}))
    assert unsigned.outcome == wrong.outcome == "webhook failed: HTTP 403"
    body = json.dumps({"callId": "forged"}).encode()
    for header in (
        sign_webhook(SECRET, body.replace(b"forged", b"other")),  # tampered body
        sign_webhook(SECRET, body, int(server.clock()) - 310),  # stale
        sign_webhook(SECRET, body, int(server.clock()) + 310),  # from the future
    ):
        async with httpx.AsyncClient() as http:
            response = await http.post(
                webhook_url,
                content=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
            )
        assert response.status_code == 403
        assert response.json()["message"].startswith("signature: ")
    assert await calls(server) == [], "no call row for a refused webhook"

    signed = await simulate_custom_call(
        options(credentials={"signingSecret": SECRET}, extra_params={"callId": "signed-post"})
    )
    by_get = await simulate_custom_call(
        options(
            credentials={"signingSecret": SECRET},
            method="GET",
            extra_params={"callId": "signed-get"},
        )
    )
    assert signed.outcome == by_get.outcome == "completed"
    for call_id in ("signed-post", "signed-get"):
        assert (await ended_call(server, call_id))["endReason"] == "caller-hangup"


async def test_badly_signed_handshake_is_refused(server: InProcessServer) -> None:
    webhook_url = connector_url(
        server, "signed", credentials={"signingSecret": SECRET}, verifySignatures=True
    )
    body = json.dumps({"callId": "hs-1"}).encode()
    async with httpx.AsyncClient() as http:
        response = await http.post(
            webhook_url,
            content=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign_webhook(SECRET, body),
            },
        )
    assert response.status_code == 200, response.text
    socket_url = response.json()["socketUrl"]
    signed_elsewhere = sign_get(SECRET, socket_url.replace("/custom/", "/custom/x"))
    with pytest.raises(InvalidStatus) as caught:
        async with connect(
            socket_url, additional_headers={SIGNATURE_HEADER: signed_elsewhere}, open_timeout=5
        ):
            pass
    assert caught.value.response.status_code == 403
    row = await ended_call(server, "hs-1")
    assert row["status"] == "failed"
    assert row["endReason"] == "signature"
    assert row["endDetail"].startswith("signature: ")
