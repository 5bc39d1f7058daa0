"""Shared fixtures: real servers over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_provider_api import FakeProviderApi, running_fake_provider_api
from tests.servers import (
    FakeClock,
    InProcessServer,
    ServerProcess,
    running_in_process,
    start_process,
)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(tmp_path: Path, fake_clock: FakeClock) -> Iterator[InProcessServer]:
    """callbridge in a background thread, with an injected clock and two test API keys."""
    with running_in_process(tmp_path, clock=fake_clock) as running:
        yield running


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """`callbridge serve` as a child process on embedded defaults plus a temp data folder."""
    running = start_process(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fake_provider_api() -> Iterator[FakeProviderApi]:
    """A local fake of the providers' REST APIs that records what it receives."""
    with running_fake_provider_api() as api:
        yield api
