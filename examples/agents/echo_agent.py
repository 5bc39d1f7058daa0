"""A minimal voice agent for callbridge's ``websocket`` room transport: it echoes the caller.

Run it, then point the transport at it::

    python examples/agents/echo_agent.py --port 9000

    # callbridge.yaml
    rooms:
      enabled: [local, websocket]
      default: websocket            # or name the transport in a route
      config: {websocket: {url: "ws://127.0.0.1:9000/agent/{callId}"}}

callbridge connects to it once per call and sends a ``start`` message, then 20 ms binary frames
of PCM16-LE at ``sampleRate`` (what the caller says) and JSON events. The agent sends every
frame straight back, so the caller hears themselves. After each second of echoed audio it
places a ``mark``; callbridge answers with the same mark and ``"status": "played"`` once the
caller has heard that audio, which the agent prints with the round trip time. Pressing ``*``
clears the echo not played yet; ``#`` hangs up.

Depends only on ``websockets`` and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

MARK_EVERY_FRAMES = 50

log = logging.getLogger("echo_agent")


async def handle(socket: ServerConnection) -> None:
    """One call: echo audio, place marks, answer keypad presses."""
    frames = 0
    marks: dict[str, float] = {}
    call = "?"
    try:
        async for message in socket:
            if isinstance(message, bytes):
                await socket.send(message)
                frames += 1
                if frames % MARK_EVERY_FRAMES == 0:
                    name = f"echo-{frames // MARK_EVERY_FRAMES}"
                    marks[name] = time.monotonic()
                    await socket.send(json.dumps({"event": "mark", "name": name}))
                continue
            event = json.loads(message)
            kind = event.get("event")
            if kind == "start":
                call = event.get("callId") or event.get("roomId")
                log.info(
                    "start: call %s from %s to %s at %s Hz",
                    call,
                    event.get("caller"),
                    event.get("callee"),
                    event.get("sampleRate"),
                )
            elif kind == "mark" and event.get("name") in marks:
                sent = marks.pop(event["name"])
                log.info(
                    "%s: mark %s %s after %.0f ms",
                    call,
                    event["name"],
                    event.get("status"),
                    (time.monotonic() - sent) * 1000,
                )
            elif kind == "dtmf" and event.get("digit") == "*":
                await socket.send(json.dumps({"event": "clear"}))
            elif kind == "dtmf" and event.get("digit") == "#":
                await socket.send(json.dumps({"event": "hangup", "reason": "caller pressed #"}))
            elif kind == "stop":
                log.info("%s: stop (%s) after %d frames", call, event.get("reason"), frames)
            else:
                log.info("%s: %s", call, message)
    except ConnectionClosed:
        log.info("%s: connection closed after %d frames", call, frames)


async def main(host: str, port: int) -> None:
    async with serve(handle, host, port, compression=None) as server:
        log.info("echo agent listening on ws://%s:%d/", host, port)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Echo voice agent for callbridge rooms.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        asyncio.run(main(arguments.host, arguments.port))
    except KeyboardInterrupt:
        pass
