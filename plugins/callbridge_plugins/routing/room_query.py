"""The ``room_query`` strategy: the webhook URL's ``roomId`` query parameter names the room."""

from __future__ import annotations

from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.plugin_types import RoutingStrategyPlugin
from callbridge.protocols import PluginContext, Route, RouteDecision, RoutingContext
from callbridge.store.ids import is_room_id


class RoomQueryConfig(BaseModel):
    """Options of the ``room_query`` strategy."""

    model_config = {"extra": "forbid"}

    parameter: str = Field("roomId", description="Query parameter holding the room id.")


class RoomQueryStrategy:
    """Routes to ``?roomId=`` when present and well-formed; otherwise passes."""

    name = "room_query"

    def __init__(self, config: RoomQueryConfig, context: PluginContext) -> None:
        self._parameter = config.parameter

    async def route(self, context: RoutingContext) -> RouteDecision:
        room_id = context.query.get(self._parameter)
        if not room_id:
            return RouteDecision(None, (f"the webhook URL has no {self._parameter} parameter",))
        if not is_room_id(room_id):
            return RouteDecision(None, (f"{self._parameter} is not a valid room id",))
        route = Route(room_id=room_id, strategy=self.name)
        return RouteDecision(route, (f"{self._parameter}={room_id} in the webhook URL",))


@hookimpl
def callbridge_routing_strategies():  # type: ignore[no-untyped-def]
    yield RoutingStrategyPlugin(
        name="room_query",
        factory=RoomQueryStrategy,
        config_model=RoomQueryConfig,
        description="Room from the webhook URL's roomId query parameter",
    )
