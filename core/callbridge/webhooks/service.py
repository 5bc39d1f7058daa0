"""The webhook machinery of one process: the sender (signing, SSRF-safe transport) and the
delivery worker, started and stopped with the server."""

from __future__ import annotations

from callbridge.runtime import Runtime
from callbridge.webhooks.delivery import DeliveryWorker, Sender
from callbridge.webhooks.ssrf import Resolver, SystemResolver


class WebhookService:
    """Owns the :class:`Sender` and, unless ``webhooks.workers`` is off, a
    :class:`DeliveryWorker`."""

    def __init__(self, runtime: Runtime, resolver: Resolver | None = None) -> None:
        settings = runtime.settings.webhooks
        self.resolver = resolver or SystemResolver()
        self.sender = Sender(
            settings,
            runtime.signers,
            lambda: runtime.credential_box,
            runtime.tracer,
            runtime.clock,
            self.resolver,
        )
        self.worker = DeliveryWorker(
            runtime.db,
            self.sender,
            settings,
            runtime.instance_id,
            runtime.clock,
            metrics=runtime.metrics,
        )
        self._run_worker = settings.workers

    async def start(self) -> None:
        if self._run_worker:
            await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()

    async def flush(self) -> None:
        """Send every delivery due now and wait for the attempts (a draining server's last
        ones; what fails is retried later by any replica)."""
        if self._run_worker:
            await self.worker.flush()
