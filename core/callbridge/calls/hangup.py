"""Ending a call at the provider, through its REST API and the connector's credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog
from opentelemetry import trace

from callbridge.protocols import HangupResult, HangupTarget, WebhookError
from callbridge.store.repository import transaction

if TYPE_CHECKING:
    from callbridge.runtime import Runtime

log = structlog.get_logger("callbridge.calls.hangup")


class CallAtProvider(Protocol):
    """What names a call at its provider: a call row, or the ref record of a claimed call."""

    @property
    def apikey(self) -> str: ...
    @property
    def connector_id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def provider_call_id(self) -> str: ...
    @property
    def account_id(self) -> str | None: ...


async def hang_up_at_provider(runtime: Runtime, call: CallAtProvider) -> HangupResult | None:
    """Ask the provider's REST API to end ``call``, with its connector's credentials.

    Returns ``None`` when it could not be asked (no credentials, unknown provider or
    connector). Failures are logged, never raised.
    """
    apikey, connector_id = call.apikey, call.connector_id
    target = HangupTarget(call.provider_call_id, call.account_id)
    provider = runtime.providers.get(call.provider)
    if provider is None:
        return None
    try:
        async with transaction(runtime.db, runtime.clock) as repo:
            connector = await repo.get_connector(apikey, connector_id)
        credentials = runtime.optional_credentials(connector) if connector else None
    except WebhookError as exc:
        log.warning("provider hang-up skipped", reason=str(exc))
        return None
    if credentials is None:
        log.info("provider hang-up skipped", reason="connector holds no provider credentials")
        return None
    result = await provider.hangup(target, credentials)
    trace.get_current_span().add_event(
        "provider hang-up",
        {"ok": result.ok, "status": result.status, "already_ended": result.already_ended},
    )
    if result.ok:
        log.info("provider hang-up done", status=result.status, already_ended=result.already_ended)
    else:
        log.warning("provider hang-up failed", status=result.status, detail=result.detail)
    return result
