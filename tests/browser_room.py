"""A real headless Chromium on the room page, with a simulated phone caller in the room: run
inside a network namespace made by ``tests/test_rtc_browser.py`` (``unshare -n``, ``lo`` up and
a veth pair carrying 10.77.0.1, so ICE has a non-loopback host candidate on both sides without
patching any library), it writes what it measured to a JSON file the test then checks.

Usage: ``python -m tests.browser_room WORKDIR`` → ``WORKDIR/result.json``.

The browser is driven over the Chrome DevTools Protocol (raw, with ``websockets``): the page
joins through its own form, buttons are clicked as a person would, and the page's own
``callbridgeMeasure`` reads what it hears. Chromium's fake microphone plays a 1000 Hz WAV; the
caller (Plivo's protocol, so DTMF can reach it) sends 440 Hz.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callbridge.media.analysis import dominant_frequency, level_dbfs, trim_silence
from tests.baresip import tone_wav
from tests.live_calls import plivo_caller
from tests.servers import create_connector, start_in_process

ROOM = "demo"
MIC_HZ = 1000.0
PAGE_READY = "document.readyState === 'complete' && document.getElementById('join-form') !== null"


class Cdp:
    """Just enough of the DevTools protocol: calls by id, results by value."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        await self.socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        async with asyncio.timeout(20):
            answer = await future
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, within: float = 15.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.socket:
                message = json.loads(raw)
                waiting = self._waiting.pop(message.get("id", -1), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)


@contextlib.asynccontextmanager
async def chromium(workdir: Path, url: str, microphone: Path) -> AsyncIterator[Cdp]:
    binary = shutil.which("chromium")
    if binary is None:
        raise RuntimeError("chromium is not installed")
    profile = workdir / "profile"
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--disable-background-networking",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=420,900",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
    ]
    process, log = _launch([binary, *flags, url], workdir / "chromium.log")
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
                await asyncio.sleep(0.05)
        async with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as socket:
            cdp = Cdp(socket)
            await cdp.call("Runtime.enable")
            yield cdp
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _launch(command: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], Any]:
    log = log_path.open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log


def heard(pcm: np.ndarray, rate: int = 8000) -> dict[str, float]:
    """Dominant frequency, level (dBFS) and seconds of what was heard past the silence."""
    tone = trim_silence(pcm, rate)
    if len(tone) < rate // 4:
        return {"hz": 0.0, "dbfs": -120.0, "seconds": len(tone) / rate, "mean_abs": 0.0}
    return {
        "hz": float(dominant_frequency(tone, rate)),
        "dbfs": float(level_dbfs(tone)),
        "seconds": len(tone) / rate,
        "mean_abs": float(np.abs(pcm.astype(float)).mean()) if len(pcm) else 0.0,
    }


def quiet(pcm: np.ndarray) -> dict[str, float]:
    return {
        "mean_abs": float(np.abs(pcm.astype(float)).mean()) if len(pcm) else -1.0,
        "samples": float(len(pcm)),
    }


async def _events(socket: ClientConnection, seen: list[dict[str, Any]]) -> None:
    with contextlib.suppress(Exception):
        async for message in socket:
            if isinstance(message, str):
                seen.append(json.loads(message))


async def click(cdp: Cdp, selector: str) -> None:
    await cdp.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


async def run(workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    server = start_in_process(workdir / "server")
    try:
        connector = create_connector(
            server.url, server.token(), provider="plivo", defaultRoomId=ROOM
        )
        call_uuid = str(uuid.uuid4())
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                connector.webhook_url,
                data={"CallUUID": call_uuid, "From": "14155550100", "To": "14155550199"},
            )
        stream = ET.fromstring(answer.text).find("Stream")
        assert stream is not None and stream.text
        microphone = tone_wav(workdir / "mic.wav", MIC_HZ, 60, rate=48000)
        room_token = server.token(room_id=ROOM)
        page = f"{server.url}/rooms/{ROOM}#token={room_token}&name=Browser&processing=off"
        async with (
            plivo_caller(stream.text, call_uuid) as caller,
            chromium(workdir, page, microphone) as cdp,
        ):
            await cdp.until(PAGE_READY)
            await cdp.evaluate("document.getElementById('join-form').requestSubmit()")
            result["participant_id"] = await cdp.until("window.callbridge.me")
            started = time.monotonic()
            await asyncio.sleep(2.5)
            result["caller_heard"] = heard(caller.heard.since(started + 0.5))
            result["browser_heard"] = await cdp.evaluate("window.callbridgeMeasure(1)")
            result["caller_level"] = await cdp.evaluate(
                "[...window.callbridge.members.values()].filter(m => m.kind === 'caller')"
                ".map(m => m.level)[0]"
            )
            result["members_text"] = await cdp.evaluate(
                "document.getElementById('members').innerText"
            )
            result["calls_text"] = await cdp.evaluate("document.getElementById('calls').innerText")
            shot = await cdp.call("Page.captureScreenshot", format="png")
            (workdir / "call.png").write_bytes(base64.b64decode(shot["data"]))
            result["screenshot"] = str(workdir / "call.png")

            await click(cdp, "#mute")
            muted_at = time.monotonic()
            await asyncio.sleep(1.2)
            result["caller_heard_muted"] = quiet(caller.heard.since(muted_at + 0.4))
            await click(cdp, "#mute")
            unmuted_at = time.monotonic()
            await asyncio.sleep(1.5)
            result["caller_heard_unmuted"] = heard(caller.heard.since(unmuted_at + 0.4))

            await click(cdp, "#hold")
            await asyncio.sleep(1.0)
            result["browser_heard_held"] = await cdp.evaluate("window.callbridgeMeasure(0.6)")
            await click(cdp, "#hold")
            await asyncio.sleep(1.5)
            result["browser_heard_resumed"] = await cdp.evaluate("window.callbridgeMeasure(0.6)")

            await click(cdp, "#dialpad button[aria-label='digit 5']")
            await asyncio.sleep(0.5)
            result["caller_texts"] = [text for text in caller.texts if "DTMF" in json.dumps(text)]

            observer_url = (
                f"ws://127.0.0.1:{server.port}/v2/rooms/{ROOM}/participants?token={server.token()}"
            )
            async with connect(observer_url, open_timeout=5) as observer:
                seen: list[dict[str, Any]] = []
                watching = asyncio.ensure_future(_events(observer, seen))
                await asyncio.sleep(0.3)
                await cdp.evaluate("window.callbridge.ws.close()")
                result["status_after_reconnect"] = await cdp.until(
                    "document.getElementById('status').textContent.includes('reconnected')"
                    " && document.getElementById('status').textContent"
                )
                result["member_after_reconnect"] = await cdp.evaluate("window.callbridge.me")
                reconnected_at = time.monotonic()
                await asyncio.sleep(1.5)
                result["caller_heard_reconnected"] = heard(caller.heard.since(reconnected_at + 0.3))
                watching.cancel()
                result["observer_saw"] = [
                    event.get("event")
                    for event in seen
                    if event.get("participantId") == result["participant_id"]
                ]

            other = server.token(room_id="another-room")
            await cdp.call(
                "Page.navigate",
                url=f"{server.url}/rooms/{ROOM}?again=1#token={other}&name=Intruder",
            )
            await cdp.until(f"location.search === '?again=1' && {PAGE_READY}")
            await cdp.evaluate("document.getElementById('join-form').requestSubmit()")
            result["other_room_status"] = await cdp.until(
                "document.getElementById('status').textContent.startsWith('Refused')"
                " && document.getElementById('status').textContent"
            )
    finally:
        server.stop()
    return result


def main() -> int:
    workdir = Path(sys.argv[1])
    workdir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(workdir))
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
