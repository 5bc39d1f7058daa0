"""One event socket: its subscriptions, its replays (``since``) and its live events.

**Live.** The feed offers every event of the socket's API key; the session keeps those that
match a subscribed topic (one message per event, naming the first matching topic, most
specific first) and queues them in its :class:`~callbridge.feed.outbox.Outbox`.

**Resume.** A subscribe with ``since`` registers its topics *first* and notes the feed's
high-water mark ``b``; from then on the socket is fed from the store instead of live: it reads
the key's events after ``since`` page by page, waiting for the client to take them (no buffer
limit applies to a replay: it goes at the client's pace), and keeps reading up to the feed's
mark as it moves. Once it has caught up, with no ``await`` between the check and the switch,
the socket goes live again: everything at or below the mark came from the store, everything
above it comes from the feed. Live events at or below the highest position the socket was sent
(or ``since`` itself, when the client comes from a replica that is further along) are skipped.
Nothing is missed, nothing is sent twice; events go out in store order.

While replaying, events at or below ``b`` are sent when they match a topic of the subscribe
message, unless a topic the socket already had delivered them live (those topics were
registered at a mark below the event); events above ``b`` are sent when they match any
subscribed topic. A fresh socket that subscribes once with ``since`` (the normal reconnect)
thus gets exactly the events after ``since``; on a socket that already had topics, the replay
is older than what it already received.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from callbridge.feed import messages
from callbridge.feed.access import check_topics
from callbridge.feed.outbox import Outbox
from callbridge.feed.poller import EventFeed
from callbridge.feed.records import FeedEvent
from callbridge.feed.topics import TopicKey, event_keys, parse_topic

MAX_TOPICS: Final = 200
"""Topics one socket may hold."""
REPLAY_PAGE: Final = 200
_EVENT_ID_RE = re.compile(r"evt_[A-Za-z0-9]{1,36}")

log = structlog.get_logger("callbridge.events")


class FeedSession:
    """See the module docstring. Driven by its socket's reader (:meth:`handle`) and by the
    feed (:meth:`offer`)."""

    def __init__(self, apikey: str, feed: EventFeed) -> None:
        self._apikey = apikey
        self.feed = feed
        self.outbox = Outbox(feed.settings.buffer_events)
        self.malformed = 0
        self._topics: dict[TopicKey, str] = {}
        self._registered_at: dict[TopicKey, int] = {}
        self._replaying = False
        self._sent_high = 0

    @property
    def apikey(self) -> str:
        return self._apikey

    @property
    def topics(self) -> list[str]:
        return list(self._topics.values())

    # ------------------------------------------------------------------ from the feed

    def offer(self, event: FeedEvent, keys: tuple[TopicKey, ...]) -> None:
        if self._replaying or event.position <= self._sent_high or self.outbox.closed:
            return
        topic = _first(self._topics, keys)
        if topic is None:
            return
        if self.outbox.push_event(event, event.socket_message(topic)):
            self._sent_high = event.position
        elif self.outbox.first_missing is not None:
            self.feed.unregister(self)

    # ------------------------------------------------------------------ from the client

    async def handle(self, data: str | bytes) -> None:
        """Act on one client message; a message outside the protocol gets an error back."""
        try:
            message = messages.parse_client_message(data)
        except messages.MessageError as exc:
            self.malformed += 1
            await self._reply(messages.error(str(exc)))
            return
        if isinstance(message, messages.Ping):
            await self._reply(messages.PONG)
        elif isinstance(message, messages.Subscribe):
            await self.subscribe(message.topics, message.since)
        else:
            await self.unsubscribe(message.topics)

    async def subscribe(self, raw_topics: tuple[object, ...], since: str | None) -> None:
        check = await check_topics(raw_topics, self._apikey, self.feed.db, self.feed.clock)
        for raw, problem in check.refused:
            await self._reply(messages.error(problem, topic=raw))
        accepted: list[str] = []
        room = MAX_TOPICS - len(self._topics)
        for topic in check.allowed:
            if topic.key in self._topics:
                accepted.append(topic.text)
            elif room > 0:
                accepted.append(topic.text)
                room -= 1
            else:
                await self._reply(
                    messages.error(f"at most {MAX_TOPICS} topics per socket", topic=topic.text)
                )
        since_position = None
        if since is not None and accepted:
            since_position = await self._since_position(since)
            if since_position is None:
                retention = self.feed.settings.retention_seconds
                await self._reply(
                    messages.error(
                        f"since {since} is unknown or older than the retention ({retention:g} "
                        "s); subscribed without a replay",
                        since=since,
                    )
                )
        if not await self.outbox.wait_for_room(event=False):
            return
        # From here to the replay's first read: no await, so no event slips in between.
        earlier = dict(self._registered_at)
        mark = self.feed.position
        for text in accepted:
            key = parse_topic(text).key
            self._topics.setdefault(key, text)
            self._registered_at.setdefault(key, mark)
        self.outbox.push_control(messages.subscribed(accepted))
        if since_position is not None:
            keys = {parse_topic(text).key: text for text in accepted}
            await self._replay(since_position, mark, keys, earlier)

    async def unsubscribe(self, raw_topics: tuple[object, ...]) -> None:
        removed: list[str] = []
        for raw in raw_topics:
            try:
                topic = parse_topic(raw)
            except ValueError as exc:
                await self._reply(messages.error(str(exc), topic=raw))
                continue
            self._topics.pop(topic.key, None)
            self._registered_at.pop(topic.key, None)
            removed.append(topic.text)
        await self._reply(messages.unsubscribed(removed))

    def send_ping(self) -> None:
        """Queue a keepalive ping (skipped when control messages are backed up)."""
        self.outbox.push_control(messages.PING)

    # ------------------------------------------------------------------ replay

    async def _since_position(self, since: str) -> int | None:
        if not _EVENT_ID_RE.fullmatch(since):
            return None
        now = datetime.fromtimestamp(self.feed.clock(), UTC)
        oldest = now - timedelta(seconds=self.feed.settings.retention_seconds)
        return await self.feed.find(self._apikey, since, oldest)

    async def _replay(
        self,
        since: int,
        mark: int,
        asked: Mapping[TopicKey, str],
        earlier: Mapping[TopicKey, int],
    ) -> None:
        self._replaying = True
        self._sent_high = max(self._sent_high, since)
        cursor = since
        try:
            while cursor < (target := self.feed.position):
                page = await self.feed.read(self._apikey, cursor, target, REPLAY_PAGE)
                for event in page:
                    cursor = event.position
                    topic = self._replay_topic(event, mark, asked, earlier)
                    if topic is None:
                        continue
                    if not await self.outbox.wait_for_room(event=True):
                        return
                    self.outbox.push_event(event, event.socket_message(topic))
                    self._sent_high = max(self._sent_high, event.position)
                if len(page) < REPLAY_PAGE:
                    cursor = target
        finally:
            self._replaying = False

    def _replay_topic(
        self,
        event: FeedEvent,
        mark: int,
        asked: Mapping[TopicKey, str],
        earlier: Mapping[TopicKey, int],
    ) -> str | None:
        keys = event_keys(event)
        if event.position > mark:  # live delivery was paused for it
            return _first(self._topics, keys)
        if any(key in earlier and event.position > earlier[key] for key in keys):
            return None  # an earlier topic delivered it live
        return _first(asked, keys)

    async def _reply(self, text: str) -> None:
        if await self.outbox.wait_for_room(event=False):
            self.outbox.push_control(text)


def _first(topics: Mapping[TopicKey, str], keys: tuple[TopicKey, ...]) -> str | None:
    for key in keys:
        topic = topics.get(key)
        if topic is not None:
            return topic
    return None
