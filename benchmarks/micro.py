"""Micro-benchmarks of the per-frame media work: G.711, resampling and the local room's N-1 mix.

Each row calls the function directly in a loop and reports the mean time per 20 ms frame.
Run with ``python -m benchmarks.micro``; ``make bench`` (``benchmarks.run``) measures whole
servers instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from callbridge.media.g711 import ulaw_decode, ulaw_encode
from callbridge.media.resample import StreamResampler
from callbridge.media.tones import ToneGenerator
from callbridge.protocols import Participant, PluginContext
from callbridge_plugins.rooms.local import LocalRooms, LocalRoomsConfig, mix_minus_one

_BUDGET_SECONDS = 1.0
_FRAME_SECONDS = 0.02


def _per_call_microseconds(work: Callable[[], object], budget: float = _BUDGET_SECONDS) -> float:
    for _ in range(50):
        work()
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < budget:
        for _ in range(100):
            work()
        calls += 100
        elapsed = time.perf_counter() - start
    return elapsed / calls * 1e6


def _tone_frames(rate: int, count: int = 50) -> list[np.ndarray]:
    tone = ToneGenerator(440, rate)
    return [tone.next_frame(rate // 50) for _ in range(count)]


def _bench_ulaw() -> float:
    payloads = [ulaw_encode(frame) for frame in _tone_frames(8000)]
    index = 0

    def work() -> object:
        nonlocal index
        index = (index + 1) % len(payloads)
        return ulaw_encode(ulaw_decode(payloads[index]))

    return _per_call_microseconds(work)


def _bench_resample(in_rate: int, out_rate: int) -> float:
    resampler = StreamResampler(in_rate, out_rate)
    frames = _tone_frames(in_rate)
    index = 0

    def work() -> object:
        nonlocal index
        index = (index + 1) % len(frames)
        return resampler.process(frames[index])

    return _per_call_microseconds(work)


def _bench_mix(participants: int, rate: int = 16000) -> float:
    samples = rate // 50
    rng = np.random.default_rng(0)
    inputs = rng.integers(-8000, 8000, (participants, samples), dtype=np.int16)
    total = np.empty(samples, dtype=np.int32)
    work_area = np.empty((participants, samples), dtype=np.int32)
    return _per_call_microseconds(lambda: mix_minus_one(inputs, total, work_area))


class _NullSink:
    """A room member that hears and ignores everything."""

    def hear(self, frame: object) -> None:
        pass

    def notify(self, event: object) -> None:
        pass

    def leg_closed(self, reason: str | None) -> None:
        pass


async def _bench_room_tick(participants: int) -> float:
    context = PluginContext(Path("."), time.time, "http://localhost", "ws://localhost")
    rooms = LocalRooms(LocalRoomsConfig(sample_rate=16000), context)
    legs = [
        await rooms.join("bench", "room", Participant(f"p{i}", "client"), _NullSink())
        for i in range(participants)
    ]
    frame = _tone_frames(16000, 1)[0]
    # The media clock never runs while this loop holds the event loop; ticks are driven here.
    room = legs[0]._room
    tick = 0

    def work() -> object:
        nonlocal tick
        for leg in legs:
            leg.send_audio(frame)
        tick += 1
        room.on_tick(tick)
        return None

    micros = _per_call_microseconds(work)
    await rooms.aclose()
    return micros


def main() -> None:
    """Print the benchmark table."""
    rows: list[tuple[str, float]] = [
        ("μ-law decode+encode, 160-byte frame", _bench_ulaw()),
        ("resample 8k -> 16k, 20 ms frame", _bench_resample(8000, 16000)),
        ("resample 16k -> 8k, 20 ms frame", _bench_resample(16000, 8000)),
        ("resample 16k -> 48k, 20 ms frame", _bench_resample(16000, 48000)),
    ]
    rows += [(f"mix_minus_one, N={n} at 16 kHz", _bench_mix(n)) for n in (2, 10, 50)]
    rows += [
        (f"room tick + N sends, N={n} at 16 kHz", asyncio.run(_bench_room_tick(n)))
        for n in (2, 10, 50)
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'µs/frame':>9}  {'% of 20 ms':>10}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 10}")
    for name, micros in rows:
        share = micros / (_FRAME_SECONDS * 1e6) * 100
        print(f"{name:<{width}}  {micros:>9.1f}  {share:>9.3f}%")


if __name__ == "__main__":
    main()
