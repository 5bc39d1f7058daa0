"""What every provider simulator does the same way while it plays one call against a server.

Each simulator (``callbridge call --provider NAME``) subclasses :class:`SimulatedCall` and keeps
its provider's own messages, signatures and checks; this module holds the provider-neutral
parts: requesting the voice webhook, opening the media socket, pacing the caller's audio and
DTMF in real time, playing the server's audio out, reading the server's messages, running
those side by side until one end hangs up, and building the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from callbridge.clients.audio import Recorder, Summary, summarize_recording
from callbridge.clients.call import CallOptions
from callbridge.clients.playback import PlaybackBuffer
from callbridge.media.framing import Pacer

FRAME_SECONDS = 0.02
"""The caller sends one frame of audio, and hears one, every 20 ms."""
DTMF_SPACING_SECONDS = 0.25
"""Time between two key presses of ``CallOptions.dtmf``."""
HTTP_TIMEOUT_SECONDS = 10.0
"""Timeout of the webhook request and of the media-socket handshake."""
MAX_ERROR_EVENTS = 50
"""``protocol-error`` events listed in a summary; past that only their total is."""


async def fetch_webhook(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    form: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response | str:
    """Request the voice webhook; the response when it succeeded, else the call's outcome.

    ``form`` is sent as a form body, ``content`` as a raw one. The outcome is ``webhook
    failed: HTTP <code>`` for a non-2xx answer, ``webhook failed: <error>: <detail>`` when
    the request itself failed.
    """
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
            response = await http.request(method, url, headers=headers, data=form, content=content)
    except httpx.HTTPError as exc:
        return f"webhook failed: {type(exc).__name__}: {exc}"
    if not response.is_success:
        return f"webhook failed: HTTP {response.status_code}"
    return response


async def send_frames(
    options: CallOptions,
    *,
    dtmf: Callable[[int, str], Awaitable[None]],
    frame: Callable[[int], Awaitable[None]],
    media: bool = True,
) -> None:
    """Play the caller in real time: one tick every 20 ms, from tick 0, for ``options.seconds``.

    At each tick the keys of ``options.dtmf`` that are due are pressed (``dtmf(tick, digit)``;
    the first ``options.dtmf_delay`` seconds in, the next ones 250 ms apart), then one frame
    of audio is sent (``frame(tick)``) unless ``media`` is false. Ticks go on past
    ``options.seconds``, without audio, until the last key has been pressed.
    """
    call_ticks = round(options.seconds / FRAME_SECONDS)
    media_ticks = call_ticks if media else 0
    digits = deque(
        (round((options.dtmf_delay + i * DTMF_SPACING_SECONDS) / FRAME_SECONDS), digit)
        for i, digit in enumerate(options.dtmf)
    )
    last_tick = max(call_ticks, digits[-1][0] + 1 if digits else 0)
    pacer = Pacer(FRAME_SECONDS, lead=0)
    for tick in range(last_tick):
        await pacer.wait()
        while digits and digits[0][0] <= tick:
            _, digit = digits.popleft()
            await dtmf(tick, digit)
        if tick < media_ticks:
            await frame(tick)


async def play_out(
    playback: PlaybackBuffer,
    frame_bytes: int,
    *,
    hear: Callable[[bytes], None],
    reached: Callable[[str], Awaitable[None]],
) -> None:
    """Play ``playback`` out in real time, until cancelled.

    Every 20 ms up to ``frame_bytes`` of audio are taken: ``hear(audio)`` when there were any,
    then ``reached(name)`` for each mark played past.
    """
    pacer = Pacer(FRAME_SECONDS, lead=0)
    while True:
        await pacer.wait()
        audio, marks = playback.play(frame_bytes)
        if audio:
            hear(audio)
        for name in marks:
            await reached(name)


class SimulatedCall:
    """The state and steps that every simulated provider call shares.

    Attributes:
        options: the call to play.
        events: the summary's events, in order.
        error_count: ``protocol-error`` events raised, listed or not.
        frames_sent: audio frames the caller sent.
        frames_received: audio messages the server sent.
        frame_sizes: how many received audio payloads had each size, in bytes.
        recorder: what the caller heard.
        socket: the media socket, once open.
        send_lock: held while a message is being sent, so sends from tasks never interleave.
    """

    def __init__(self, options: CallOptions, sample_rate: int) -> None:
        self.options = options
        self.events: list[dict[str, Any]] = []
        self.error_count = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.frame_sizes: Counter[int] = Counter()
        self.recorder = Recorder(sample_rate)
        self.socket: ClientConnection | None = None
        self.send_lock = asyncio.Lock()

    def protocol_error(self, reason: str) -> None:
        """Record a departure from the protocol (only the first ``MAX_ERROR_EVENTS`` listed)."""
        self.error_count += 1
        if self.error_count <= MAX_ERROR_EVENTS:
            self.events.append({"event": "protocol-error", "reason": reason})

    def json_object(self, message: str) -> dict[str, Any] | None:
        """``message`` as a JSON object, or ``None`` after recording why it is not one."""
        try:
            data = json.loads(message)
        except ValueError:
            self.protocol_error("message is not JSON")
            return None
        if not isinstance(data, dict):
            self.protocol_error("message is not a JSON object")
            return None
        return data

    async def echo_mark(self, name: str, *, cleared: bool) -> None:
        """Tell the server a mark was reached (or flushed by a clear), in its protocol."""
        raise NotImplementedError

    async def place_mark(self, playback: PlaybackBuffer, name: str) -> None:
        """The server placed a mark: it is reached once the audio queued before it has played,
        or at once when nothing is queued."""
        if playback.add_mark(name):
            await self.echo_mark(name, cleared=False)

    async def clear_playback(self, playback: PlaybackBuffer) -> None:
        """The server cleared: drop unplayed audio and echo every pending mark as cleared (what
        Twilio, Telnyx and callbridge's custom clients do; Plivo does not)."""
        dropped, marks = playback.clear()
        self.events.append({"event": "clear", "droppedBytes": dropped})
        for name in marks:
            await self.echo_mark(name, cleared=True)

    def bad_frame_size_events(self, is_bad: Callable[[int], bool]) -> list[dict[str, Any]]:
        """A ``bad-frame-size`` event for the received payload sizes ``is_bad`` picks, if any."""
        bad = {size: n for size, n in self.frame_sizes.items() if is_bad(size)}
        if not bad:
            return []
        return [{"event": "bad-frame-size", "count": sum(bad.values()), "sizes": sorted(bad)}]

    def closing_events(self) -> list[dict[str, Any]]:
        """Events a simulator adds once, at the end of the call; none unless overridden."""
        return []

    def summary(self, outcome: str) -> Summary:
        """End the call with ``outcome``: add the closing events, write the recording, report.

        The recording is written to ``options.record_path`` only when the media socket opened.
        """
        self.events.extend(self.closing_events())
        if self.error_count > MAX_ERROR_EVENTS:
            self.events.append({"event": "protocol-errors", "total": self.error_count})
        if self.options.record_path and self.socket is not None:
            self.recorder.write(self.options.record_path)
        return summarize_recording(
            self.recorder,
            outcome=outcome,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            events=self.events,
        )

    async def open_media_socket(
        self,
        url: str,
        stream: Callable[[ClientConnection], Awaitable[str]],
        *,
        headers: dict[str, str] | None = None,
        **connect_options: Any,
    ) -> str:
        """Open the media socket at ``url``, run ``stream`` on it and return the call's outcome.

        ``connect_options`` go to :func:`websockets.asyncio.client.connect` (a provider's
        ``user_agent_header``, ``max_size``). The outcome is what ``stream`` returned,
        ``refused: HTTP <code>`` when the server refused the handshake, or ``failed: cannot
        open the media socket (<reason>)``.
        """
        try:
            async with connect(
                url,
                additional_headers=headers,
                compression=None,
                open_timeout=HTTP_TIMEOUT_SECONDS,
                close_timeout=2,
                **connect_options,
            ) as socket:
                self.socket = socket
                return await stream(socket)
        except InvalidStatus as exc:
            return f"refused: HTTP {exc.response.status_code}"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return f"failed: cannot open the media socket ({exc})"

    async def exchange_media(
        self,
        socket: ClientConnection,
        *,
        handle: Callable[[str | bytes], Awaitable[None]],
        send: Coroutine[Any, Any, None],
        play: Coroutine[Any, Any, None],
        hang_up: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Run the caller's side (``send``), playout (``play``) and the server's messages together.

        Each message the server sends goes to ``handle``; a close is recorded as a ``closed``
        event. When ``send`` finishes first the caller hangs up: ``hang_up()`` if given, then
        the socket closes, and the server's last messages are still read. ``True`` when the
        caller hung up, ``False`` when the server ended the call (or the socket broke).

        Raises:
            Exception: whatever ``send`` raised, other than ``ConnectionClosed``.
        """
        receiver = asyncio.create_task(self._receive(socket, handle))
        playout = asyncio.create_task(play)
        sender = asyncio.create_task(send)
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            hung_up = sender.done() and sender.exception() is None
            if sender.done() and not receiver.done():
                error = sender.exception()
                if error is not None and not isinstance(error, ConnectionClosed):
                    raise error
                if hung_up and hang_up is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await hang_up()
                await socket.close()
            await receiver
            return hung_up
        finally:
            for task in (sender, playout, receiver):
                task.cancel()
            await asyncio.gather(sender, playout, receiver, return_exceptions=True)

    async def _receive(
        self, socket: ClientConnection, handle: Callable[[str | bytes], Awaitable[None]]
    ) -> None:
        try:
            async for message in socket:
                await handle(message)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
            self.events.append({"event": "closed", "code": code, "reason": reason})
