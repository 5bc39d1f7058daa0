"""Which region a call belongs to, and so which ingest URL its markup's socket uses.

In order: the deciding rule's ``region``, the connector's, the region whose ``countries``
include the caller's country, ``routing.default_region``; with none of these the call has no
region and uses ``server.public_ingest_url``.
"""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.routing.numbers import Address, country_of
from callbridge.settings import RoutingSettings


@dataclass(frozen=True)
class RegionChoice:
    """The call's region (``None``: none), the ingest URL it means, and why."""

    name: str | None
    ingest_url: str
    reason: str

    def to_json(self) -> dict[str, str | None]:
        return {"region": self.name, "ingestUrl": self.ingest_url, "reason": self.reason}


def home_country(routing: RoutingSettings, connector_region: str | None) -> str | None:
    """The country for national-format numbers of a connector's calls: its region's, else
    ``routing.default_country``, else the default region's."""
    region = routing.regions.get(connector_region) if connector_region else None
    if region is not None and region.home_country is not None:
        return region.home_country
    if routing.default_country is not None:
        return routing.default_country
    fallback = routing.regions.get(routing.default_region) if routing.default_region else None
    return None if fallback is None else fallback.home_country


def choose_region(
    routing: RoutingSettings,
    server_ingest_url: str,
    *,
    rule_region: str | None,
    connector_region: str | None,
    caller: Address | None,
) -> RegionChoice:
    """The region of a call (see the module's order)."""
    for pinned, by_whom in ((rule_region, "the rule"), (connector_region, "the connector")):
        if pinned is None:
            continue
        region = routing.regions.get(pinned)
        if region is None:
            return RegionChoice(
                pinned,
                server_ingest_url,
                f"{by_whom} pins region {pinned}, which is not configured: "
                "using server.public_ingest_url",
            )
        return RegionChoice(pinned, region.ingest_url, f"{by_whom} pins region {pinned}")
    country = country_of(caller)
    if country is not None:
        for name, region in routing.regions.items():
            if country in region.countries:
                return RegionChoice(
                    name,
                    region.ingest_url,
                    f"the caller {caller} is in {country}, served by {name}",
                )
    if routing.default_region is not None:
        region = routing.regions[routing.default_region]
        return RegionChoice(routing.default_region, region.ingest_url, "routing.default_region")
    return RegionChoice(None, server_ingest_url, "no region applies")
