"""The ``room_query`` strategy: the webhook URL's ``roomId`` query parameter names the room."""

from __future__ import annotations

from pydantic import BaseModel, Field

from callbridge import hookimpl
from callbridge.plugin_types import RoutingStrategyPlugin
from callbridge.protocols import PluginContext, Route, RoutingContext
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

    async def route(self, context: RoutingContext) -> Route | None:
        room_id = context.query.get(self._parameter)
        if not room_id or not is_room_id(room_id):
            return None
        return Route(room_id=room_id, strategy=self.name)


@hookimpl
def callbridge_routing_strategies():  # type: ignore[no-untyped-def]
    yield RoutingStrategyPlugin(
        name="room_query",
        factory=RoomQueryStrategy,
        config_model=RoomQueryConfig,
        description="Room from the webhook URL's roomId query parameter",
    )
