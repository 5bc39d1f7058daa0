"""Which topics an API key may subscribe to: its own ``apikey`` scope, its own connectors
(looked up by id *and* API key, so another key's connector and an unknown one get the same
answer) and its rooms (rooms are per API key: ``room:R`` is always the key's own room)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select

from callbridge.feed.topics import Topic, TopicError, parse_topic
from callbridge.store.db import Database
from callbridge.store.models import Connector
from callbridge.store.repository import transaction


@dataclass
class TopicCheck:
    """The topics of one request: those allowed, and ``(topic as sent, why not)`` for the rest."""

    allowed: list[Topic] = field(default_factory=list)
    refused: list[tuple[object, str]] = field(default_factory=list)


async def check_topics(
    topics: Sequence[object], apikey: str, db: Database, clock: Callable[[], float]
) -> TopicCheck:
    """Parse ``topics`` and keep those ``apikey`` may subscribe to (duplicates once); refusals
    come in the order of ``topics``."""
    parsed: list[tuple[object, Topic | str]] = []
    for raw in topics:
        try:
            parsed.append((raw, parse_topic(raw)))
        except TopicError as exc:
            parsed.append((raw, str(exc)))
    connector_ids = {
        t.scope_id for _, t in parsed if isinstance(t, Topic) and t.scope == "connector"
    }
    own_connectors: set[str] = set()
    if connector_ids:
        async with transaction(db, clock) as repo:
            rows = await repo.session.scalars(
                select(Connector.id).where(
                    Connector.id.in_(connector_ids), Connector.apikey == apikey
                )
            )
            own_connectors = set(rows)
    check = TopicCheck()
    seen: set[str] = set()
    for raw, topic in parsed:
        if isinstance(topic, str):
            check.refused.append((raw, topic))
        elif topic.scope == "apikey" and topic.scope_id != apikey:
            check.refused.append((raw, "permission denied: the topic names another API key"))
        elif topic.scope == "connector" and topic.scope_id not in own_connectors:
            check.refused.append(
                (raw, f"permission denied: {topic.scope_id} is not a connector of this API key")
            )
        elif topic.text not in seen:
            seen.add(topic.text)
            check.allowed.append(topic)
    return check
