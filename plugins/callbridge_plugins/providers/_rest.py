"""The REST side the CPaaS providers share: an HTTP client opened on first use, its closing, and
the hang-up request with its mapping to :class:`HangupResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from callbridge.protocols import HangupResult

API_TIMEOUT_SECONDS = 10.0
"""Default time limit of one REST request to a provider."""


class RestClient:
    """Mixin of a provider that calls its CPaaS's REST API through one lazily opened client."""

    _http: httpx.AsyncClient | None = None

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=API_TIMEOUT_SECONDS)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = self._new_client()
        return self._http

    async def _hangup_request(
        self,
        method: str,
        url: str,
        refusal: Callable[[httpx.Response], tuple[bool, str]],
        *,
        success_detail: str = "",
        **request: Any,
    ) -> HangupResult:
        """Send the hang-up request; never raises.

        2xx is ``ok``. Otherwise ``refusal(response)`` says whether the answer means the call had
        already ended (``ok`` too) and gives the detail. A request that fails is not ``ok``.
        """
        try:
            response = await self._client().request(method, url, **request)
        except httpx.HTTPError as exc:
            return HangupResult(ok=False, detail=f"request failed: {type(exc).__name__}")
        status = response.status_code
        if response.is_success:
            return HangupResult(ok=True, status=status, detail=success_detail)
        already_ended, detail = refusal(response)
        return HangupResult(
            ok=already_ended, already_ended=already_ended, status=status, detail=detail
        )

    async def aclose(self) -> None:
        """Close the REST client, if one was opened."""
        if self._http is not None:
            client, self._http = self._http, None
            await client.aclose()
