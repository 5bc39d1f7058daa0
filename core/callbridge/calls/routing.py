"""The routing chain: strategies in configured order, the first decision wins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from callbridge.protocols import Route, RoutingContext, RoutingStrategy


@dataclass(frozen=True)
class RoutingOutcome:
    """The chain's decision: a route, or why there is none."""

    route: Route | None
    reason: str


async def route_call(chain: Sequence[RoutingStrategy], context: RoutingContext) -> RoutingOutcome:
    for strategy in chain:
        route = await strategy.route(context)
        if route is not None:
            return RoutingOutcome(route, f"routed by {route.strategy}")
    names = ", ".join(strategy.name for strategy in chain) or "no strategies configured"
    return RoutingOutcome(None, f"no routing strategy chose a room (tried: {names})")
