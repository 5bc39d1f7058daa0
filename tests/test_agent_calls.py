"""Twilio calls routed by rules to voice agents over the ``websocket`` room transport, end to
end over real sockets: an in-test agent server that echoes, one that speaks faster than real
time and places a mark, one that transfers the call, and one that never answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from callbridge.media.tones import ToneGenerator
from tests import twilio_wire as tw
from tests.live_calls import CALLER_HZ, ROOM_HZ, LiveCaller, tone_participant, twilio_caller
from tests.servers import InProcessServer, create_connector, free_port, running_in_process

AGENT_HZ = 700.0
AGENT_SECRET = "Bearer agent-secret-0123456789"
ECHO_LINE, FAST_LINE, TRANSFER_LINE, DEAD_LINE, DEAD_NO_FALLBACK_LINE = (
    "+15550000001",
    "+15550000002",
    "+15550000003",
    "+15550000004",
    "+15550000005",
)


class AgentServer:
    """One WebSocket server playing every agent, by path; keeps what each connection got."""

    def __init__(self) -> None:
        self.port = free_port()
        self.starts: list[dict[str, Any]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.headers: list[str | None] = []
        self._server: Server | None = None

    async def __aenter__(self) -> AgentServer:
        self._server = await serve(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def event(self, **fields: Any) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(10):
            while True:
                for at, event in self.events:
                    if fields.items() <= event.items():
                        return at, event
                await asyncio.sleep(0.01)

    async def _handle(self, socket: ServerConnection) -> None:
        assert socket.request is not None
        self.headers.append(socket.request.headers.get("Authorization"))
        path = socket.request.path.split("?")[0]
        with contextlib.suppress(Exception):
            start = json.loads(await socket.recv())
            self.starts.append(start)
            if path == "/fast":
                await self._speak_fast(socket)
            elif path == "/transfer":
                await socket.send(json.dumps({"event": "transfer", "roomId": "human-desk"}))
            async for message in socket:
                if isinstance(message, bytes):
                    if path == "/echo":
                        await socket.send(message)
                else:
                    self.events.append((time.monotonic(), json.loads(message)))

    async def _speak_fast(self, socket: ServerConnection) -> None:
        tone = ToneGenerator(AGENT_HZ, 16000, 0.5)
        speech = np.concatenate([tone.next_frame(320) for _ in range(100)]).astype("<i2")
        data = speech.tobytes()
        for offset in range(0, len(data), 4001):  # odd chunks, all at once
            await socket.send(data[offset : offset + 4001])
        await socket.send(json.dumps({"event": "mark", "name": "greeting-done"}))


def _agent(url: str, **extra: Any) -> dict[str, Any]:
    return {"plugin": "websocket", "config": {"url": url, **extra}}


def _rule(rule_id: str, to: str, room: str, transport: str) -> dict[str, Any]:
    return {
        "id": rule_id,
        "match": {"to": [to]},
        "dispatch": {"type": "room", "roomId": room},
        "transport": transport,
        "metadata": {"line": rule_id},
    }


@pytest.fixture
def agents() -> Iterator[AgentServer]:
    yield AgentServer()


@pytest.fixture
def server(tmp_path: Path, agents: AgentServer) -> Iterator[InProcessServer]:
    base = f"ws://127.0.0.1:{agents.port}"
    dead = "ws://127.0.0.1:9/never"
    overrides = {
        "rooms": {
            "enabled": [
                "local",
                "echo_agent",
                "fast_agent",
                "transfer_agent",
                "dead_agent",
                "dead_end",
            ],
            "instances": {
                "echo_agent": _agent(
                    f"{base}/echo?call={{callId}}", headers={"Authorization": AGENT_SECRET}
                ),
                "fast_agent": _agent(f"{base}/fast"),
                "transfer_agent": _agent(f"{base}/transfer"),
                "dead_agent": _agent(
                    dead,
                    reconnect_deadline_seconds=0.6,
                    connect_timeout_seconds=0.3,
                    fallback_room="voicemail",
                ),
                "dead_end": _agent(
                    dead, reconnect_deadline_seconds=0.6, connect_timeout_seconds=0.3
                ),
            },
        },
        "routing_rules": [
            _rule("echo", ECHO_LINE, "agent-echo", "echo_agent"),
            _rule("fast", FAST_LINE, "agent-fast", "fast_agent"),
            _rule("transfer", TRANSFER_LINE, "agent-transfer", "transfer_agent"),
            _rule("dead", DEAD_LINE, "agent-dead", "dead_agent"),
            _rule("dead-end", DEAD_NO_FALLBACK_LINE, "agent-dead-end", "dead_end"),
        ],
    }
    with running_in_process(tmp_path, overrides) as running:
        yield running


@contextlib.asynccontextmanager
async def call_to(server: InProcessServer, to: str) -> AsyncIterator[tuple[LiveCaller, str]]:
    """A Twilio call to ``to`` on a connector with no default room: the rules route it."""
    connector = create_connector(server.url, server.token())
    form = tw.voice_webhook_form(To=to)
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None, answer.body
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        yield caller, answer.parameters.get("callId", "")


def _room_url(server: InProcessServer, room: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={server.token()}"


def _calls(server: InProcessServer) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v2/calls", headers={"Authorization": f"Bearer {server.token()}"}
    )
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_an_echo_agent_answers_and_the_caller_hears_itself(
    server: InProcessServer, agents: AgentServer
) -> None:
    async with agents, call_to(server, ECHO_LINE) as (caller, _):
        start = time.monotonic()
        await asyncio.sleep(2.0)
        caller.heard.assert_tone_since(start + 0.5, CALLER_HZ, min_seconds=1.0)
    assert len(agents.starts) == 1
    begun = agents.starts[0]
    assert (begun["roomId"], begun["caller"], begun["callee"]) == (
        "agent-echo",
        "+14155550100",
        ECHO_LINE,
    )
    assert begun["metadata"]["line"] == "echo", "the rule's metadata reaches the agent"
    assert (begun["sampleRate"], begun["encoding"]) == (16000, "pcm_s16le")
    assert agents.headers == [AGENT_SECRET]
    call = _calls(server)[0]
    assert (call["roomId"], call["id"]) == ("agent-echo", begun["callId"])
    assert (call["routeStrategy"], call["routeRuleId"]) == ("phone_rules", "echo")
    assert call["metadata"] == {"line": "echo"}


async def test_a_fast_agent_is_paced_at_the_right_pitch_and_its_mark_follows_the_audio(
    server: InProcessServer, agents: AgentServer
) -> None:
    async with agents, call_to(server, FAST_LINE) as (caller, _):
        async with asyncio.timeout(10):
            while not any(text.get("event") == "mark" for text in caller.texts):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        index = next(i for i, text in enumerate(caller.texts) if text.get("event") == "mark")
        position = caller.text_positions[index]
        frames = caller.heard.frames[:position]
        loud = [(at, pcm) for at, pcm in frames if np.abs(pcm.astype(np.int32)).max() > 2000]
        assert len(loud) >= 95, "the two seconds of speech went out before the mark"
        assert loud[-1][0] - loud[0][0] >= 1.7, "paced at real time, not flushed at once"
        speech = np.concatenate([pcm for _, pcm in loud])
        from tests.calls import assert_tone

        assert_tone(speech, 8000, AGENT_HZ, min_seconds=1.8)
        assert caller.texts[index]["mark"]["name"] == "greeting-done"
        await caller.inject(
            json.dumps(
                {
                    "event": "mark",
                    "sequenceNumber": "999",
                    "streamSid": caller.stream_sid,
                    "mark": {"name": "greeting-done"},
                }
            )
        )
        _, echoed = await agents.event(event="mark", name="greeting-done")
    assert echoed["status"] == "played"


async def test_an_agent_transfers_the_call_to_another_room(
    server: InProcessServer, agents: AgentServer
) -> None:
    async with (
        agents,
        tone_participant(_room_url(server, "human-desk")) as human,
        call_to(server, TRANSFER_LINE) as (caller, _),
    ):
        await human.wait_for("participant-joined")
        start = time.monotonic()
        await asyncio.sleep(1.5)
        caller.heard.assert_tone_since(start, ROOM_HZ, min_seconds=1.0)
        human.heard.assert_tone_since(start, CALLER_HZ, min_seconds=1.0)
    assert len(agents.starts) == 1
    call = _calls(server)[0]
    assert call["roomId"] == "human-desk"


async def test_an_agent_that_never_answers_sends_the_call_to_the_fallback_room(
    server: InProcessServer,
) -> None:
    async with (
        tone_participant(_room_url(server, "voicemail")) as voicemail,
        call_to(server, DEAD_LINE) as (caller, _),
    ):
        joined = await voicemail.wait_for("participant-joined")
        assert joined["kind"] == "caller"
        start = time.monotonic()
        await asyncio.sleep(1.2)
        caller.heard.assert_tone_since(start, ROOM_HZ, min_seconds=0.8)
    assert _calls(server)[0]["roomId"] == "voicemail"


async def test_an_agent_that_never_answers_without_a_fallback_ends_the_call(
    server: InProcessServer,
) -> None:
    async with call_to(server, DEAD_NO_FALLBACK_LINE) as (caller, _):
        async with asyncio.timeout(10):
            await caller.closed.wait()
    async with asyncio.timeout(10):
        while (call := _calls(server)[0])["status"] not in ("ended", "failed"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (call["status"], call["endReason"]) == ("failed", "agent-unavailable")
