"""The floor: the least a bridge can do, as a raw ASGI app under the same uvicorn settings.

``/twilio/{key}`` speaks the Twilio media protocol (the caller); ``/participant/{key}`` takes
binary PCM16-LE 16 kHz frames (room members; the first message they get is a ``joined`` event
like callbridge's). Each caller frame is decoded (μ-law → PCM16 8 kHz), upsampled by sample
repeat to 16 kHz and sent at once to every participant with the same key; each participant
frame is decimated to 8 kHz, μ-law encoded and sent at once to the caller as a Twilio ``media``
message. No mixer, no buffers, no pacing, no tasks besides uvicorn's own.

Run: ``python -m benchmarks.floor --port 8100``.
"""

from __future__ import annotations

import argparse
import binascii
import json
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callbridge.media.g711 import ulaw_decode, ulaw_encode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_JOINED = json.dumps(
    {
        "event": "joined",
        "roomId": "",
        "participantId": "floor",
        "sampleRate": 16000,
        "frameMs": 20,
        "encoding": "pcm_s16le",
    }
)
_MEDIA = '{"event":"media","streamSid":"%s","media":{"payload":"%s"}}'


@dataclass
class _Pair:
    caller: Send | None = None
    stream_sid: str = ""
    participants: list[Send] = field(default_factory=list)


_pairs: dict[str, _Pair] = {}


def _pair(key: str) -> _Pair:
    pair = _pairs.get(key)
    if pair is None:
        pair = _pairs[key] = _Pair()
    return pair


def _release(key: str) -> None:
    pair = _pairs.get(key)
    if pair is not None and pair.caller is None and not pair.participants:
        del _pairs[key]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The floor ASGI application."""
    kind = scope["type"]
    if kind == "websocket":
        path: str = scope["path"]
        if path.startswith("/twilio/"):
            await _caller(path[len("/twilio/") :], receive, send)
        elif path.startswith("/participant/"):
            await _participant(path[len("/participant/") :], receive, send)
        else:
            await send({"type": "websocket.close", "code": 4404})
    elif kind == "http":
        status = 200 if scope["path"] == "/healthz" else 404
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _caller(key: str, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    pair = _pair(key)
    pair.caller = send
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            if text is None:
                continue
            event = json.loads(text)
            kind = event.get("event")
            if kind == "media":
                pcm = ulaw_decode(binascii.a2b_base64(event["media"]["payload"]))
                frame = {"type": "websocket.send", "bytes": np.repeat(pcm, 2).tobytes()}
                for participant in pair.participants:
                    await participant(frame)
            elif kind == "start":
                sid = str(event.get("streamSid", ""))
                pair.stream_sid = sid if _SID.fullmatch(sid) else ""
            elif kind == "stop":
                await send({"type": "websocket.close", "code": 1000})
                return
    finally:
        pair.caller = None
        _release(key)


async def _participant(key: str, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": _JOINED})
    pair = _pair(key)
    pair.participants.append(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("bytes")
            caller = pair.caller
            if not data or caller is None:
                continue
            pcm = np.frombuffer(data, dtype="<i2")[::2]
            payload = binascii.b2a_base64(ulaw_encode(pcm), newline=False).decode("ascii")
            await caller({"type": "websocket.send", "text": _MEDIA % (pair.stream_sid, payload)})
    finally:
        pair.participants.remove(send)
        _release(key)


def main(argv: list[str] | None = None) -> None:
    """Serve the floor with the uvicorn settings of ``callbridge serve``."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        ws_max_size=16 * 1024 * 1024,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
