"""The live event socket (``WS /v2/ws``) against a real server in process, a real WebSocket
client and simulated Twilio calls: topics and scopes, permissions, resume with ``since`` (no
gap, no duplicate), a slow consumer, keepalive, authentication and malformed messages; and the
feed's handling of positions that commit out of order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callbridge.api.auth import issue_token
from callbridge.feed.poller import EventFeed
from callbridge.feed.records import FeedEvent
from callbridge.feed.topics import TopicError, TopicKey, event_keys, parse_topic
from callbridge.settings import EventSocketSettings
from callbridge.store.db import Database
from callbridge.store.ids import new_event_id
from callbridge.store.models import Event
from callbridge.store.repository import transaction
from callbridge.webhooks.events import encode
from callbridge.webhooks.store import insert_event
from tests import twilio_wire as tw
from tests.live_calls import LiveCaller, tone_participant, twilio_caller
from tests.servers import (
    TEST_KEYS,
    Connector,
    FakeClock,
    InProcessServer,
    create_connector,
    running_in_process,
)

KEY = "ak_test_one"
OTHER_KEY = "ak_test_two"
ALL_CALLS = f"apikey:{KEY}:call:*"
FAST_FEED = {"events": {"poll_interval_seconds": 0.05}}
SYNTHETIC_CALL = "call_" + "s" * 20


# --------------------------------------------------------------------------- helpers


class EventClient:
    """An event socket client that records every message (keepalive pings apart)."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.messages: list[dict[str, Any]] = []
        self.pings = 0
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._cursor = 0
        self._task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        try:
            async for text in self.socket:
                message = json.loads(text)
                if message.get("type") == "ping":
                    self.pings += 1
                else:
                    self.messages.append(message)
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.socket.send(json.dumps(message) if isinstance(message, dict) else message)

    async def next(self) -> dict[str, Any]:
        """The next message not yet returned (within 10 s)."""
        async with asyncio.timeout(10):
            while self._cursor >= len(self.messages):
                self._arrived.clear()
                await self._arrived.wait()
        self._cursor += 1
        return self.messages[self._cursor - 1]

    async def next_events(self, count: int) -> list[dict[str, Any]]:
        events = [await self.next() for _ in range(count)]
        assert all("event_type" in e for e in events), events
        return events

    async def subscribe(
        self, topics: list[str], since: str | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Subscribe; returns the errors received before the ``subscribed`` answer, and it."""
        request: dict[str, Any] = {"type": "subscribe", "topics": topics}
        if since is not None:
            request["since"] = since
        await self.send(request)
        errors = []
        while (reply := await self.next())["type"] == "error":
            errors.append(reply)
        assert reply["type"] == "subscribed", reply
        return errors, reply

    async def assert_quiet(self, seconds: float = 0.5) -> None:
        await asyncio.sleep(seconds)
        assert self.messages[self._cursor :] == []


def socket_url(server: InProcessServer, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{server.port}/v2/ws" + (f"?token={token}" if token else "")


@contextlib.asynccontextmanager
async def event_client(server: InProcessServer, token: str | None = None, **kwargs: Any) -> Any:
    async with connect(socket_url(server, token), open_timeout=5, **kwargs) as ws:
        client = EventClient(ws)
        try:
            yield client
        finally:
            client._task.cancel()
            await asyncio.gather(client._task, return_exceptions=True)


def stored(tmp_path: Path, apikey: str = KEY) -> list[dict[str, Any]]:
    """The API key's rows of the events table, in position order."""
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "callbridge.db")) as db:
        rows = db.execute(
            "SELECT id, type, call_id, body FROM events WHERE apikey = ? ORDER BY position",
            (apikey,),
        ).fetchall()
    return [{"id": r[0], "type": r[1], "call_id": r[2], "body": json.loads(r[3])} for r in rows]


async def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def inject_dtmf(caller: LiveCaller, digit: str) -> None:
    await caller.inject(
        json.dumps(
            {
                "event": "dtmf",
                "streamSid": caller.stream_sid,
                "sequenceNumber": "500",
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )
    )


@contextlib.asynccontextmanager
async def live_call(connector: Connector) -> AsyncIterator[tuple[LiveCaller, str]]:
    """A Twilio call on ``connector``, hung up by the caller when the block ends."""
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None, answer.body
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        yield caller, form["CallSid"]
        await asyncio.sleep(0.1)
        await caller.stop(final=tw.stop(caller.stream_sid, form["CallSid"], 9999))


async def short_call(connector: Connector, dtmf: str = "") -> str:
    async with live_call(connector) as (caller, call_sid):
        await asyncio.sleep(0.4)
        for digit in dtmf:
            await inject_dtmf(caller, digit)
            await asyncio.sleep(0.1)
    return call_sid


@contextlib.asynccontextmanager
async def store_of(tmp_path: Path) -> AsyncIterator[Database]:
    """The server's SQLite store, opened by a second engine (as another process would)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'callbridge.db'}")
    try:
        yield db
    finally:
        await db.dispose()


async def write_events(
    db: Database,
    count: int,
    *,
    apikey: str = KEY,
    padding: int = 0,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """``count`` call-dtmf events of a synthetic call, written in one transaction."""
    ids = []
    async with transaction(db, clock, write=True) as repo:
        for n in range(count):
            event_id = new_event_id()
            data = {
                "eventId": event_id,
                "callId": SYNTHETIC_CALL,
                "digit": "1",
                "pad": "x" * padding,
            }
            await insert_event(
                repo.session,
                event_id=event_id,
                apikey=apikey,
                call_id=SYNTHETIC_CALL,
                connector_id=None,
                room_id=None,
                seq=n + 1,
                event_type="call-dtmf",
                body=encode({"webhookType": "call-dtmf", "data": data}),
                now=repo.now(),
            )
            ids.append(event_id)
    return ids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    """callbridge on the real clock, its feed polling every 50 ms."""
    with running_in_process(tmp_path, FAST_FEED) as running:
        yield running


# --------------------------------------------------------------------------- calls, topics


async def test_a_call_arrives_in_order_with_the_stored_ids(
    server: InProcessServer, tmp_path: Path
) -> None:
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId="lobby")
    async with event_client(server, token) as client:
        errors, reply = await client.subscribe([ALL_CALLS])
        assert errors == [] and reply == {"type": "subscribed", "topics": [ALL_CALLS]}
        call_sid = await short_call(connector, dtmf="5")
        events = await client.next_events(4)
        await client.assert_quiet()
    assert [(e["event_type"], e["data"].get("status")) for e in events] == [
        ("call.created", "started"),
        ("call.status", "answered"),
        ("call.dtmf", None),
        ("call.status", "hangup"),
    ]
    rows = stored(tmp_path)
    assert [e["id"] for e in events] == [r["id"] for r in rows], "the events table's ids, in order"
    for event, row in zip(events, rows, strict=True):
        assert event["topic"] == ALL_CALLS
        assert event["data"] == row["body"]["data"], "data is the webhook's data"
        assert event["timestamp"] == row["body"]["data"]["timestamp"]
        assert event["timestamp"].endswith("Z")
        assert event["data"]["providerCallId"] == call_sid
    assert events[2]["data"]["digit"] == "5"
    assert events[3]["data"]["endedBy"] == "caller"


async def test_connector_and_room_scopes_receive_the_call_an_unrelated_connector_nothing(
    server: InProcessServer, tmp_path: Path
) -> None:
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId="lobby")
    unrelated = create_connector(server.url, token, defaultRoomId="lobby")
    by_connector = f"connector:{connector.id}:call:*"
    by_room = "room:lobby:call:*"
    room_members = "room:lobby:room:*"
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for topic in (by_connector, by_room, room_members, f"connector:{unrelated.id}:call:*"):
            clients[topic] = await stack.enter_async_context(event_client(server, token))
            assert (await clients[topic].subscribe([topic]))[0] == []
        async with live_call(connector):
            await clients[by_room].next_events(2)  # created, answered: the caller is in
            room_url = f"ws://127.0.0.1:{server.port}/v2/rooms/lobby/participants?token={token}"
            async with tone_participant(room_url):
                joined = await clients[room_members].next()
            left = await clients[room_members].next()
        for topic in (by_connector, by_room):
            await wait_until(lambda c=clients[topic]: len(c.messages) >= 6)
        await asyncio.sleep(0.5)
        rows = stored(tmp_path)
        types = [r["type"] for r in rows]
        assert types == [
            "call-started",
            "call-answered",
            "participant-joined",
            "participant-left",
            "call-hangup",
        ]
        for topic in (by_connector, by_room):
            received = clients[topic].messages[1:]
            assert [e["id"] for e in received] == [r["id"] for r in rows], topic
            assert {e["topic"] for e in received} == {topic}
        assert joined["event_type"] == "room.participant_joined"
        assert left["event_type"] == "room.participant_left"
        assert (joined["id"], left["id"]) == (rows[2]["id"], rows[3]["id"])
        assert joined["topic"] == left["topic"] == room_members
        assert joined["data"]["participantId"] == left["data"]["participantId"]
        await clients[room_members].assert_quiet(0)
        unrelated_client = clients[f"connector:{unrelated.id}:call:*"]
        assert unrelated_client.messages[1:] == [], "an unrelated connector's topic hears nothing"


async def test_topics_of_another_api_key_are_refused_by_name(server: InProcessServer) -> None:
    token = server.token()
    theirs = create_connector(server.url, server.token(OTHER_KEY), defaultRoomId="lobby")
    refused = [
        f"apikey:{OTHER_KEY}:call:*",
        f"connector:{theirs.id}:call:*",
        "connector:cn_nosuchconnector:call:*",
        "apikey:ak_test_one:calls:*",
        "room:lobby:room:hall",
    ]
    async with event_client(server, token) as client:
        errors, reply = await client.subscribe([*refused, ALL_CALLS])
        assert [e["topic"] for e in errors] == refused, "one error per refused topic, naming it"
        assert all(e["type"] == "error" and e["message"] for e in errors)
        assert "another API key" in errors[0]["message"]
        assert errors[1]["message"] == errors[2]["message"].replace(
            "cn_nosuchconnector", theirs.id
        ), "another key's connector and an unknown one get the same answer"
        assert reply["topics"] == [ALL_CALLS]
        await short_call(theirs)  # a call of the other key
        await client.assert_quiet(1.0)


# --------------------------------------------------------------------------- resume


async def test_resume_with_since_replays_exactly_the_missed_events_then_goes_live(
    server: InProcessServer, tmp_path: Path
) -> None:
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId="lobby")
    async with contextlib.AsyncExitStack() as first_socket:
        first = await first_socket.enter_async_context(event_client(server, token))
        await first.subscribe([ALL_CALLS])
        async with live_call(connector) as (caller, _):
            before = await first.next_events(2)
            await first_socket.aclose()  # the client goes away; the call goes on
            await inject_dtmf(caller, "7")
            await wait_until(lambda: len(stored(tmp_path)) == 3)
        await wait_until(lambda: len(stored(tmp_path)) == 4)
    assert [e["event_type"] for e in before] == ["call.created", "call.status"]

    async with event_client(server, token) as second:
        errors, _ = await second.subscribe([ALL_CALLS], since=before[-1]["id"])
        assert errors == []
        missed = await second.next_events(2)
        assert [(e["event_type"], e["data"].get("status")) for e in missed] == [
            ("call.dtmf", None),
            ("call.status", "hangup"),
        ]
        assert missed[0]["data"]["digit"] == "7"
        await second.assert_quiet(0.3)
        await short_call(connector)
        live = await second.next_events(3)
        assert [e["event_type"] for e in live] == ["call.created", "call.status", "call.status"]
        await second.assert_quiet()
    ids = [e["id"] for e in before + missed + live]
    assert len(set(ids)) == len(ids), "nothing twice"
    assert ids == [r["id"] for r in stored(tmp_path)], "nothing missed, in store order"


async def test_events_written_during_a_replay_come_once_and_in_order(tmp_path: Path) -> None:
    overrides = {"events": {"poll_interval_seconds": 0.02, "buffer_events": 10}}
    with running_in_process(tmp_path, overrides) as server:
        async with (
            store_of(tmp_path) as db,
            # Reads nothing at first: the replay (64 kB events) waits for it, the feed moves on.
            connect(socket_url(server, server.token()), max_queue=1, compression=None) as client,
        ):
            history = await write_events(db, 120, padding=64_000)
            await asyncio.sleep(0.2)  # the feed has handed them out (to nobody)
            await client.send(
                json.dumps({"type": "subscribe", "topics": [ALL_CALLS], "since": history[9]})
            )
            later: list[str] = []
            for _ in range(20):
                later += await write_events(db, 1)
                await asyncio.sleep(0.02)
            received: list[str] = []
            async with asyncio.timeout(20):
                assert json.loads(await client.recv())["type"] == "subscribed"
                while len(received) < 110 + 20:
                    received.append(json.loads(await client.recv())["id"])
                later += await write_events(db, 3)  # live again
                while len(received) < 110 + 23:
                    received.append(json.loads(await client.recv())["id"])
    assert received == history[10:] + later, "each once, in store order"


async def test_since_that_is_unknown_another_keys_or_too_old_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    overrides = {"events": {"poll_interval_seconds": 0.05, "retention_seconds": 60}}
    with running_in_process(tmp_path, overrides, clock=clock) as server:
        async with store_of(tmp_path) as db:
            mine = await write_events(db, 2, clock=clock)
            theirs = await write_events(db, 1, apikey=OTHER_KEY, clock=clock)
        async with event_client(server, server.token()) as client:
            errors, _ = await client.subscribe([ALL_CALLS], since=mine[0])
            assert errors == []
            assert [e["id"] for e in await client.next_events(1)] == [mine[1]]
            for since in (theirs[0], "evt_" + "0" * 24, "not an id"):
                errors, reply = await client.subscribe([ALL_CALLS], since=since)
                assert [e["since"] for e in errors] == [since]
                assert "unknown or older than the retention" in errors[0]["message"]
                assert reply["topics"] == [ALL_CALLS], "subscribed, without a replay"
            clock.advance(61)
            errors, _ = await client.subscribe([ALL_CALLS], since=mine[0])
            assert "older than the retention" in errors[0]["message"]
            await client.assert_quiet(0.3)


# --------------------------------------------------------------------------- slow consumer


async def test_a_consumer_that_does_not_read_is_told_what_it_missed_and_closed(
    tmp_path: Path,
) -> None:
    overrides = {"events": {"poll_interval_seconds": 0.02, "buffer_events": 3}}
    with running_in_process(tmp_path, overrides) as server:
        feed: EventFeed = server.app.state.event_feed
        token = server.token()
        # A tiny receive window, a one-message client queue and no compression: the server's
        # sends back up after a few events, instead of after megabytes of buffers.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        written: list[str] = []
        async with (
            connect(socket_url(server, token), sock=raw, max_queue=1, compression=None) as slow,
            event_client(server, token) as fast,
            store_of(tmp_path) as db,
        ):
            await slow.send(json.dumps({"type": "subscribe", "topics": [ALL_CALLS]}))
            await fast.subscribe([ALL_CALLS])
            await wait_until(lambda: feed.subscriber_count == 2)
            # One event at a time, each 64 kB: a reading client never has more than one
            # waiting; the one that does not read falls behind once its socket is full.
            while feed.subscriber_count == 2:
                assert len(written) < 400, "the slow socket was never dropped"
                written += await write_events(db, 1, padding=64_000)
                event = await fast.next()
                assert event["id"] == written[-1]
            assert len(written) > 3
            received: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionClosed):
                    async for text in slow:
                        received.append(json.loads(text))
            assert slow.close_code == 4429
            assert received[0] == {"type": "subscribed", "topics": [ALL_CALLS]}
            notice = received[-1]
            assert notice["type"] == "events_dropped" and "since" in notice["message"]
            got = [m["id"] for m in received[1:-1]]
            assert got == written[: len(got)], "a gapless prefix, in order"
            assert notice["first_missing_id"] == written[len(got)]
            # The server is fine: the reading client still gets events, /healthz answers.
            written += await write_events(db, 1)
            assert (await fast.next())["id"] == written[-1]
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.url}/healthz")).status_code == 200
            assert feed.subscriber_count == 1


# --------------------------------------------------------------------------- the protocol


async def test_pings_and_pongs_and_header_authentication(tmp_path: Path) -> None:
    overrides = {"events": {"ping_interval_seconds": 0.2}}
    with running_in_process(tmp_path, overrides) as server:
        headers = {"Authorization": f"Bearer {server.token()}"}
        async with event_client(server, additional_headers=headers) as client:
            await wait_until(lambda: client.pings >= 2, seconds=3)
            await client.send({"type": "ping"})
            assert await client.next() == {"type": "pong"}


async def test_a_bad_token_is_refused_before_the_socket_opens(server: InProcessServer) -> None:
    forged = issue_token(KEY, "x" * 40)
    expired = issue_token(KEY, TEST_KEYS[KEY], now=time.time() - 7200, expires_in=60)
    for url, headers in (
        (socket_url(server), {}),
        (socket_url(server, "garbage"), {}),
        (socket_url(server, forged), {}),
        (socket_url(server, expired), {}),
        (socket_url(server), {"Authorization": "Bearer garbage"}),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers, open_timeout=5):
                pass
        assert refused.value.response.status_code == 403


async def test_malformed_messages_get_an_error_and_the_socket_stays(
    server: InProcessServer,
) -> None:
    async with event_client(server, server.token()) as client:
        for message in (
            "not json",
            b"\x00\x01",
            "[1, 2]",
            {"type": "dance"},
            {"type": "subscribe"},
            {"type": "subscribe", "topics": "apikey:ak_test_one:call:*"},
            {"type": "subscribe", "topics": [ALL_CALLS], "since": 42},
            {"type": "unsubscribe", "topics": []},
        ):
            await client.send(message)
            reply = await client.next()
            assert reply["type"] == "error" and reply["message"], message
        errors, reply = await client.subscribe([ALL_CALLS, "apikey:ak_test_one:call:*"])
        assert errors == [] and reply["topics"] == [ALL_CALLS], "duplicates once"
        await client.send({"type": "unsubscribe", "topics": [ALL_CALLS, "nope"]})
        error, unsubscribed = await client.next(), await client.next()
        assert error["type"] == "error" and error["topic"] == "nope"
        assert unsubscribed == {"type": "unsubscribed", "topics": [ALL_CALLS]}
        await client.send({"type": "ping"})
        assert await client.next() == {"type": "pong"}
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/v2/ws")
    assert response.status_code == 400, "plain HTTP on the socket path"


# --------------------------------------------------------------------------- sans I/O


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("apikey:ak_1:call:*", ("apikey", "ak_1", "call", "*")),
        ("connector:cn_abc:call:call_x", ("connector", "cn_abc", "call", "call_x")),
        ("room:lobby:room:lobby", ("room", "lobby", "room", "lobby")),
        ("room:a:b:room:*", ("room", "a:b", "room", "*")),
        ("room:a:call:call:*", ("room", "a:call", "call", "*")),
        ("apikey:ak_1:room:a:b", ("apikey", "ak_1", "room", "a:b")),
    ],
)
def test_topics_parse(text: str, key: TopicKey) -> None:
    topic = parse_topic(text)
    assert topic.key == key and topic.text == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "apikey:ak_1:call",
        "team:t1:call:*",
        "apikey:ak_1:*:*",
        "apikey:ak_1:message:*",
        "apikey:a b:call:*",
        "connector:cn_abc:room:*",
        "connector:CN:call:*",
        "room:lobby:room:hall",
        "apikey:ak_1:call:a:b",
        "x" * 500,
    ],
)
def test_malformed_topics_are_refused(text: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(text)


def test_which_topics_an_event_matches() -> None:
    def event(kind: str) -> FeedEvent:
        return FeedEvent(1, "evt_1", "A", "C", "K", "R", kind, "{}", datetime.now(UTC))

    call_keys = [
        ("apikey", "A", "call", "C"),
        ("connector", "K", "call", "C"),
        ("room", "R", "call", "C"),
        ("apikey", "A", "call", "*"),
        ("connector", "K", "call", "*"),
        ("room", "R", "call", "*"),
    ]
    assert list(event_keys(event("call-answered"))) == call_keys
    assert list(event_keys(event("participant-left"))) == [
        ("apikey", "A", "room", "R"),
        ("room", "R", "room", "R"),
        ("apikey", "A", "room", "*"),
        ("room", "R", "room", "*"),
        *call_keys,
    ]


class _Collector:
    apikey = KEY

    def __init__(self) -> None:
        self.positions: list[int] = []

    def offer(self, event: FeedEvent, keys: tuple[TopicKey, ...]) -> None:
        self.positions.append(event.position)


async def test_the_feed_waits_for_a_missing_position_then_settles(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'feed.db'}")
    await db.migrate()
    slow_polls = EventSocketSettings(poll_interval_seconds=10)  # the test polls by hand
    feed = EventFeed(db, slow_polls, settle_seconds=0.3)
    collector = _Collector()
    feed.register(collector)
    pokes: list[int] = []
    poller = EventFeed(
        db, EventSocketSettings(poll_interval_seconds=0.05), on_new_events=lambda: pokes.append(1)
    )

    async def insert(*positions: int) -> None:
        async with transaction(db, write=True) as repo:
            for position in positions:
                repo.session.add(
                    Event(
                        position=position,
                        id=new_event_id(),
                        apikey=KEY,
                        call_id=SYNTHETIC_CALL,
                        seq=position,
                        type="call-dtmf",
                        body="{}",
                        created_at=repo.now(),
                    )
                )

    try:
        await insert(1, 2)
        await feed.start()
        assert feed.position == 2, "starts after what is stored"
        await insert(3, 5, 6)  # 4 is "still uncommitted"
        assert await feed.poll_once() == 1
        assert collector.positions == [3]
        assert await feed.poll_once() == 0, "5 and 6 wait behind the gap"
        await insert(4)  # it commits within the settle time: order is kept
        assert await feed.poll_once() == 3
        assert collector.positions == [3, 4, 5, 6]
        await insert(8)  # 7 never commits
        assert await feed.poll_once() == 0
        await asyncio.sleep(0.35)
        assert await feed.poll_once() == 1
        assert collector.positions == [3, 4, 5, 6, 8] and feed.position == 8
        await poller.start()
        await asyncio.sleep(0.2)
        assert pokes == [], "nothing new"
        await insert(9)
        await wait_until(lambda: poller.position == 9)
        assert pokes == [1], "the webhook worker is poked when new events are seen"
    finally:
        await feed.stop()
        await poller.stop()
        await db.dispose()
