"""Liveness and readiness: ``GET /healthz`` (the process serves requests) and ``GET /readyz``
(it should get new work: not draining, its store, shared ref store and media clock healthy)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from callbridge.runtime import Runtime

log = structlog.get_logger("callbridge.health")

CHECK_SECONDS = 2.0
"""How long one readiness check may take before it counts as failed."""


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Alive: the event loop answers (a draining server is still alive)."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, Any]]:
    """Ready for new calls: ``200 {"status": "ready", "checks": {…}}``, else ``503`` with
    ``"draining"`` or the failed checks (``store``, ``ref_store``, ``media_clock``, and
    ``cluster``: the cluster bus' Redis, when ``cluster.redis_url`` is set)."""
    runtime: Runtime = state.runtime
    checks = {
        "store": await _passes(_store_answers(runtime)),
        "ref_store": await _passes(_ref_store_answers(runtime)),
        "media_clock": runtime.context.media_clock.healthy,
    }
    if runtime.bus is not None:
        checks["cluster"] = await _passes(runtime.bus.ping())
    if runtime.draining:
        status = "draining"
    elif all(checks.values()):
        status = "ready"
    else:
        status = "unhealthy"
        log.warning("not ready", failed=[name for name, ok in checks.items() if not ok])
    body = {"status": status, "checks": checks}
    return Response(body, status_code=200 if status == "ready" else 503)


async def _passes(check: Any) -> bool:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return bool(await check)
    except Exception:
        return False


async def _store_answers(runtime: Runtime) -> bool:
    async with runtime.db.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return True


async def _ref_store_answers(runtime: Runtime) -> bool:
    """A shared ref store answers its ``ping()``; one without (in-process) always does."""
    ping = getattr(runtime.ref_store, "ping", None)
    return True if ping is None else bool(await ping())
