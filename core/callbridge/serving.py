"""uvicorn's server with callbridge's graceful drain on SIGTERM, and the uvicorn options that
follow from callbridge's settings."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any

import uvicorn

from callbridge.drain import Drain
from callbridge.settings import ServerSettings


def proxy_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn's proxy-header options for ``server.trusted_proxies``: ``X-Forwarded-For`` (and
    ``-Proto``) are believed only from those networks, and not at all without any (uvicorn's
    own default would trust 127.0.0.1)."""
    networks = server.trusted_proxies
    return {"proxy_headers": bool(networks), "forwarded_allow_ips": list(networks) or None}


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that the first SIGTERM drains (:mod:`callbridge.drain`) before
    stopping: the server keeps serving (``/readyz`` says 503) until the drain is over. SIGINT,
    or a second SIGTERM, stops at once as uvicorn does."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig == signal.SIGTERM and loop is not None and not self._drain.started:
            loop.call_soon_threadsafe(self._drain.begin, self._stop)
            return
        super().handle_exit(sig, frame)

    def _stop(self) -> None:
        self.should_exit = True
