"""What the rule-based strategies share: a matched rule turned into a route."""

from __future__ import annotations

from callbridge.protocols import CodecSpec, Route
from callbridge.routing.rules import RoutingRule


def route_of(rule: RoutingRule, room_id: str, strategy: str) -> Route:
    """The route ``rule`` gives a call, to ``room_id``."""
    return Route(
        room_id=room_id,
        strategy=strategy,
        transport=rule.transport,
        codec=None if rule.codec is None else CodecSpec(rule.codec),  # rate: the provider's first
        metadata=dict(rule.metadata),
        rule_id=rule.id,
        region=rule.region,
    )
