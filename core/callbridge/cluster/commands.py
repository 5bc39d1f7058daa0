"""The commands a replica carries out for another: each acts on what this replica holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from callbridge.calls.state import EndReason
from callbridge.cluster.bus import Handler

if TYPE_CHECKING:
    from callbridge.runtime import Runtime

log = structlog.get_logger("callbridge.cluster")


def command_handlers(runtime: Runtime) -> dict[str, Handler]:
    """``hangup`` ``{callId, reason}``: end a call bridged here (the bridge hangs up at the
    provider and records the end, as for a local API hang-up)."""

    async def hangup(command: Mapping[str, Any]) -> None:
        call_id, reason = command.get("callId"), command.get("reason")
        call = runtime.active_calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            log.info("cluster hang-up for a call not bridged here", call_id=str(call_id)[:64])
            return
        try:
            end_reason = EndReason(str(reason))
        except ValueError:
            end_reason = EndReason.API_HANGUP
        log.info("call hung up for another replica", call_id=call_id, by=command.get("from"))
        call.request_hangup(end_reason)

    return {"hangup": hangup}
