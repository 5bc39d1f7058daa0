"""Which codec and markup style a call gets: the route's, else the connector's, else the
provider's default."""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.calls.intake import stream_options
from callbridge.protocols import CodecSpec, Route

PCMU, PCMA = CodecSpec("PCMU", 8000), CodecSpec("PCMA", 8000)
L16_8K, L16_16K = CodecSpec("L16", 8000), CodecSpec("L16", 16000)


@dataclass
class Provider:
    supported_codecs: tuple[CodecSpec, ...] = (PCMU, PCMA, L16_8K, L16_16K)


@dataclass
class Connector:
    codec: str | None = None
    sample_rate: int | None = None
    markup_style: str | None = None


def route(codec: CodecSpec | None = None) -> Route:
    return Route(room_id="r", strategy="test", codec=codec)


def test_provider_default_when_nothing_asks() -> None:
    assert stream_options(Provider(), Connector(), route()).codec == PCMU


def test_connector_codec_and_rate() -> None:
    assert stream_options(Provider(), Connector("PCMA"), route()).codec == PCMA
    assert stream_options(Provider(), Connector("L16", 16000), route()).codec == L16_16K
    assert stream_options(Provider(), Connector("L16"), route()).codec == L16_8K


def test_route_decision_wins_over_the_connector() -> None:
    options = stream_options(Provider(), Connector("PCMA"), route(L16_16K))
    assert options.codec == L16_16K


def test_unsupported_route_codec_falls_back_to_the_connector() -> None:
    options = stream_options(Provider((PCMU, PCMA)), Connector("PCMA"), route(L16_16K))
    assert options.codec == PCMA


def test_markup_style_comes_from_the_connector() -> None:
    assert (
        stream_options(Provider(), Connector(markup_style="start"), route()).markup_style == "start"
    )
    assert stream_options(Provider(), Connector(), route()).markup_style is None
