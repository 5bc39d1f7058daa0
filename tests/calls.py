"""Call-test helpers: the calls API polled for a connector's calls, the two-tone test's room
side and its assertions, and recording a provider's REST hang-up results."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import pytest

from callbridge.clients.audio import Summary
from callbridge.clients.room import RoomJoinOptions, join_room
from callbridge.media.analysis import dominant_frequency, level_dbfs, trim_silence
from callbridge.media.tones import ToneGenerator
from callbridge.media.wav import read_wav
from callbridge.protocols import HangupResult, HangupTarget, ProviderCredentials
from tests.rooms import participant_in
from tests.servers import Connector, InProcessServer

SENT_LEVEL_DBFS = 20 * math.log10(0.5 / math.sqrt(2))  # a sine at half of full scale


def calls_of(server: InProcessServer, connector: Connector | None = None) -> list[dict[str, Any]]:
    """The calls API's list: all the key's calls, or one connector's."""
    params = {} if connector is None else {"connectorId": connector.id}
    response = httpx.get(
        f"{server.url}/v2/calls",
        params=params,
        headers={"Authorization": f"Bearer {server.token()}"},
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def ended_call(server: InProcessServer, connector: Connector) -> dict[str, Any]:
    """The connector's only call, once it has ended (the server records it after the bridge)."""
    deadline = time.monotonic() + 10
    while True:
        calls = await asyncio.to_thread(calls_of, server, connector)
        assert len(calls) == 1
        if calls[0]["status"] in ("ended", "failed") or time.monotonic() > deadline:
            return calls[0]
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- two tones


async def with_tone_participant(
    server: InProcessServer,
    room: str,
    record_path: Path,
    caller: Awaitable[Summary],
    *,
    lead: float = 0.5,
    seconds: float = 3.5,
) -> tuple[Summary, Summary]:
    """The room side of the two-tone test: a participant sending 1000 Hz into ``room`` and
    recording what it hears, and ``caller`` started ``lead`` seconds after it."""

    async def call_after_join() -> Summary:
        await asyncio.sleep(lead)
        return await caller

    options = RoomJoinOptions(
        server_url=server.url,
        room_id=room,
        token=server.token(),
        tone_hz=1000,
        seconds=seconds,
        record_path=str(record_path),
    )
    participant, called = await asyncio.gather(join_room(options), call_after_join())
    return participant, called


def assert_tone(pcm: np.ndarray, rate: int, frequency: float, min_seconds: float) -> None:
    """Past the silence, at least ``min_seconds`` of a tone within 10 Hz of ``frequency`` and
    6 dB of the level sent."""
    tone = trim_silence(pcm, rate)
    assert len(tone) > rate * min_seconds, "most of the call was heard"
    assert abs(dominant_frequency(tone, rate) - frequency) <= 10
    assert abs(level_dbfs(tone) - SENT_LEVEL_DBFS) <= 6


def assert_heard(
    path: Path, frequency: float, *, rate: int | None = None, min_seconds: float = 1.5
) -> None:
    """:func:`assert_tone` on a recording; ``rate``, when given, is the rate it must have."""
    heard, wav_rate = read_wav(path)
    if rate is not None:
        assert wav_rate == rate
    assert_tone(heard, wav_rate, frequency, min_seconds)


# --------------------------------------------------------------------------- hang-ups


async def hang_up_from_room(
    server: InProcessServer, room: str, caller: Awaitable[Summary]
) -> Summary:
    """Start ``caller`` and have a room participant hang it up as soon as it has joined."""
    async with participant_in(server, room) as participant:
        call = asyncio.ensure_future(caller)
        joined = await participant.next_event("participant-joined")
        await participant.send({"event": "hangup", "callId": joined["participantId"]})
        summary = await asyncio.wait_for(call, 10)
    assert summary.outcome == "completed (server closed)"
    return summary


def record_hangups(provider: Any, monkeypatch: pytest.MonkeyPatch) -> list[HangupResult]:
    """The results of ``provider``'s REST hang-ups from now on, in order."""
    results: list[HangupResult] = []
    real_hangup = provider.hangup

    async def recording_hangup(
        target: HangupTarget, credentials: ProviderCredentials
    ) -> HangupResult:
        result = await real_hangup(target, credentials)
        results.append(result)
        return result

    monkeypatch.setattr(provider, "hangup", recording_hangup)
    return results


# --------------------------------------------------------------------------- marks and clear


class MarksAndClear(NamedTuple):
    call_id: str
    played: dict[str, Any]  # the room's event for the first mark
    cleared: dict[str, Any]  # the room's event for the second mark, cleared
    summary: Summary  # the caller's


async def mark_then_clear(
    server: InProcessServer, room: str, caller: Awaitable[Summary]
) -> MarksAndClear:
    """Start ``caller``; once it has joined, a room participant talks (600 Hz) to it so that
    marks queue behind audio, sends mark ``m-played`` and waits for its echo, then sends mark
    ``m-cleared`` and a clear and waits for that echo, and lets the call run out."""
    async with participant_in(server, room) as participant:
        stop_talking = asyncio.Event()

        async def talk() -> None:
            # Keep audio flowing to the caller, so marks queue behind it as on a real call.
            tone = ToneGenerator(600, 16000, 0.3)
            while not stop_talking.is_set():
                await participant.send(tone.next_frame(320).astype("<i2").tobytes())
                await asyncio.sleep(0.02)

        call = asyncio.ensure_future(caller)
        joined = await participant.next_event("participant-joined")
        talker = asyncio.create_task(talk())
        await asyncio.sleep(0.3)

        await participant.send({"event": "mark", "name": "m-played"})
        played = await participant.next_event("mark")
        await participant.send({"event": "mark", "name": "m-cleared"})
        await participant.send({"event": "clear"})
        cleared = await participant.next_event("mark")
        stop_talking.set()
        await talker
        summary = await asyncio.wait_for(call, 10)
    return MarksAndClear(joined["participantId"], played, cleared, summary)
