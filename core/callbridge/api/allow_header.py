"""``OPTIONS`` answers whose ``Allow`` header lists every method of the path.

Litestar answers ``OPTIONS`` with a handler it creates for the first route handler registered
on a path, and that handler keeps the methods known at that moment: ``/v2/connectors`` said
``OPTIONS, POST`` although it also serves ``GET``. :func:`answer_options` is an app-level
``before_request`` hook that answers ``OPTIONS`` itself, from the routes of the finished app.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT


def allowed_methods(app: Litestar, path_template: str) -> list[str]:
    """Every HTTP method the app serves at ``path_template`` (``/v2/connectors/{connector_id}``),
    sorted; empty for a path it does not serve."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path_format == path_template:
            methods.update(route.methods)
    return sorted(methods)


async def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """``before_request`` hook: ``204`` with the path's full ``Allow`` header for ``OPTIONS``;
    ``None`` (carry on) for any other method."""
    if request.method != "OPTIONS":
        return None
    methods = allowed_methods(request.app, request.scope["path_template"])
    return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(methods)})
