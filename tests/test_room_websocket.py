"""The ``websocket`` room transport against real agent servers over loopback: echo, a fast agent
paced by the media clock, agent commands, unreachable and dropped agents, one agent per room,
a backlog toward a slow agent, and config validation."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from callbridge.media.analysis import dominant_frequency, level_dbfs, trim_silence
from callbridge.media.clock import MediaClock
from callbridge.media.framing import Pacer
from callbridge.media.tones import ToneGenerator
from callbridge.plugins import build_plugin_manager
from callbridge.protocols import Participant, PluginContext, PluginError, RoomLeg, RoomTransport
from callbridge.registry import Registry
from callbridge_plugins.rooms.websocket import (
    MAX_PENDING_FRAMES,
    WebSocketRooms,
    WebSocketRoomsConfig,
    callbridge_room_transports,
)
from tests.sinks import RecordingSink

RATE = 16000
FRAME = RATE // 50
TENANT = "ak_test"
ROOM = "support"
CALL = "call_1"


# --------------------------------------------------------------------------- the agent side


Behaviour = Callable[[ServerConnection, "AgentServer"], Awaitable[None]]


class AgentServer:
    """A WebSocket server playing the agent; ``behaviour`` runs once per connection. It records
    the request paths and headers, every text message (decoded), the binary messages and the
    close codes it receives."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.texts: list[dict[str, Any]] = []
        self.binary: list[bytes] = []
        self.close_codes: list[int | None] = []
        self.connections = 0
        self._changed = asyncio.Event()

    @property
    def starts(self) -> list[dict[str, Any]]:
        return [text for text in self.texts if text.get("event") == "start"]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [text for text in self.texts if text.get("event") == name]

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        assert connection.request is not None
        self.paths.append(connection.request.path)
        self.headers.append(dict(connection.request.headers.raw_items()))
        try:
            await self.behaviour(connection, self)
        except ConnectionClosed:
            pass
        self.close_codes.append(connection.close_code)
        self.changed()

    def changed(self) -> None:
        self._changed.set()

    async def receive(self, connection: ServerConnection) -> str | bytes:
        """The next message, recorded."""
        message = await connection.recv()
        self.record(message)
        return message

    def record(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.binary.append(message)
        else:
            self.texts.append(json.loads(message))
        self.changed()

    async def listen(self, connection: ServerConnection) -> None:
        """Record everything until the socket closes."""
        async for message in connection:
            self.record(message)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(3):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def echo(connection: ServerConnection, server: AgentServer) -> None:
    async for message in connection:
        server.record(message)
        if isinstance(message, bytes):
            await connection.send(message)


async def listen(connection: ServerConnection, server: AgentServer) -> None:
    await server.listen(connection)


@pytest.fixture
async def agent_server() -> AsyncIterator[Callable[[Behaviour], Awaitable[AgentServer]]]:
    servers = []

    async def start(behaviour: Behaviour) -> AgentServer:
        agent = AgentServer(behaviour)
        running = await serve(agent._handle, "127.0.0.1", 0, compression=None)
        servers.append(running)
        port = running.sockets[0].getsockname()[1]
        agent.url = f"ws://127.0.0.1:{port}"  # type: ignore[attr-defined]
        return agent

    yield start
    for running in servers:
        running.close()
        await running.wait_closed()


# --------------------------------------------------------------------------- the room side


def make_context(tmp_path: Path, clock: MediaClock) -> PluginContext:
    return PluginContext(
        data_dir=tmp_path,
        clock=time.time,
        public_api_url="http://x",
        public_ingest_url="ws://x",
        media_clock=clock,
    )


@pytest.fixture
async def transports(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[WebSocketRooms]]]:
    """Builds ``WebSocketRooms`` from config keywords (``clock=`` a hand-driven clock, else the
    real one); closes them all at the end."""
    built: list[tuple[WebSocketRooms, MediaClock]] = []

    async def make(clock: MediaClock | None = None, **config: Any) -> WebSocketRooms:
        clock = clock or MediaClock()
        rooms = WebSocketRooms(WebSocketRoomsConfig(**config), make_context(tmp_path, clock))
        await rooms.start()
        built.append((rooms, clock))
        return rooms

    yield make
    for rooms, clock in built:
        await rooms.aclose()
        await clock.aclose()


def caller(call_id: str = CALL) -> Participant:
    return Participant(
        participant_id=call_id,
        kind="caller",
        display_name="+14155550100",
        metadata={
            "callId": call_id,
            "provider": "twilio",
            "from": "+14155550100",
            "to": "+14155550199",
        },
    )


async def join_caller(
    rooms: WebSocketRooms, call_id: str = CALL, sink: RecordingSink | None = None
) -> tuple[RoomLeg, RecordingSink]:
    sink = sink or RecordingSink()
    leg = await rooms.join(TENANT, ROOM, caller(call_id), sink)
    return leg, sink


async def agent_joined(sink: RecordingSink) -> dict[str, Any]:
    async with asyncio.timeout(3):
        while True:
            event = await sink.next_event("participant-joined")
            if event["kind"] == "agent":
                return event


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(3):
        while not condition():  # noqa: ASYNC110 - state changes in other tasks' socket reads
            await asyncio.sleep(0.005)


async def send_tone(leg: RoomLeg, hz: float, seconds: float) -> np.ndarray:
    """Send a tone paced at real time; returns what was sent."""
    generator = ToneGenerator(hz, RATE, 0.25)
    pacer = Pacer(lead=0)
    sent = []
    for _ in range(round(seconds * 50)):
        await pacer.wait()
        frame = generator.next_frame(FRAME)
        sent.append(frame)
        leg.send_audio(frame)
    return np.concatenate(sent)


def tone_bytes(hz: float, seconds: float) -> bytes:
    return ToneGenerator(hz, RATE, 0.25).next_frame(round(RATE * seconds)).astype("<i2").tobytes()


# --------------------------------------------------------------------------- tests


def test_plugin_is_registered_as_a_builtin() -> None:
    (plugin,) = list(callbridge_room_transports())
    assert plugin.name == "websocket"
    assert plugin.factory is WebSocketRooms and plugin.config_model is WebSocketRoomsConfig
    assert "websocket" in Registry(build_plugin_manager()).names("room_transport")


async def test_an_echo_agent_returns_the_callers_tone_at_the_same_pitch_and_level(
    agent_server, transports
) -> None:
    server = await agent_server(echo)
    rooms = await transports(url=server.url + "/agents/{callId}?room={roomId}")
    assert isinstance(rooms, RoomTransport)
    leg, sink = await join_caller(rooms)
    assert isinstance(leg, RoomLeg)
    joined = await agent_joined(sink)
    assert joined["participantId"].startswith("agent_") and joined["displayName"] == "agent"
    await server.wait_until(lambda: len(server.starts) == 1)
    (start,) = server.starts
    assert start == {
        "event": "start",
        "callId": CALL,
        "roomId": ROOM,
        "caller": "+14155550100",
        "callee": "+14155550199",
        "metadata": {"callId": CALL, "provider": "twilio"},
        "sampleRate": RATE,
        "encoding": "pcm_s16le",
        "frameMs": 20,
    }
    assert TENANT not in json.dumps(server.texts), "the tenant (API key) is never sent"
    assert server.paths == [f"/agents/{CALL}?room={ROOM}"]

    heard_before = len(sink.frames)
    sent = await send_tone(leg, 440, 1.0)
    await asyncio.sleep(0.3)
    heard = trim_silence(np.concatenate(sink.frames[heard_before:]), RATE)
    assert len(heard) >= 0.9 * len(sent), "the whole second came back"
    assert dominant_frequency(heard, RATE) == pytest.approx(440, abs=10)
    assert level_dbfs(heard) == pytest.approx(level_dbfs(sent), abs=3)
    assert all(len(message) == 2 * FRAME for message in server.binary), "20 ms frames"
    assert leg.media_stats()["frames_in"] >= 50

    await rooms.aclose()
    await server.wait_until(lambda: len(server.close_codes) == 1)
    assert server.events("stop") == [{"event": "stop", "reason": "shutdown"}]
    assert server.close_codes == [1001]
    assert sink.closed, "the caller's leg ended with the transport"
    with pytest.raises(PluginError):
        await join_caller(rooms, "call_2")


async def test_a_fast_agent_is_paced_by_the_media_clock_and_its_mark_follows_its_audio(
    agent_server, transports
) -> None:
    tone = tone_bytes(1000, 2.0)

    async def burst(connection: ServerConnection, server: AgentServer) -> None:
        await server.receive(connection)  # start
        # Two seconds at once, cut at an odd byte: re-framed, the odd byte kept for later.
        await connection.send(tone[:12345])
        await connection.send(tone[12345:])
        await connection.send(json.dumps({"event": "mark", "name": "tone-end"}))
        await server.listen(connection)

    server = await agent_server(burst)
    clock = MediaClock(autostart=False)
    rooms = await transports(clock=clock, url=server.url)
    order: list[str] = []

    class OrderedSink(RecordingSink):
        def hear(self, frame: np.ndarray) -> None:
            super().hear(frame)
            order.append("tone" if np.abs(frame).max() > 1000 else "quiet")

        def notify(self, event: Any) -> None:
            super().notify(event)
            order.append(event["event"])

    _, sink = await join_caller(rooms, sink=OrderedSink())
    await agent_joined(sink)
    stats = rooms.agent_stats(TENANT, ROOM, CALL)
    assert stats is not None
    await eventually(lambda: stats.frames_received == 100 and stats.commands == 1)
    assert order.count("tone") == 1, "one frame passes at once; the rest wait for the clock"

    for _ in range(110):
        clock.run_tick()
    heard = [kind for kind in order if kind in ("tone", "quiet")]
    first = heard.index("tone")
    assert heard.count("tone") == 100, "nothing drained or dropped"
    assert heard[first : first + 100] == ["tone"] * 100, "one frame per tick, 2 s of ticks"
    mark = order.index("mark")
    assert mark > len(order) - 1 - order[::-1].index("tone"), "the mark comes after its audio"
    assert (await sink.next_event("mark")) == {
        "event": "mark",
        "name": "tone-end",
        "callId": CALL,
    }
    loud = np.concatenate([frame for frame in sink.frames if np.abs(frame).max() > 1000])
    assert loud.tobytes() == tone, "exactly the agent's audio, in order"
    assert dominant_frequency(loud, RATE) == pytest.approx(1000, abs=10)


async def test_agent_commands_reach_the_call_and_malformed_ones_are_dropped(
    agent_server, transports
) -> None:
    async def commander(connection: ServerConnection, server: AgentServer) -> None:
        await server.receive(connection)  # start
        for text in (
            '{"event": "hangup", "reason": "bye"}',
            "not json",
            '{"event": "transfer", "roomId": "sales", "transport": "local"}',
            '{"event": "explode"}',
            '{"event": "dtmf", "digits": "12#"}',
            '{"event": "hangup", "callId": "call_other"}',
        ):
            await connection.send(text)
        await server.listen(connection)

    server = await agent_server(commander)
    rooms = await transports(url=server.url)
    leg, sink = await join_caller(rooms)
    await agent_joined(sink)

    assert await sink.next_event("hangup") == {"event": "hangup", "reason": "bye", "callId": CALL}
    assert await sink.next_event("transfer") == {
        "event": "transfer",
        "roomId": "sales",
        "transport": "local",
        "callId": CALL,
    }
    assert await sink.next_event("dtmf") == {"event": "dtmf", "digits": "12#", "callId": CALL}
    assert (await sink.next_event("hangup"))["callId"] == "call_other", "an explicit callId stays"
    stats = rooms.agent_stats(TENANT, ROOM, CALL)
    assert stats is not None
    assert stats.malformed == 2 and stats.commands == 4 and stats.connects == 1

    leg.send_event({"event": "dtmf", "digit": "5", "callId": CALL})
    await server.wait_until(lambda: bool(server.events("dtmf")))
    assert server.events("dtmf") == [{"event": "dtmf", "digit": "5", "callId": CALL}]

    await leg.leave()
    await server.wait_until(lambda: len(server.close_codes) == 1)
    assert server.events("stop") == [{"event": "stop", "reason": "call ended"}]
    assert server.close_codes == [1000]
    assert rooms.local.rooms() == [], "the agent left with its call"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("fallback_room", ["voicemail", None])
async def test_an_unreachable_agent_sends_the_call_to_its_fallback(
    transports, caplog: pytest.LogCaptureFixture, fallback_room: str | None
) -> None:
    port = unused_port()
    query_secret = "query-secret-6f1d2c9e"
    header_secret = "header-secret-8a7b6c5d"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        rooms = await transports(
            url=f"ws://127.0.0.1:{port}/agents/{{callId}}?token={query_secret}",
            headers={"Authorization": f"Bearer {header_secret}"},
            reconnect_deadline_seconds=0.5,
            fallback_room=fallback_room,
            fallback_transport="local" if fallback_room else None,
        )
        began = time.monotonic()
        _, sink = await join_caller(rooms)
        wanted = "transfer" if fallback_room else "hangup"
        event = await sink.next_event(wanted)
        waited = time.monotonic() - began
    if fallback_room:
        assert event == {
            "event": "transfer",
            "roomId": "voicemail",
            "transport": "local",
            "callId": CALL,
        }
    else:
        assert event == {
            "event": "hangup",
            "reason": "agent unavailable",
            "unavailable": True,
            "callId": CALL,
        }
    assert 0.45 <= waited < 1.5, "retried until the deadline, then gave up"
    failures = [entry for entry in logs if entry["event"] == "agent connect failed"]
    assert len(failures) >= 3, "backoff 0.2 s, 0.3 s (to the deadline): three attempts"
    assert failures[0]["agent_url"] == f"ws://127.0.0.1:{port}/agents/{CALL}"
    logged = repr(logs) + caplog.text
    assert query_secret not in logged and header_secret not in logged
    assert not any(e.get("participantId", "").startswith("agent_") for e in sink.events)


async def test_a_dropped_agent_is_reconnected_and_audio_flows_again(
    agent_server, transports
) -> None:
    async def flaky(connection: ServerConnection, server: AgentServer) -> None:
        if server.connections == 1:
            await server.receive(connection)  # start
            await asyncio.sleep(0.1)
            connection.transport.abort()  # no closing handshake: a dropped socket
            return
        await echo(connection, server)

    server = await agent_server(flaky)
    rooms = await transports(url=server.url, reconnect_deadline_seconds=3)
    leg, sink = await join_caller(rooms)
    first = await agent_joined(sink)
    left = await sink.next_event("participant-left")
    assert left["participantId"] == first["participantId"], "the agent left when it dropped"
    second = await agent_joined(sink)
    assert second["participantId"] == first["participantId"], "and rejoined as itself"
    await server.wait_until(lambda: len(server.starts) == 2)
    assert server.starts[1]["callId"] == CALL and server.connections == 2

    heard_before = len(sink.frames)
    await send_tone(leg, 440, 0.5)
    await asyncio.sleep(0.3)
    heard = trim_silence(np.concatenate(sink.frames[heard_before:]), RATE)
    assert len(heard) >= 0.4 * RATE
    assert dominant_frequency(heard, RATE) == pytest.approx(440, abs=10)
    stats = rooms.agent_stats(TENANT, ROOM, CALL)
    assert stats is not None and stats.connects == 2


async def test_an_oversized_message_closes_the_agent_connection(agent_server, transports) -> None:
    async def oversized(connection: ServerConnection, server: AgentServer) -> None:
        await server.receive(connection)
        if server.connections == 1:
            await connection.send(b"\0" * 5000)
        await server.listen(connection)

    server = await agent_server(oversized)
    rooms = await transports(url=server.url, max_message_bytes=4096)
    await join_caller(rooms)
    await server.wait_until(lambda: len(server.starts) == 2)
    assert server.close_codes == [1009], "message too big"
    stats = rooms.agent_stats(TENANT, ROOM, CALL)
    assert stats is not None and stats.frames_received == 0


async def test_per_room_one_agent_serves_every_member_until_the_last_leaves(
    agent_server, transports
) -> None:
    server = await agent_server(listen)
    rooms = await transports(url=server.url + "/rooms/{roomId}/{callId}", mode="per_room")
    a, heard_by_a = await join_caller(rooms, "call_a")
    b, heard_by_b = await join_caller(rooms, "call_b")
    await agent_joined(heard_by_a)
    await agent_joined(heard_by_b)
    await server.wait_until(
        lambda: (
            {e["participantId"] for e in server.events("participant-joined")}
            >= {"call_a", "call_b"}
        )
    )
    assert server.connections == 1 and server.paths == [f"/rooms/{ROOM}/"]
    (start,) = server.starts
    assert start["callId"] is None and start["caller"] is None and start["metadata"] == {}

    a.send_audio(np.full(FRAME, 1000, dtype=np.int16))
    for _ in range(5):
        a.send_audio(np.full(FRAME, 1000, dtype=np.int16))
        await asyncio.sleep(0.02)
    await server.wait_until(
        lambda: any(np.frombuffer(m, "<i2").max() == 1000 for m in server.binary)
    )

    await a.leave()
    await server.wait_until(lambda: bool(server.events("participant-left")))
    await asyncio.sleep(0.1)
    assert server.events("stop") == [] and server.close_codes == [], "b is still there"
    await b.leave()
    await server.wait_until(lambda: len(server.close_codes) == 1)
    assert server.events("stop") == [{"event": "stop", "reason": "room empty"}]
    assert server.close_codes == [1000] and server.connections == 1
    await eventually(lambda: rooms.local.rooms() == [])


async def test_audio_toward_a_stalled_agent_is_bounded_and_events_are_kept(
    agent_server, transports
) -> None:
    server = await agent_server(listen)
    clock = MediaClock(autostart=False)
    rooms = await transports(clock=clock, url=server.url)
    leg, sink = await join_caller(rooms)
    await agent_joined(sink)
    await server.wait_until(lambda: len(server.starts) == 1)
    frames_before = len(server.binary)
    # The event loop stalls for 80 ticks: the agent's writer cannot run meanwhile.
    for tick in range(80):
        clock.run_tick()
        if tick == 10:
            leg.send_event({"event": "dtmf", "digit": "9", "callId": CALL})
    stats = rooms.agent_stats(TENANT, ROOM, CALL)
    assert stats is not None and stats.dropped == 80 - MAX_PENDING_FRAMES
    await server.wait_until(lambda: len(server.binary) - frames_before == MAX_PENDING_FRAMES)
    await server.wait_until(lambda: bool(server.events("dtmf")))
    await asyncio.sleep(0.05)
    assert len(server.binary) - frames_before == MAX_PENDING_FRAMES
    assert server.events("dtmf") == [{"event": "dtmf", "digit": "9", "callId": CALL}]


async def test_client_members_bring_no_agent_in_per_call_mode(agent_server, transports) -> None:
    server = await agent_server(listen)
    rooms = await transports(url=server.url)
    sink = RecordingSink()
    leg = await rooms.join(TENANT, ROOM, Participant("p_1", "client"), sink)
    await asyncio.sleep(0.2)
    assert server.connections == 0 and rooms.agent_stats(TENANT, ROOM) is None
    await leg.leave()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "http://agent.example/ws"}, "ws:// or wss://"),
        ({"url": "wss://agent.example/{callId}/{call_sid}"}, "unknown placeholder {call_sid}"),
        ({"url": "wss://agent.example/{callId:>10}"}, "no format"),
        ({"url": "wss://agent.example/{"}, "not a valid template"),
        ({"url": "wss:///only-a-path"}, "not a valid WebSocket URL"),
        ({"url": "wss://a.example", "fallback_transport": "local"}, "without fallback_room"),
        ({"url": "wss://a.example", "fallback_room": "no spaces here"}, "not a valid room id"),
        ({"url": "wss://a.example", "mode": "per_moon"}, "per_call"),
        ({"url": "wss://a.example", "room": {"sample_rate": 11025}}, "sample_rate"),
        ({"url": "wss://a.example", "retries": 3}, "retries"),
        ({"url": "wss://a.example", "headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"url": "wss://a.example", "headers": {"X-Key": "secret\r\nX-Evil: 1"}}, "line break"),
        ({}, "url"),
    ],
)
def test_config_validation(config: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message) as raised:
        WebSocketRoomsConfig(**config)
    assert "secret" not in str(raised.value)


def test_config_accepts_every_placeholder_and_hides_header_values() -> None:
    config = WebSocketRoomsConfig(
        url="wss://agent.example/{tenant}/{roomId}/{callId}?member={participantId}",
        headers={"Authorization": "Bearer s3cret-value-1234"},
        room={"sample_rate": 8000},
    )
    assert config.mode == "per_call" and config.max_message_bytes == 1 << 20
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()
    for field in WebSocketRoomsConfig.model_fields.values():
        assert field.description, "every option is documented"
