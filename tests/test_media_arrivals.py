"""How caller frames arrived: lost, reordered, duplicate and late frames, and jitter, against
hand-made arrival schedules."""

from __future__ import annotations

import random

import pytest

from callbridge.media.arrivals import FrameArrivals


def observed(schedule: list[tuple[int | None, float]]) -> FrameArrivals:
    arrivals = FrameArrivals()
    for sequence, now in schedule:
        arrivals.observe(sequence, now)
    return arrivals


def on_time(sequences: list[int], start: float = 100.0) -> list[tuple[int | None, float]]:
    """Each frame at its own slot of a 20 ms schedule (frame 1 at ``start``)."""
    return [(n, start + (n - 1) * 0.02) for n in sequences]


def delayed(
    schedule: list[tuple[int | None, float]], sequence: int, after: int
) -> list[tuple[int | None, float]]:
    """``schedule`` with frame ``sequence`` held back until just after frame ``after``."""
    kept = [item for item in schedule if item[0] != sequence]
    at = next(i for i, (n, _) in enumerate(kept) if n == after)
    return [*kept[: at + 1], (sequence, kept[at][1] + 0.001), *kept[at + 1 :]]


def counts(arrivals: FrameArrivals) -> tuple[int, int, int, int]:
    return arrivals.lost, arrivals.reordered, arrivals.duplicates, arrivals.late


def test_a_steady_stream_has_nothing_to_report() -> None:
    arrivals = observed(on_time(list(range(1, 501))))
    assert counts(arrivals) == (0, 0, 0, 0)
    assert arrivals.frames == 500
    assert arrivals.jitter == pytest.approx(0, abs=1e-9)


def test_skipped_numbers_are_lost() -> None:
    arrivals = observed(on_time([1, 2, 3, 5, 6, 9, 10]))
    assert counts(arrivals) == (3, 0, 0, 0)  # 4, 7 and 8


def test_a_number_that_arrives_later_is_reordered_not_lost() -> None:
    # 3 comes just after 4; 7 after 12, 100 ms behind its slot (so late too); 9 never comes.
    schedule = [item for item in on_time(list(range(1, 14))) if item[0] != 9]
    arrivals = observed(delayed(delayed(schedule, 3, after=4), 7, after=12))
    assert (arrivals.lost, arrivals.reordered, arrivals.duplicates) == (1, 2, 0)
    assert arrivals.late == 1


def test_a_swapped_first_pair_is_reordered_not_lost() -> None:
    arrivals = observed([(2, 0.0), (1, 0.001), (3, 0.04)])
    assert counts(arrivals) == (0, 1, 0, 0)


def test_numbers_seen_twice_are_duplicates() -> None:
    schedule = on_time([1, 2, 3, 4, 5])
    schedule[3:3] = [(3, schedule[2][1]), (2, schedule[2][1])]
    arrivals = observed(schedule)
    assert counts(arrivals) == (0, 0, 2, 0)
    assert arrivals.frames == 7


def test_a_number_older_than_the_window_counts_as_reordered() -> None:
    schedule = on_time(list(range(1, 101)))
    arrivals = observed(schedule)
    arrivals.observe(5, schedule[-1][1])  # 95 numbers back: a duplicate or not, it cannot tell
    assert (arrivals.lost, arrivals.reordered, arrivals.duplicates) == (0, 1, 0)


def test_a_stall_makes_the_frames_that_waited_late() -> None:
    schedule = on_time(list(range(1, 201)))
    # Frames 101..110 are held until 200 ms after frame 101's slot and arrive together.
    released = schedule[100][1] + 0.2
    schedule[100:110] = [(n, released) for n in range(101, 111)]
    arrivals = observed(schedule)
    # Frame 101 is 200 ms behind its slot, 108 60 ms, 109 40 ms (not more): 101 to 108.
    assert arrivals.late == 8
    assert (arrivals.lost, arrivals.reordered) == (0, 0)


def test_a_burst_after_silence_on_the_wire_counts_only_the_delayed_frames() -> None:
    # No sequence numbers: 50 frames on time, then five frames in one burst 100 ms late.
    times = [k * 0.02 for k in range(50)]
    times += [50 * 0.02 + 0.1] * 5
    arrivals = observed([(None, at) for at in times])
    # The burst's frames are 100, 80, 60, 40 and 20 ms behind their slots.
    assert counts(arrivals) == (0, 0, 0, 3)


@pytest.mark.parametrize("ppm", [300, -300])
def test_a_provider_clock_drifting_300_ppm_for_ten_minutes_is_not_late(ppm: int) -> None:
    spacing = 0.02 * (1 + ppm * 1e-6)
    rng = random.Random(7)
    frames = 30_000  # ten minutes
    arrivals = observed([(n, n * spacing + rng.uniform(0, 0.01)) for n in range(frames)])
    assert arrivals.late == 0
    # Without the allowance the slow clock's 180 ms of drift would make most frames late.
    strict = FrameArrivals(drift_allowance=0)
    for n in range(frames):
        strict.observe(n, n * 0.02 * (1 + 300e-6))
    assert strict.late > frames // 2


def test_jitter_follows_rfc_3550() -> None:
    # Transit alternates between 0 and 4 ms: |D| is 4 ms for every pair, so J tends to 4 ms.
    schedule = [(n, n * 0.02 + (0.004 if n % 2 else 0.0)) for n in range(400)]
    arrivals = observed(schedule)
    assert arrivals.jitter == pytest.approx(0.004, rel=1e-3)
    # The same estimate by hand for the first frames.
    expected = 0.0
    for _ in range(3):
        expected += (0.004 - expected) / 16
    first = observed(schedule[:4])
    assert first.jitter == pytest.approx(expected)


def test_jitter_is_not_raised_by_a_lost_frame_when_frames_are_numbered() -> None:
    numbered = observed(on_time([1, 2, 3, 5, 6, 7]))
    assert numbered.jitter == pytest.approx(0, abs=1e-9)
    unnumbered = observed([(None, at) for _, at in on_time([1, 2, 3, 5, 6, 7])])
    assert unnumbered.jitter > 0.0005, "without numbers the gap looks like a late frame"


def test_duplicates_leave_jitter_and_lateness_alone() -> None:
    schedule = on_time(list(range(1, 50)))
    schedule.insert(30, (10, schedule[29][1]))  # an old copy, 400 ms behind its slot
    arrivals = observed(schedule)
    assert counts(arrivals) == (0, 0, 1, 0)
    assert arrivals.jitter == pytest.approx(0, abs=1e-9)


def test_a_counter_that_jumps_or_restarts_starts_the_count_over() -> None:
    schedule = on_time(list(range(1, 51)))
    # a garbled counter, then one restarted from 1: neither is loss, and the frames stay on time
    schedule += [(10**17 + n, 100 + (49 + n) * 0.02) for n in range(1, 51)]
    schedule += [(n, 100 + (99 + n) * 0.02) for n in range(1, 51)]
    arrivals = observed(schedule)
    assert counts(arrivals) == (0, 0, 0, 0)
    arrivals.observe(53, 100 + 150 * 0.02)  # and gaps count again after it
    assert arrivals.lost == 2
