import asyncio
import time

import numpy as np
import pydantic
import pytest

from callbridge.media.analysis import dominant_frequency
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import (
    Participant,
    PluginContext,
    PluginError,
    RoomLeg,
    RoomTransport,
)
from callbridge_plugins.rooms import local
from callbridge_plugins.rooms.local import (
    LocalRooms,
    LocalRoomsConfig,
    callbridge_room_transports,
    mix_minus_one,
)

RATE = 16000
FRAME = RATE // 50


@pytest.fixture
def context(tmp_path):
    return PluginContext(
        data_dir=tmp_path,
        clock=time.time,
        public_api_url="http://127.0.0.1:8080",
        public_ingest_url="ws://127.0.0.1:8080/ingest",
    )


@pytest.fixture
async def rooms(context):
    transport = LocalRooms(LocalRoomsConfig(), context)
    await transport.start()
    yield transport
    await transport.aclose()


@pytest.fixture
def manual_clock(monkeypatch):
    """Stop the mixers' clocks; tests tick rooms by hand through ``tick(leg)``."""

    async def idle(self):
        await asyncio.Event().wait()

    monkeypatch.setattr(local._Room, "_run", idle)
    return lambda leg: leg._room.tick()


def person(participant_id, kind="client", **extra):
    return Participant(participant_id=participant_id, kind=kind, **extra)


def band_share(pcm: np.ndarray, frequency: float, width: float = 30.0) -> float:
    """Fraction of the signal's energy within ``width`` Hz of ``frequency``."""
    samples = pcm.astype(np.float64)
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    bins = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(power[np.abs(bins - frequency) <= width].sum() / max(power.sum(), 1e-12))


async def lockstep(leg, source, frames: int) -> np.ndarray:
    """Send ``source()`` frames paced by what the leg receives; return what the leg heard."""
    if source is not None:
        for _ in range(3):
            leg.send_audio(source())
    heard = []
    for _ in range(frames):
        frame = await leg.receive_audio()
        assert frame is not None
        heard.append(frame)
        if source is not None:
            leg.send_audio(source())
    # The first frames may predate the other senders; measure the settled part only.
    return np.concatenate(heard[8:])


def test_plugin_registration():
    (record,) = list(callbridge_room_transports())
    assert record.name == "local"
    assert record.factory is LocalRooms
    assert record.config_model is LocalRoomsConfig
    assert record.description


def test_config_validation():
    assert LocalRoomsConfig().sample_rate == 16000
    assert LocalRoomsConfig(sample_rate=48000).sample_rate == 48000
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(sample_rate=44100)
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(jitter=3)
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(jitter_frames=0)
    for field in LocalRoomsConfig.model_fields.values():
        assert field.description


async def test_satisfies_protocols(rooms):
    leg = await rooms.join("key", "room", person("a"))
    assert isinstance(rooms, RoomTransport)
    assert isinstance(leg, RoomLeg)
    assert rooms.sample_rate == leg.sample_rate == RATE


async def test_each_participant_hears_everyone_but_itself(rooms):
    leg_a = await rooms.join("key", "room", person("a"))
    leg_b = await rooms.join("key", "room", person("b"))
    leg_c = await rooms.join("key", "room", person("c"))
    tone_a = ToneGenerator(440, RATE, amplitude=0.3)
    tone_b = ToneGenerator(1000, RATE, amplitude=0.3)
    heard_a, heard_b, heard_c = await asyncio.gather(
        lockstep(leg_a, lambda: tone_a.next_frame(FRAME), 30),
        lockstep(leg_b, lambda: tone_b.next_frame(FRAME), 30),
        lockstep(leg_c, None, 30),
    )
    assert band_share(heard_c, 440) > 0.2
    assert band_share(heard_c, 1000) > 0.2
    assert band_share(heard_c, 440) + band_share(heard_c, 1000) > 0.95

    assert dominant_frequency(heard_a, RATE) == pytest.approx(1000, abs=5)
    assert band_share(heard_a, 440) < 1e-3
    assert dominant_frequency(heard_b, RATE) == pytest.approx(440, abs=5)
    assert band_share(heard_b, 1000) < 1e-3


async def test_loud_sum_clips_without_wrapping(rooms):
    leg_a = await rooms.join("key", "room", person("a"))
    leg_b = await rooms.join("key", "room", person("b"))
    leg_c = await rooms.join("key", "room", person("c"))
    loud = np.full(FRAME, 30000, dtype=np.int16)
    _, _, heard_c = await asyncio.gather(
        lockstep(leg_a, lambda: loud, 20),
        lockstep(leg_b, lambda: loud, 20),
        lockstep(leg_c, None, 20),
    )
    assert heard_c.max() == 32767
    assert heard_c.min() >= 0
    assert set(np.unique(heard_c)) <= {0, 30000, 32767}


def test_mix_minus_one_clips_equal_phase_tones():
    tone = ToneGenerator(440, RATE, amplitude=0.95).next_frame(FRAME)
    inputs = np.stack([tone, tone, np.zeros(FRAME, dtype=np.int16)])
    total = np.empty(FRAME, dtype=np.int32)
    work = np.empty((3, FRAME), dtype=np.int32)
    mixed = mix_minus_one(inputs, total, work)
    assert mixed.dtype == np.int16
    doubled = 2 * tone.astype(np.int32)
    assert np.array_equal(mixed[2], np.clip(doubled, -32768, 32767))
    assert mixed[2].max() == 32767
    assert mixed[2].min() == -32768
    assert np.all(np.sign(mixed[2]) == np.sign(tone))
    assert np.array_equal(mixed[0], tone)
    assert np.array_equal(mixed[1], tone)


def test_mix_minus_one_is_exact_n_minus_one():
    rng = np.random.default_rng(9)
    inputs = rng.integers(-3000, 3000, (5, FRAME), dtype=np.int16)
    mixed = mix_minus_one(inputs, np.empty(FRAME, np.int32), np.empty((5, FRAME), np.int32))
    for index in range(5):
        others = np.delete(inputs, index, axis=0).sum(axis=0)
        assert np.array_equal(mixed[index], others)


async def test_jitter_buffer_drops_the_oldest(context, manual_clock):
    transport = LocalRooms(LocalRoomsConfig(jitter_frames=2), context)
    talker = await transport.join("key", "room", person("talker"))
    listener = await transport.join("key", "room", person("listener"))
    for value in (1, 2, 3):
        talker.send_audio(np.full(FRAME, value, dtype=np.int16))
    for _ in range(3):
        manual_clock(talker)
    heard = [int((await listener.receive_audio())[0]) for _ in range(3)]
    assert heard == [2, 3, 0]
    await transport.aclose()


async def test_outbound_queue_drops_the_oldest(context, manual_clock):
    transport = LocalRooms(LocalRoomsConfig(outbound_frames=2), context)
    talker = await transport.join("key", "room", person("talker"))
    listener = await transport.join("key", "room", person("listener"))
    for value in (1, 2, 3):
        talker.send_audio(np.full(FRAME, value, dtype=np.int16))
        manual_clock(talker)
    assert [int((await listener.receive_audio())[0]) for _ in range(2)] == [2, 3]
    await transport.aclose()


async def test_received_frames_are_independent(rooms, manual_clock):
    talker = await rooms.join("key", "room", person("talker"))
    listener = await rooms.join("key", "room", person("listener"))
    frame = np.full(FRAME, 5, dtype=np.int16)
    talker.send_audio(frame)
    frame[:] = 9  # the room copied the frame when it was sent
    manual_clock(talker)
    manual_clock(talker)
    first, second = await listener.receive_audio(), await listener.receive_audio()
    first[:] = 7
    assert not second.any()
    assert set(first.tolist()) == {7}


async def test_send_audio_rejects_wrong_frames(rooms):
    leg = await rooms.join("key", "room", person("a"))
    with pytest.raises(ValueError, match="320"):
        leg.send_audio(np.zeros(FRAME - 1, dtype=np.int16))
    with pytest.raises(ValueError, match="int16"):
        leg.send_audio(np.zeros(FRAME, dtype=np.float32))
    with pytest.raises(ValueError):
        leg.send_audio(np.zeros((2, FRAME), dtype=np.int16))


async def test_join_and_leave_events(rooms):
    leg_a = await rooms.join("key", "room", person("a"))
    leg_b = await rooms.join(
        "key", "room", person("b", kind="caller", display_name="+15550100", metadata={"x": "1"})
    )
    assert await leg_a.receive_event() == {
        "event": "participant-joined",
        "participantId": "b",
        "kind": "caller",
        "displayName": "+15550100",
        "metadata": {"x": "1"},
    }
    assert leg_b.participants() == leg_a.participants() == ["a", "b"]
    await leg_b.leave()
    assert await leg_a.receive_event() == {"event": "participant-left", "participantId": "b"}
    assert leg_a.participants() == ["a"]


async def test_events_reach_every_other_leg_as_copies(rooms):
    leg_a = await rooms.join("key", "room", person("a"))
    leg_b = await rooms.join("key", "room", person("b"))
    leg_c = await rooms.join("key", "room", person("c"))
    for leg in (leg_a, leg_a, leg_b):  # drain the joined events
        assert (await leg.receive_event())["event"] == "participant-joined"
    event = {"event": "chat", "data": {"text": "hi"}}
    await leg_b.send_event(event)
    got_a = await leg_a.receive_event()
    got_c = await leg_c.receive_event()
    assert got_a == got_c == event
    got_a["data"]["text"] = "changed"
    assert got_c["data"]["text"] == "hi"
    assert event["data"]["text"] == "hi"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(leg_b.receive_event(), timeout=0.05)


async def test_leave_releases_waiting_receivers(rooms, manual_clock):
    leg = await rooms.join("key", "room", person("a"))
    waiting_audio = asyncio.create_task(leg.receive_audio())
    waiting_event = asyncio.create_task(leg.receive_event())
    await asyncio.sleep(0.01)
    assert not waiting_audio.done() and not waiting_event.done()
    await leg.leave()
    assert await waiting_audio is None
    assert await waiting_event is None
    assert await leg.receive_audio() is None
    assert await leg.receive_event() is None
    leg.send_audio(np.zeros(FRAME, dtype=np.int16))  # no-op after leaving
    await leg.leave()  # idempotent


async def test_duplicate_participant_is_refused(rooms):
    await rooms.join("key", "room", person("a"))
    with pytest.raises(PluginError, match="already in room"):
        await rooms.join("key", "room", person("a"))
    other_tenant = await rooms.join("other-key", "room", person("a"))
    assert other_tenant.participants() == ["a"]


def mixer_tasks():
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("local-room-mixer") and not task.done()
    ]


async def test_room_is_dropped_after_last_leave(rooms):
    leg_a = await rooms.join("key", "room", person("a"))
    leg_b = await rooms.join("key", "room", person("b"))
    assert rooms.rooms() == [("key", "room")]
    assert len(mixer_tasks()) == 1
    await leg_a.leave()
    assert rooms.rooms() == [("key", "room")]
    await leg_b.leave()
    assert rooms.rooms() == []
    assert mixer_tasks() == []
    again = await rooms.join("key", "room", person("a"))
    assert again.participants() == ["a"]
    assert await again.receive_audio() is not None


async def test_aclose_stops_everything(context):
    transport = LocalRooms(LocalRoomsConfig(), context)
    await transport.start()
    leg = await transport.join("key", "room", person("a"))
    await transport.join("key", "other", person("b"))
    waiting = asyncio.create_task(leg.receive_event())
    await asyncio.sleep(0)
    await transport.aclose()
    assert await waiting is None
    assert await leg.receive_audio() is None
    assert mixer_tasks() == []
    assert transport.rooms() == []
    with pytest.raises(PluginError):
        await transport.join("key", "room", person("c"))
