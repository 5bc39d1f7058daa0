"""Per-frame cost of the 20 ms resamplers, and the measured response of the frame filter.

    .venv/bin/python -m benchmarks.resample_bench

Times one 20 ms frame through :class:`FrameResampler`, through :class:`StreamResampler`
(libsoxr's variable-rate engine, int16 in and out) and through bare ``soxr.ResampleStream``
(``vr=True``, float32, no conversions). Each figure is the fastest of many short batches, so
a busy machine inflates it less than a mean would.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import soxr

from callbridge.media.analysis import level_dbfs
from callbridge.media.resample import (
    SUPPORTED_RATES,
    ZERO_CROSSINGS,
    FrameResampler,
    StreamResampler,
    kaiser_prototype,
)
from callbridge.media.tones import ToneGenerator

DEFAULT_PAIRS = [(8000, 16000), (16000, 8000), (16000, 48000), (48000, 16000), (16000, 24000)]


def per_call_us(work: Callable[[], object], batch: int = 200, batches: int = 300) -> float:
    for _ in range(batch):
        work()
    best = math.inf
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            work()
        best = min(best, time.perf_counter() - start)
    return best / batch * 1e6


def timing_rows(pairs: list[tuple[int, int]]) -> list[str]:
    rows = [
        "| pair | FrameResampler µs | StreamResampler (soxr vr) µs | soxr vr float32 µs | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for in_rate, out_rate in pairs:
        frame = ToneGenerator(440, in_rate).next_frame(in_rate // 50)
        frame_resampler = FrameResampler(in_rate, out_rate)
        stream_resampler = StreamResampler(in_rate, out_rate)
        raw = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ", vr=True)
        floats = frame.astype(np.float32)
        ours = per_call_us(partial(frame_resampler.process, frame))
        stream = per_call_us(partial(stream_resampler.process, frame))
        bare = per_call_us(partial(raw.resample_chunk, floats))
        rows.append(
            f"| {in_rate // 1000}k -> {out_rate // 1000}k | {ours:.2f} | {stream:.2f} |"
            f" {bare:.2f} | {stream / ours:.1f}x |"
        )
    return rows


def filter_rows() -> list[str]:
    rows = [
        "| pair | taps | L/M | delay ms | -0.5 dB at | -3 dB at | worst stopband >= 1.15 x Nyq |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for in_rate, out_rate in itertools.permutations(SUPPORTED_RATES, 2):
        taps = kaiser_prototype(in_rate, out_rate)
        common = math.lcm(in_rate, out_rate)
        gcd = math.gcd(in_rate, out_rate)
        up, down = out_rate // gcd, in_rate // gcd
        lower = min(in_rate, out_rate)
        size = 1 << 18
        gain = 20 * np.log10(np.abs(np.fft.rfft(taps / up, size)) + 1e-15)
        freqs = np.fft.rfftfreq(size, 1 / common)
        half_db = freqs[np.argmax(gain < -0.5)]
        three_db = freqs[np.argmax(gain < -3)]
        stop = -gain[freqs >= 1.15 * lower / 2].max()
        rows.append(
            f"| {in_rate // 1000}k -> {out_rate // 1000}k | {len(taps)} | {up}/{down} |"
            f" {ZERO_CROSSINGS / lower * 1000:.2f} | {half_db:.0f} Hz | {three_db:.0f} Hz |"
            f" {stop:.1f} dB |"
        )
    return rows


def measured_rows() -> list[str]:
    rows = []
    tone = ToneGenerator(6000, 16000).next_frame(16000)
    resampler = FrameResampler(16000, 8000)
    out = np.concatenate([resampler.process(f) for f in tone.reshape(-1, 320)])
    taps = kaiser_prototype(16000, 8000)
    at_6k = abs(np.sum(taps * np.exp(-2j * np.pi * 6000 / 16000 * np.arange(len(taps)))))
    steady = out[160:]
    rows.append(
        f"6 kHz tone 16k -> 8k: in {level_dbfs(tone):.1f} dBFS, out {level_dbfs(steady):.1f}"
        f" dBFS (peak {np.abs(steady).max()}); filter gain at 6 kHz"
        f" {20 * np.log10(at_6k):.1f} dB"
    )
    for in_rate, out_rate in [(8000, 16000), (16000, 8000), (16000, 48000)]:
        resampler = FrameResampler(in_rate, out_rate)
        frame = np.zeros(in_rate // 50, dtype=np.int16)
        frame[in_rate // 100] = 16000
        peak = int(np.argmax(np.abs(resampler.process(frame))))
        delay = (peak - (in_rate // 100) * out_rate // in_rate) / out_rate
        rows.append(
            f"impulse {in_rate // 1000}k -> {out_rate // 1000}k: peak {delay * 1000:.3f} ms late"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="time every pair of rates")
    args = parser.parse_args()
    pairs = list(itertools.permutations(SUPPORTED_RATES, 2)) if args.all else DEFAULT_PAIRS
    print("\n".join(timing_rows(pairs)))
    print()
    print("\n".join(filter_rows()))
    print()
    print("\n".join(measured_rows()))


if __name__ == "__main__":
    main()
