"""The ``default_room`` strategy: the connector's ``defaultRoomId``."""

from __future__ import annotations

from callbridge import hookimpl
from callbridge.plugin_types import EmptyConfig, RoutingStrategyPlugin
from callbridge.protocols import PluginContext, Route, RouteDecision, RoutingContext


class DefaultRoomStrategy:
    """Routes to the connector's default room when it has one."""

    name = "default_room"

    def __init__(self, config: EmptyConfig, context: PluginContext) -> None:
        pass

    async def route(self, context: RoutingContext) -> RouteDecision:
        room_id = context.connector.default_room_id
        if not room_id:
            return RouteDecision(None, ("the connector has no defaultRoomId",))
        route = Route(room_id=room_id, strategy=self.name)
        return RouteDecision(route, (f"the connector's defaultRoomId is {room_id}",))


@hookimpl
def callbridge_routing_strategies():  # type: ignore[no-untyped-def]
    yield RoutingStrategyPlugin(
        name="default_room",
        factory=DefaultRoomStrategy,
        description="Room from the connector's defaultRoomId",
    )
