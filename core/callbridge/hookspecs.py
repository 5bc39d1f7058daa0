"""The marker pair and every hook specification of callbridge.

All hooks are *registration* hooks: plain ``def`` functions that yield typed records from
:mod:`callbridge.plugin_types`. They run once when the plugin manager is built. The per-call work
is done by methods on the objects the records' factories build, never through ``pm.hook``.

A plugin module looks like this::

    from callbridge import hookimpl
    from callbridge.plugin_types import ProviderPlugin

    @hookimpl
    def callbridge_providers():
        yield ProviderPlugin(name="acme", factory=AcmeProvider, config_model=AcmeConfig,
                             description="ACME Voice media streams")
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from callbridge.plugin_types import (
    ProviderPlugin,
    RefStorePlugin,
    RoomTransportPlugin,
    RoutingStrategyPlugin,
    WebhookSignerPlugin,
)

PROJECT_NAME = "callbridge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def callbridge_providers() -> Iterable[ProviderPlugin]:
    """Register telephony providers.

    Called once per plugin manager, when the registry collects the available providers.

    :return: an iterable of :class:`~callbridge.plugin_types.ProviderPlugin`; each factory builds
        an object satisfying :class:`callbridge.protocols.Provider`.

    Example::

        @hookimpl
        def callbridge_providers():
            yield ProviderPlugin(name="twilio", factory=TwilioProvider, config_model=TwilioConfig)
    """


@hookspec
def callbridge_routing_strategies() -> Iterable[RoutingStrategyPlugin]:
    """Register routing strategies.

    Called once per plugin manager. The routing chain runs the strategies named in
    ``routing.chain`` in order; the first one that returns a route wins.

    :return: an iterable of :class:`~callbridge.plugin_types.RoutingStrategyPlugin`; each factory
        builds a :class:`callbridge.protocols.RoutingStrategy`.

    Example::

        @hookimpl
        def callbridge_routing_strategies():
            yield RoutingStrategyPlugin(name="room_query", factory=RoomQueryStrategy)
    """


@hookspec
def callbridge_room_transports() -> Iterable[RoomTransportPlugin]:
    """Register room transports.

    Called once per plugin manager. A route names the transport that carries the call leg into
    the room (``rooms.default_transport`` when it names none).

    :return: an iterable of :class:`~callbridge.plugin_types.RoomTransportPlugin`; each factory
        builds a :class:`callbridge.protocols.RoomTransport`.

    Example::

        @hookimpl
        def callbridge_room_transports():
            yield RoomTransportPlugin(name="local", factory=LocalRooms, config_model=LocalConfig)
    """


@hookspec
def callbridge_webhook_signers() -> Iterable[WebhookSignerPlugin]:
    """Register lifecycle-webhook signers.

    Called once per plugin manager; ``webhooks.signer`` names the one in use.

    :return: an iterable of :class:`~callbridge.plugin_types.WebhookSignerPlugin`; each factory
        builds a :class:`callbridge.protocols.WebhookSigner`.

    Example::

        @hookimpl
        def callbridge_webhook_signers():
            yield WebhookSignerPlugin(name="rsa_sha256", factory=RsaSha256Signer)
    """


@hookspec
def callbridge_ref_stores() -> Iterable[RefStorePlugin]:
    """Register stores for single-use call references.

    Called once per plugin manager; ``refs.store`` names the one in use.

    :return: an iterable of :class:`~callbridge.plugin_types.RefStorePlugin`; each factory builds
        a :class:`callbridge.protocols.RefStore`.

    Example::

        @hookimpl
        def callbridge_ref_stores():
            yield RefStorePlugin(name="memory", factory=MemoryRefStore)
    """
