"""Provider-facing endpoints: the voice webhook and the media socket."""

from __future__ import annotations

from urllib.parse import parse_qs

from litestar import Request, Response, asgi, route
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.types import Receive, Scope, Send

from callbridge.api.channel import AsgiSocketChannel
from callbridge.api.openapi import WEBHOOK_RESPONSES
from callbridge.api.raw_socket import (
    accept,
    not_a_websocket,
    query_param,
    server_send,
    socket_headers,
)
from callbridge.api.shapes import runtime_of
from callbridge.calls.claim import abandon_claimed_call, claim_ref, run_claimed_call
from callbridge.calls.intake import handle_voice_webhook
from callbridge.protocols import WebhookRequest
from callbridge.runtime import Runtime

MAX_WEBHOOK_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


@route(
    "/v2/hooks/{provider:str}/{webhook_key:str}",
    http_method=["GET", "POST"],
    status_code=200,
    request_max_body_size=MAX_WEBHOOK_BYTES,
    include_in_schema=True,
    summary="Provider voice webhook",
    description="The URL a connector's provider calls when a call arrives (`webhookUrl`), with "
    "the provider's own parameters (a form body or the query; JSON for custom clients) and an "
    'optional `?roomId=`. Answers with the provider\'s markup; errors are `{"message": …}`.',
    responses=WEBHOOK_RESPONSES,
    tags=["hooks"],
)
async def voice_webhook(request: Request, provider: str, webhook_key: str) -> Response[str]:  # type: ignore[type-arg]
    runtime = runtime_of(request)
    body = await request.body()
    params: dict[str, list[str]] = {}
    query = request.scope.get("query_string", b"").decode("latin-1")
    for name, values in parse_qs(query, keep_blank_values=True).items():
        params.setdefault(name, []).extend(values)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and content_type == FORM_TYPE:
        form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        for name, values in form.items():
            params.setdefault(name, []).extend(values)
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    public_url = runtime.settings.server.api_url + raw_path.decode("latin-1")
    if query:
        public_url += "?" + query
    webhook_request = WebhookRequest(
        method=request.method,
        public_url=public_url,
        headers={name.lower(): value for name, value in request.headers.items()},
        params=params,
        body=body,
    )
    answer = await handle_voice_webhook(runtime, provider, webhook_key, webhook_request)
    if not answer.found:
        raise NotFoundException()
    return Response(
        answer.body,
        status_code=answer.status,
        media_type=answer.media_type,
        headers=dict(answer.headers),
    )


async def _ingest(scope: Scope, receive: Receive, send: Send, provider: str, ref: str) -> None:
    if scope["type"] != ScopeType.WEBSOCKET:
        await not_a_websocket(scope, receive, send)
        return
    runtime: Runtime = scope["app"].state.runtime
    record = await claim_ref(
        runtime,
        provider,
        ref,
        public_url=_public_ingest_url(runtime, scope),
        headers=socket_headers(scope),
    )
    if record is None:
        # Closing before accepting makes the server refuse the handshake (HTTP 403).
        await send({"type": "websocket.close", "code": 4403, "reason": ""})
        return
    if not await accept(receive, send):  # the provider went away during the handshake
        await abandon_claimed_call(runtime, record)
        return
    await run_claimed_call(runtime, record, AsgiSocketChannel(receive, server_send(scope, send)))


def _public_ingest_url(runtime: Runtime, scope: Scope) -> str:
    """The URL the provider connected to, as configured publicly (proxies rewrite hosts)."""
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    suffix = raw_path[len("/ingest") :] if raw_path.startswith("/ingest") else raw_path
    query = scope.get("query_string", b"").decode("latin-1")
    return runtime.settings.server.ingest_url + suffix + (f"?{query}" if query else "")


@asgi("/ingest/{provider:str}/{ref:str}")
async def ingest_with_path_ref(scope: Scope, receive: Receive, send: Send) -> None:
    """Provider media socket; the single-use ref is the last path segment.

    A raw ASGI handler: Litestar routes it, the media path reads and writes the server's own
    ``receive``/``send`` with no per-message wrapper.
    """
    params = scope["path_params"]
    await _ingest(scope, receive, send, params["provider"], params["ref"])


@asgi("/ingest/{provider:str}")
async def ingest_with_query_ref(scope: Scope, receive: Receive, send: Send) -> None:
    """Provider media socket with the ref in ``?ref=`` (VideoSDK's URL form)."""
    ref = query_param(scope, "ref") or ""
    await _ingest(scope, receive, send, scope["path_params"]["provider"], ref)
