"""baresip (Debian ``baresip-core``) as the SIP test client, driven over its JSON control
socket (``ctrl_tcp``: netstrings ``<len>:<json>,``), as ``../shared/research/sip-feasibility.md``
describes: one config folder per test, a tone WAV (8 kHz mono) as its microphone, what it hears
recorded to ``rec/dump-*-dec.wav``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.servers import free_port
from tests.services import require_or_skip

MODULES = "/usr/lib/baresip/modules"


def tone_wav(path: Path, frequency: float, seconds: float, rate: int = 8000) -> Path:
    """A mono 16-bit tone at half scale (baresip's G.711 source must be 8 kHz mono)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@dataclass
class Baresip:
    """A running baresip and its control socket."""

    folder: Path
    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    events: list[dict[str, Any]] = field(default_factory=list)
    _replies: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _token: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def command(self, command: str, params: str = "") -> dict[str, Any]:
        """Send a control command and wait for its reply."""
        self._token += 1
        token = str(self._token)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[token] = reply
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.writer.write(str(len(body)).encode() + b":" + body + b",")
        await self.writer.drain()
        async with asyncio.timeout(10):
            return await reply

    async def wait_event(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        """The first event of ``kind`` (``CALL_ESTABLISHED``, ``CALL_CLOSED``, …)."""
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if event.get("type") == kind:
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    def recordings(self, suffix: str = "dec") -> list[Path]:
        """What baresip heard (``dec``) or sent (``enc``), one WAV per call."""
        return sorted((self.folder / "rec").glob(f"dump-*-{suffix}.wav"))

    async def _read_forever(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int((await self.reader.readuntil(b":"))[:-1])
                frame = json.loads((await self.reader.readexactly(length + 1))[:-1])
                if frame.get("response"):
                    waiting = self._replies.pop(str(frame.get("token")), None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(frame)
                elif frame.get("event"):
                    self.events.append(frame)
                    self._arrived.set()


def _start(
    folder: Path, user: str, password: str, source: Path | None, codecs: str
) -> tuple[subprocess.Popen[bytes], int, Any]:
    """Write baresip's config folder and start it; its process, control port and log file."""
    binary = shutil.which("baresip")
    if binary is None:
        require_or_skip("baresip (Debian baresip-core) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec").mkdir(exist_ok=True)
    control = free_port()
    rtp_low = min(free_port(), 65000) & ~1  # a range that is very likely free
    if source is None:  # ausine needs 48 kHz stereo settings that aufile cannot take
        source = tone_wav(folder / "silence.wav", 0.0, 60)
    (folder / "config").write_text(
        "\n".join(
            [
                "poll_method epoll",
                "sip_listen 127.0.0.1:0",
                "net_interface 127.0.0.1",
                "call_local_timeout 30",
                "call_max_calls 4",
                "audio_buffer 20-160",
                f"audio_source aufile,{source}",
                "audio_player aubridge,nullsink",
                f"rtp_ports {rtp_low}-{rtp_low + 200}",
                "rtcp_mux no",
                "jitter_buffer_delay 5-10",
                "rtp_stats yes",
                "statmode_default off",
                f"module_path {MODULES}",
                "module g711.so",
                "module aubridge.so",
                "module aufile.so",
                "module ausine.so",
                "module sndfile.so",
                "module_tmp account.so",
                "module_app menu.so",
                "module_app ctrl_tcp.so",
                f"ctrl_tcp_listen 127.0.0.1:{control}",
                f"snd_path {folder / 'rec'}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    (folder / "accounts").write_text(
        f"<sip:{user}@127.0.0.1>;auth_pass={password};regint=0;audio_codecs={codecs}\n",
        encoding="utf-8",
    )
    log = (folder / "baresip.log").open("wb")
    process = subprocess.Popen(
        [binary, "-f", str(folder)],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, control, log


@contextlib.asynccontextmanager
async def baresip(
    folder: Path,
    *,
    user: str = "alice",
    password: str = "secret",
    source: Path | None = None,
    codecs: str = "pcmu,pcma",
) -> AsyncIterator[Baresip]:
    """baresip with an account ``user``/``password`` (no registration), ``source`` as its
    microphone (a minute of silence when ``None``; baresip hangs up when the file ends),
    started in ``folder`` and quit on exit."""
    process, control, log = _start(folder, user, password, source, codecs)
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", control)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(
                        "baresip exited: " + (folder / "baresip.log").read_text(errors="replace")
                    ) from None
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("baresip's control socket never opened")
        client = Baresip(folder, process, reader, writer)
        client._task = asyncio.create_task(client._read_forever())
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.command("quit")
            client._task.cancel()
            writer.close()
    finally:
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        log.close()
