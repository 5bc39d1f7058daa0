"""The media engine end to end, over real sockets: a Twilio caller played by hand and room
participants. Direct forwarding switching to mixing and back without a gap, marks that reach
the provider only after the audio before them, and a clear that leaves nothing of the cleared
audio for the caller to hear."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import operator
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callbridge.media.tones import ToneGenerator
from tests import twilio_wire as tw
from tests.live_calls import LiveCaller, tone_participant, twilio_caller
from tests.servers import InProcessServer, create_connector

TONE_LEVEL = 2000  # a frame whose peak is below this holds none of the tone


class AgentParticipant:
    """A hand-driven participant that sends speech faster than real time (``playout=queue``),
    like a voice agent streaming synthesized audio, and keeps every event it receives."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for message in self.socket:
                if isinstance(message, str):
                    self.events.append((time.monotonic(), json.loads(message)))

    async def burst(self, hz: float, seconds: float) -> None:
        """``seconds`` of tone sent at once."""
        tone = ToneGenerator(hz, 16000, 0.5)
        for _ in range(round(seconds / 0.02)):
            await self.socket.send(tone.next_frame(320).astype("<i2").tobytes())

    async def send(self, command: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(command))

    async def event(self, **fields: Any) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(10):
            while True:
                for at, event in self.events:
                    if fields.items() <= event.items():
                        return at, event
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def agent_in(url: str) -> AsyncIterator[AgentParticipant]:
    async with connect(url + "&playout=queue", open_timeout=5) as socket:
        joined = json.loads(await socket.recv())
        assert joined["event"] == "joined"
        agent = AgentParticipant(socket)
        try:
            yield agent
        finally:
            agent._reader.cancel()
            await asyncio.gather(agent._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def call_into(server: InProcessServer, room: str) -> AsyncIterator[tuple[LiveCaller, str]]:
    """A Twilio call bridged into ``room``; yields the caller and a participant URL."""
    token = server.token()
    connector = create_connector(server.url, token, defaultRoomId=room)
    form = tw.voice_webhook_form()
    answer = await tw.post_webhook(connector.webhook_url, form)
    assert answer.stream_url is not None
    url = f"ws://127.0.0.1:{server.port}/v2/rooms/{room}/participants?token={token}"
    async with twilio_caller(answer.stream_url, form["CallSid"]) as caller:
        yield caller, url


async def until_direct(server: InProcessServer, room: str) -> None:
    """Wait until the call and one participant are both in ``room``."""
    rooms = server.runtime.room_transports["local"].wrapped
    async with asyncio.timeout(10):
        while rooms.room_mode("ak_test_one", room) != "direct":  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.01)


def peaks(frames: list[tuple[float, np.ndarray]]) -> list[int]:
    return [int(np.abs(pcm.astype(np.int32)).max()) for _, pcm in frames]


@contextlib.contextmanager
def no_collector_pauses() -> Iterator[None]:
    """No garbage-collector pauses while audio timing is measured.

    The in-process server shares this process (and its GIL) with the test run, whose heap holds
    what a thousand earlier tests left: one full collection of it stops the server's clock and
    both simulated phones for 0.2 to 0.5 s here, which a listener hears as silence and lost
    frames. A real server's heap is its own and small; that pause is the harness's, not the
    product's. The collection made on entry pauses too: measure a second after it at least
    (the playout buffers are back at their target within two windows, 0.4 s).
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_a_third_member_joins_and_leaves_mid_call_with_both_tones_continuous(
    server: InProcessServer,
) -> None:
    rooms = server.runtime.room_transports["local"].wrapped
    async with (
        call_into(server, "three-way") as (caller, url),
        tone_participant(url) as participant,
    ):
        await until_direct(server, "three-way")
        clock = server.runtime.context.media_clock.stats
        with no_collector_pauses():
            await asyncio.sleep(1.0)  # after the collection's own pause, the call settles
            before = rooms.room_mode("ak_test_one", "three-way")
            ticks_before = (clock.late_ticks, clock.skipped_ticks)
            start = time.monotonic()
            async with connect(url, open_timeout=5) as third:
                # It reads its joined event and then nothing: the room must not care.
                reader = asyncio.create_task(third.recv())
                await asyncio.sleep(1.0)
                during = rooms.room_mode("ak_test_one", "three-way")
                reader.cancel()
                left = time.monotonic()
                # Read what the room queued for it, or its client would never see the close
                # reply behind that (reading paused) and wait out its close timeout.
                drain = asyncio.create_task(_drain(third))
                await third.close()
                await drain
            await asyncio.sleep(1.0)
            after = rooms.room_mode("ak_test_one", "three-way")
            end = time.monotonic()
            late, skipped = (
                clock.late_ticks - ticks_before[0],
                clock.skipped_ticks - ticks_before[1],
            )
    assert (before, during, after) == ("direct", "mixing", "direct")
    for side, heard, hz in (
        ("caller", caller.heard, 1000),
        ("participant", participant.heard, 440),
    ):
        window = [(at, pcm) for at, pcm in heard.frames if start - 0.3 <= at <= end - 0.1]
        levels = peaks(window)
        silent = [index for index, level in enumerate(levels) if level < TONE_LEVEL]
        arrivals = [at for at, _ in window]
        where = (
            f"the {side} heard {len(levels)} frames in {end - start + 0.2:.2f} s, silent ones "
            f"at {silent}, arriving at {[round(arrivals[index] - start, 3) for index in silent]}"
            f" s after the third joined (it left at {left - start:.3f} s); longest wait for a "
            f"frame {max(map(operator.sub, arrivals[1:], arrivals), default=0) * 1000:.0f} ms; "
            f"media clock meanwhile: {late} late ticks, {skipped} skipped"
        )
        assert len(levels) >= 100, where
        assert len(silent) <= 3, where
        assert all(b - a > 1 for a, b in itertools.pairwise(silent)), (
            f"never two silent frames in a row; {where}"
        )
        heard.assert_tone_since(start, hz, min_seconds=1.5)


async def _drain(socket: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in socket:
            pass


async def test_a_mark_after_a_second_of_audio_is_played_only_after_that_audio(
    server: InProcessServer,
) -> None:
    async with call_into(server, "marks") as (caller, url), agent_in(url) as agent:
        await until_direct(server, "marks")
        await agent.burst(1000, 1.0)
        await agent.send({"event": "mark", "name": "after-1s"})
        sent = time.monotonic()
        async with asyncio.timeout(10):
            while not any(text.get("event") == "mark" for text in caller.texts):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        index = next(i for i, text in enumerate(caller.texts) if text.get("event") == "mark")
        mark_arrived = time.monotonic()
        position = caller.text_positions[index]
        tone_frames_before = sum(
            level >= TONE_LEVEL for level in peaks(caller.heard.frames[:position])
        )
        assert tone_frames_before >= 49, "the whole second of audio went out before the mark"
        assert mark_arrived - sent >= 0.8, "paced at real time, not flushed ahead of the mark"
        await caller.inject(
            json.dumps(
                {
                    "event": "mark",
                    "sequenceNumber": "999",
                    "streamSid": caller.stream_sid,
                    "mark": {"name": "after-1s"},
                }
            )
        )
        played_at, played = await agent.event(event="mark", name="after-1s")
    assert played["status"] == "played"
    assert played_at - sent >= 0.8


async def test_after_a_clear_the_caller_hears_nothing_of_the_cleared_audio(
    server: InProcessServer,
) -> None:
    async with call_into(server, "clears") as (caller, url), agent_in(url) as agent:
        await until_direct(server, "clears")
        await agent.burst(1000, 3.0)
        await asyncio.sleep(0.6)
        await agent.send({"event": "clear"})
        await asyncio.sleep(0.8)
        clear_index = next(i for i, text in enumerate(caller.texts) if text.get("event") == "clear")
        position = caller.text_positions[clear_index]
        levels = peaks(caller.heard.frames)
    assert sum(level >= TONE_LEVEL for level in levels[:position]) >= 20, "the tone was playing"
    after = levels[position:]
    assert len(after) >= 20, "the call went on after the clear"
    assert sum(level >= TONE_LEVEL for level in after) <= 1, "nothing of the cleared tone"


def test_a_phone_only_room_at_8_khz_skips_resampling() -> None:
    from callbridge.calls.bridge import CallBridge
    from callbridge.protocols import CodecSpec, StreamStarted
    from callbridge_plugins.providers.twilio import TwilioMediaStream
    from tests.channels import FakeChannel

    started = StreamStarted("MZ1", "CA1", CodecSpec("PCMU", 8000))
    narrow = CallBridge("c", TwilioMediaStream(FakeChannel([])), started, 8000)
    frame = np.zeros(160, dtype=np.int16)
    assert narrow._to_room.process(frame) is frame
    assert narrow._to_caller.process(frame) is frame
    wide = CallBridge("c", TwilioMediaStream(FakeChannel([])), started, 16000)
    assert len(wide._to_room.process(frame)) == 320
