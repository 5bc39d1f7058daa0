"""The ``local`` room transport on a hand-driven media clock: direct forwarding for two, N-1
mixing for more, playout buffers, marks and clears travelling with the audio."""

import time

import numpy as np
import pydantic
import pytest

from callbridge.media.analysis import dominant_frequency
from callbridge.media.clock import MediaClock
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import (
    LegSink,
    Participant,
    PluginContext,
    PluginError,
    RoomLeg,
    RoomTransport,
)
from callbridge_plugins.rooms.local import (
    MIXER_FAILED,
    LocalRooms,
    LocalRoomsConfig,
    callbridge_room_transports,
    mix_minus_one,
)
from tests.sinks import RecordingSink

RATE = 16000
FRAME = RATE // 50


@pytest.fixture
def clock() -> MediaClock:
    """A media clock that never runs by itself: tests call ``run_tick()``."""
    return MediaClock(autostart=False)


@pytest.fixture
def context(tmp_path, clock):
    return PluginContext(
        data_dir=tmp_path,
        clock=time.time,
        public_api_url="http://127.0.0.1:8080",
        public_ingest_url="ws://127.0.0.1:8080/ingest",
        media_clock=clock,
    )


@pytest.fixture
async def rooms(context):
    transport = LocalRooms(LocalRoomsConfig(), context)
    await transport.start()
    yield transport
    await transport.aclose()


def person(participant_id, kind="client", **extra):
    return Participant(participant_id=participant_id, kind=kind, **extra)


async def member(rooms, participant_id, room="room"):
    sink = RecordingSink()
    leg = await rooms.join("t", room, person(participant_id), sink)
    return leg, sink


def tone(hz, level=0.25):
    generator = ToneGenerator(hz, RATE, level)
    return lambda: generator.next_frame(FRAME)


def band_share(pcm: np.ndarray, frequency: float, width: float = 30.0) -> float:
    """Fraction of the signal's energy within ``width`` Hz of ``frequency``."""
    samples = pcm.astype(np.float64)
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    bins = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(power[np.abs(bins - frequency) <= width].sum() / max(power.sum(), 1e-12))


def test_plugin_registration():
    (plugin,) = list(callbridge_room_transports())
    assert plugin.name == "local"
    assert plugin.factory is LocalRooms
    assert plugin.config_model is LocalRoomsConfig


def test_config_validation():
    assert LocalRoomsConfig().sample_rate == 16000
    assert LocalRoomsConfig().playout_target_frames == 1
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(sample_rate=11025)
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(playout_max_frames=1)
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(playout_target_frames=0)
    with pytest.raises(pydantic.ValidationError):
        LocalRoomsConfig(jitter_frames=6)


async def test_satisfies_protocols(rooms):
    assert isinstance(rooms, RoomTransport)
    leg, sink = await member(rooms, "a")
    assert isinstance(leg, RoomLeg)
    assert isinstance(sink, LegSink)


# --------------------------------------------------------------------------- direct mode


async def test_two_members_hear_each_other_the_moment_a_frame_arrives(rooms, clock):
    a, heard_by_a = await member(rooms, "a")
    _b, heard_by_b = await member(rooms, "b")
    assert rooms.room_mode("t", "room") == "direct"
    frame = np.full(FRAME, 1234, dtype=np.int16)
    a.send_audio(frame)
    assert clock.stats.ticks == 0
    assert len(heard_by_b.frames) == 1 and (heard_by_b.frames[0] == 1234).all()
    assert heard_by_a.frames == [], "nobody hears themselves"
    frame[:] = 0  # the room did not keep the caller's array
    assert (heard_by_b.frames[0] == 1234).all()


async def test_a_member_running_ahead_of_the_clock_is_paced_by_it(rooms, clock):
    a, _ = await member(rooms, "a")
    _, heard_by_b = await member(rooms, "b")
    frames = [np.full(FRAME, value, dtype=np.int16) for value in range(1, 7)]
    for frame in frames:
        a.send_audio(frame)
    lead = LocalRoomsConfig().direct_lead_frames
    assert [int(f[0]) for f in heard_by_b.frames] == list(range(1, lead + 1))
    for _ in range(6 - lead):
        clock.run_tick()
    assert [int(f[0]) for f in heard_by_b.frames] == list(range(1, 7)), "one per tick, in order"


async def test_a_silent_member_is_heard_as_steady_silence(rooms, clock):
    a, _ = await member(rooms, "a")
    _, heard_by_b = await member(rooms, "b")
    a.send_audio(np.full(FRAME, 500, dtype=np.int16))
    for _ in range(10):
        clock.run_tick()
    assert 8 <= len(heard_by_b.frames) <= 10
    assert not np.concatenate(heard_by_b.frames[1:]).any(), "silence, never a repeated frame"
    assert a.media_stats()["underruns"] == 1


async def test_a_burst_after_a_stall_is_drained_back_to_the_target(rooms, clock):
    a, _ = await member(rooms, "a")
    _, _heard_by_b = await member(rooms, "b")
    for _ in range(20):  # steady: one frame per tick
        a.send_audio(np.full(FRAME, 100, dtype=np.int16))
        clock.run_tick()
    for _ in range(10):  # 200 ms stall ...
        clock.run_tick()
    for _ in range(10):  # ... then everything at once
        a.send_audio(np.full(FRAME, 100, dtype=np.int16))
    depths = []
    for _ in range(50):  # and steady again
        a.send_audio(np.full(FRAME, 100, dtype=np.int16))
        clock.run_tick()
        depths.append(a.playout.depth)
    window = LocalRoomsConfig().playout_window_frames
    assert max(depths) >= 6, "the burst did queue"
    assert max(depths[2 * window :]) == 0, "nothing stands in the buffer any more"
    assert a.media_stats()["drained"] >= 5


class ClockedSink(RecordingSink):
    """Records the room's time of every frame it hears, and which frame (its first sample)."""

    def __init__(self, clock: MediaClock) -> None:
        super().__init__()
        self.clock = clock
        self.heard_at: list[tuple[float, int]] = []

    def hear(self, frame: np.ndarray) -> None:
        super().hear(frame)
        self.heard_at.append((self.clock.now(), int(frame[0])))


class SteppedTime:
    """The room's time, set by the test between ticks (the hand-driven clock only knows ticks)."""

    def __init__(self, clock: MediaClock) -> None:
        self.at = 0.0
        self.tick_index = 0
        self.clock = clock
        clock.now = lambda: self.at  # type: ignore[method-assign]

    def tick(self, late: float = 0.0) -> None:
        self.at = self.tick_index * 0.02 + late
        self.tick_index += 1
        self.clock.run_tick()

    def send(self, leg, value: int, phase: float) -> None:
        """``leg`` says a frame whose samples are ``value``, ``phase`` seconds after the last
        tick."""
        self.at = (self.tick_index - 1) * 0.02 + phase
        leg.send_audio(np.full(FRAME, value, dtype=np.int16))


async def direct_pair(rooms, clock):
    a, _ = await member(rooms, "a")
    sink = ClockedSink(clock)
    await rooms.join("t", "room", person("b"), sink)
    return a, sink


def delays(sink: ClockedSink, sent_at: dict[int, float]) -> list[float]:
    """How long after it was said each frame of ``sent_at`` was heard (seconds)."""
    return [at - sent_at[value] for at, value in sink.heard_at if value in sent_at]


async def test_a_late_frame_does_not_hold_every_later_frame_until_a_tick(rooms, clock):
    """A frame 25 ms late arrives with the next one; the schedule must not stay a whole frame
    ahead of the arrivals for the rest of the call (every frame waiting for the next tick)."""
    time_ = SteppedTime(clock)
    a, heard_by_b = await direct_pair(rooms, clock)
    time_.tick()
    sent_at: dict[int, float] = {}
    for value in range(1, 81):
        if value == 20:
            time_.tick()
            continue  # frame 20 is late: it comes with frame 21
        if value == 21:
            for late in (20, 21):
                time_.send(a, late, 0.006)
                sent_at[late] = time_.at
            time_.tick()
            continue
        time_.send(a, value, 0.001)
        sent_at[value] = time_.at
        time_.tick()
    waits = delays(heard_by_b, sent_at)
    assert max(waits[:18]) < 1e-9, "on time: forwarded the moment it arrives"
    assert max(waits) >= 0.01, "the frame behind the late one did wait"
    window = LocalRoomsConfig().playout_window_frames
    assert max(waits[-(78 - 20 - 2 * window) :]) < 1e-9, "and within two windows none waits"


async def test_a_member_speaking_after_silence_is_heard_the_moment_it_speaks(rooms, clock):
    """While a member is quiet the other hears silence; one late tick must not put that silence
    ahead of the member's audio for good when it speaks again."""
    time_ = SteppedTime(clock)
    a, heard_by_b = await direct_pair(rooms, clock)
    for index in range(10):
        time_.tick(late=0.006 if index == 4 else 0.0)
    assert len(heard_by_b.frames) >= 5 and not np.concatenate(heard_by_b.frames).any()
    sent_at: dict[int, float] = {}
    for value in range(1, 41):
        time_.send(a, value, 0.001)
        sent_at[value] = time_.at
        time_.tick()
    waits = delays(heard_by_b, sent_at)
    assert len(waits) == 40
    assert max(waits) < 1e-9, "every frame forwarded on arrival, none held to a tick"
    silent_after = [value for _, value in heard_by_b.heard_at[-40:] if value == 0]
    assert not silent_after, "no silence mixed into its speech"


# --------------------------------------------------------------------------- mixing


async def mixing_room(rooms, *hz):
    legs = [await member(rooms, f"p{index}") for index in range(len(hz))]
    sources = [tone(frequency) for frequency in hz]
    return legs, sources


def run_mixing(clock, legs, sources, ticks):
    for _ in range(ticks):
        for (leg, _), source in zip(legs, sources, strict=True):
            leg.send_audio(source())
        clock.run_tick()


async def test_each_member_hears_everyone_but_itself(rooms, clock):
    legs, sources = await mixing_room(rooms, 440, 1000, 2500)
    assert rooms.room_mode("t", "room") == "mixing"
    run_mixing(clock, legs, sources, 50)
    for index, (_, sink) in enumerate(legs):
        assert len(sink.frames) == 50, "one frame per tick"
        heard = sink.audio()[FRAME * 5 :]
        own = (440, 1000, 2500)[index]
        others = [hz for hz in (440, 1000, 2500) if hz != own]
        assert band_share(heard, own) < 0.01
        for hz in others:
            assert band_share(heard, hz) > 0.3


async def test_loud_sum_clips_without_wrapping(rooms, clock):
    legs = [await member(rooms, f"p{index}") for index in range(3)]
    loud = np.full(FRAME, 30000, dtype=np.int16)
    for leg, _ in legs[:2]:
        leg.send_audio(loud)
    clock.run_tick()
    assert (legs[2][1].frames[0] == 32767).all()


def test_mix_minus_one_clips_equal_phase_tones():
    frame = ToneGenerator(440, RATE, 0.9).next_frame(FRAME)
    inputs = np.stack([frame, frame, frame])
    mixed = mix_minus_one(inputs, np.empty(FRAME, np.int32), np.empty((3, FRAME), np.int32))
    assert mixed.dtype == np.int16
    assert mixed.max() == 32767 and mixed.min() == -32768
    assert dominant_frequency(mixed[0], RATE) == pytest.approx(440, abs=60)


def test_mix_minus_one_is_exact_n_minus_one():
    rng = np.random.default_rng(1)
    inputs = rng.integers(-1000, 1000, (4, FRAME), dtype=np.int16)
    out = np.empty((4, FRAME), dtype=np.int16)
    mixed = mix_minus_one(inputs, np.empty(FRAME, np.int32), np.empty((4, FRAME), np.int32), out)
    assert mixed is out
    expected = inputs.astype(np.int32).sum(axis=0) - inputs.astype(np.int32)
    assert (mixed == expected).all()


async def test_a_third_member_joins_and_leaves_without_a_gap(rooms, clock):
    (a, heard_by_a), (b, heard_by_b) = await member(rooms, "a"), await member(rooms, "b")
    tone_a, tone_b = tone(440), tone(1000)
    modes = []
    third = None
    for tick in range(150):
        if tick == 50:
            third = await member(rooms, "c")
        if tick == 100:
            assert third is not None
            await third[0].leave()
        a.send_audio(tone_a())
        b.send_audio(tone_b())
        clock.run_tick()
        modes.append(rooms.room_mode("t", "room"))
    assert modes[49] == "direct" and modes[60] == "mixing" and modes[120] == "direct"
    for sink, hz in ((heard_by_a, 1000), (heard_by_b, 440)):
        assert abs(len(sink.frames) - 150) <= 2, "one frame per tick throughout"
        levels = [float(np.abs(frame).max()) for frame in sink.frames]
        assert min(levels[1:]) > 1000, "no silent frame while both kept talking"
        heard = sink.audio()
        for start in range(0, len(heard) - 1600, 1600):
            assert band_share(heard[start : start + 1600], hz) > 0.9


# --------------------------------------------------------------------------- marks and clears


async def test_a_mark_is_delivered_after_the_audio_sent_before_it(rooms, clock):
    legs = [await member(rooms, f"p{index}") for index in range(3)]
    (speaker, _), (_, listener) = legs[0], legs[1]
    order: list[str] = []
    listener.hear = lambda frame: order.append(f"audio:{int(frame[0])}")  # type: ignore[method-assign]
    listener.notify = lambda event: order.append(f"event:{event['event']}")  # type: ignore[method-assign]
    for value in (1, 2, 3):
        speaker.send_audio(np.full(FRAME, value * 100, dtype=np.int16))
    speaker.send_event({"event": "mark", "name": "m1"})
    assert order == [], "the mark waits for its audio"
    for _ in range(4):
        clock.run_tick()
    assert order[:4] == ["audio:100", "audio:200", "audio:300", "event:mark"]


async def test_a_clear_drops_waiting_audio_and_answers_its_marks_first(rooms, clock):
    legs = [await member(rooms, f"p{index}") for index in range(3)]
    (speaker, _), (_, listener) = legs[0], legs[1]
    for value in range(1, 6):
        speaker.send_audio(np.full(FRAME, value, dtype=np.int16))
    speaker.send_event({"event": "mark", "name": "m1"})
    speaker.send_event({"event": "clear"})
    assert [e["event"] for e in listener.events if e["event"] != "participant-joined"] == [
        "mark",
        "clear",
    ]
    clock.run_tick()
    assert not listener.frames[-1].any(), "nothing of the cleared audio is heard"


# --------------------------------------------------------------------------- membership


async def test_send_audio_rejects_wrong_frames(rooms):
    leg, _ = await member(rooms, "a")
    with pytest.raises(ValueError):
        leg.send_audio(np.zeros(FRAME - 1, dtype=np.int16))
    with pytest.raises(ValueError):
        leg.send_audio(np.zeros(FRAME, dtype=np.float32))


async def test_join_and_leave_events(rooms):
    a, heard_by_a = await member(rooms, "a")
    await rooms.join(
        "t",
        "room",
        person("b", "caller", display_name="+1415", metadata={"k": "v"}),
        RecordingSink(),
    )
    joined = await heard_by_a.next_event()
    assert joined == {
        "event": "participant-joined",
        "participantId": "b",
        "kind": "caller",
        "displayName": "+1415",
        "metadata": {"k": "v"},
    }
    assert a.participants() == ["a", "b"]


async def test_events_reach_every_other_leg_as_copies(rooms):
    a, _ = await member(rooms, "a")
    _, heard_by_b = await member(rooms, "b")
    _, heard_by_c = await member(rooms, "c")
    event = {"event": "custom", "data": {"x": 1}}
    a.send_event(event)
    got_b = await heard_by_b.next_event("custom")
    got_c = await heard_by_c.next_event("custom")
    got_b["data"]["x"] = 2
    assert got_c["data"]["x"] == 1 and event["data"]["x"] == 1


async def test_duplicate_participant_is_refused(rooms):
    await member(rooms, "a")
    with pytest.raises(PluginError):
        await rooms.join("t", "room", person("a"), RecordingSink())


async def test_room_leaves_the_clock_after_its_last_member(rooms, clock):
    a, _ = await member(rooms, "a")
    b, _ = await member(rooms, "b")
    assert clock.tickers == 1, "one ticker per room, not per member"
    await a.leave()
    await a.leave()
    assert rooms.rooms() == [("t", "room")]
    await b.leave()
    assert rooms.rooms() == [] and clock.tickers == 0


async def test_a_leg_that_left_hears_nothing(rooms, clock):
    a, _ = await member(rooms, "a")
    b, heard_by_b = await member(rooms, "b")
    await b.leave()
    a.send_audio(np.full(FRAME, 9, dtype=np.int16))
    clock.run_tick()
    assert heard_by_b.frames == []


async def test_a_member_alone_hears_steady_silence(rooms, clock):
    a, heard = await member(rooms, "a")
    a.send_audio(np.full(FRAME, 9, dtype=np.int16))
    for _ in range(5):
        clock.run_tick()
    assert len(heard.frames) == 5 and not heard.audio().any()


async def test_aclose_ends_every_leg(context):
    transport = LocalRooms(LocalRoomsConfig(), context)
    sink = RecordingSink()
    await transport.join("t", "room", person("a"), sink)
    await transport.aclose()
    assert sink.closed and sink.closed_reason is None
    with pytest.raises(PluginError):
        await transport.join("t", "room", person("b"), RecordingSink())


async def test_a_room_that_keeps_failing_ends_its_legs(rooms, clock):
    legs = [await member(rooms, f"p{index}") for index in range(3)]

    def explode(frame):
        raise FloatingPointError("sink exploded")

    legs[0][1].hear = explode  # type: ignore[method-assign]
    for _ in range(60):
        clock.run_tick()
    assert all(sink.closed_reason == MIXER_FAILED for _, sink in legs)
    assert rooms.rooms() == [] and clock.tickers == 0


async def test_a_failing_listener_does_not_break_the_speaker(rooms, clock):
    a, _ = await member(rooms, "a")
    _, heard_by_b = await member(rooms, "b")

    def explode(frame):
        raise FloatingPointError("sink exploded")

    heard_by_b.hear = explode  # type: ignore[method-assign]
    a.send_audio(np.full(FRAME, 1, dtype=np.int16))
    a.send_event({"event": "dtmf", "digit": "1"})
    assert (await heard_by_b.next_event("dtmf"))["digit"] == "1"
