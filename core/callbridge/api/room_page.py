"""``GET /rooms/{roomId}``: the browser page that joins a room over WebRTC (plain HTML and JS,
no build step, no external assets). The token comes in the URL fragment (``#token=…``, never
sent to the server in the request) or through the page's join form."""

from __future__ import annotations

from functools import cache
from importlib import resources

from litestar import Response, get
from litestar.enums import MediaType

from callbridge.store.ids import is_room_id

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _page() -> str:
    return resources.files("callbridge.web").joinpath("room.html").read_text(encoding="utf-8")


@get("/rooms/{room_id:str}", include_in_schema=False, media_type=MediaType.HTML)
async def room_page(room_id: str) -> Response[str]:
    """The room's page (the same for every room: it reads the room id from its URL)."""
    if not is_room_id(room_id):
        return Response("not a room id\n", status_code=404, media_type=MediaType.TEXT)
    return Response(_page(), media_type=MediaType.HTML, headers=_HEADERS)
