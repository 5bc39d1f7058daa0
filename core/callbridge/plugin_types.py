"""Typed records that registration hooks yield.

Each record names one implementation of a plugin kind, says how to build it, and which pydantic
model validates its own configuration section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

PluginKind = Literal[
    "provider", "routing_strategy", "room_transport", "webhook_signer", "ref_store"
]

T = TypeVar("T")


class EmptyConfig(BaseModel):
    """Configuration model for plugins that take no options."""

    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class PluginRecord(Generic[T]):
    """One registered implementation of a plugin kind.

    Attributes:
        name: the name operators write in YAML (``providers.enabled: [twilio]``).
        factory: called as ``factory(config, context)`` with the validated config model and the
            :class:`callbridge.protocols.PluginContext`; returns the plugin object.
        config_model: pydantic model validating this plugin's own YAML section.
        description: one line shown by ``callbridge config check``.
    """

    name: str
    factory: Callable[[Any, Any], T]
    config_model: type[BaseModel] = EmptyConfig
    description: str = ""
    distribution: str = field(default="callbridge", compare=False)


@dataclass(frozen=True)
class ProviderPlugin(PluginRecord[Any]):
    """Registers a telephony provider (webhook parsing, markup, media socket adapter).

    Attributes:
        simulator: optional ``async def simulate(options) -> summary`` that plays this provider
            against a callbridge server (used by ``callbridge call --provider NAME``).
    """

    simulator: Callable[..., Any] | None = field(default=None, compare=False)


class RoutingStrategyPlugin(PluginRecord[Any]):
    """Registers a routing strategy (decides which room a call joins)."""


class RoomTransportPlugin(PluginRecord[Any]):
    """Registers a room transport (how a call leg joins a room)."""


class WebhookSignerPlugin(PluginRecord[Any]):
    """Registers a lifecycle-webhook signer."""


class RefStorePlugin(PluginRecord[Any]):
    """Registers a store for single-use call references."""


RECORD_TYPES: dict[PluginKind, type[PluginRecord[Any]]] = {
    "provider": ProviderPlugin,
    "routing_strategy": RoutingStrategyPlugin,
    "room_transport": RoomTransportPlugin,
    "webhook_signer": WebhookSignerPlugin,
    "ref_store": RefStorePlugin,
}
