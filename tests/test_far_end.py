"""The far-end playout model: a burst toward a phone leaves no lasting queue there."""

import numpy as np

from callbridge.media.playout import FarEndPlayout

QUIET = np.zeros(160, dtype=np.int16)
LOUD = np.full(160, 3000, dtype=np.int16)


def heard_delay(sends: list[float]) -> list[float]:
    """How long each frame waits at a far end that plays frames back to back at real time."""
    delays, ends = [], 0.0
    for at in sends:
        start = max(at, ends)
        ends = start + 0.02
        delays.append(start - at)
    return delays


def test_steady_frames_are_all_sent() -> None:
    far_end = FarEndPlayout()
    assert all(far_end.admit(k * 0.02 + 0.001 * (k % 3)) for k in range(500))
    assert far_end.dropped == 0


def test_a_burst_is_taken_back_within_a_window_or_two() -> None:
    far_end = FarEndPlayout(window=15)
    times = [k * 0.02 for k in range(50)]
    times += [0.99 + 0.0001 * k for k in range(4)]  # four frames too many, back to back
    times += [k * 0.02 for k in range(50, 250)]
    sent = [at for at in times if far_end.admit(at)]
    delays = heard_delay(sent)
    assert max(delays) >= 0.06, "the burst did queue at the far end"
    assert far_end.dropped >= 3
    assert max(delays[-100:]) < 0.005, "and no lasting delay is left"


def test_reset_forgets_the_queue() -> None:
    far_end = FarEndPlayout(window=2)
    for _ in range(4):
        far_end.admit(0.0)
    far_end.reset()
    assert far_end.admit(0.0) and far_end.admit(0.02)


def late_frame_stream(late: float, frames: int = 100) -> list[float]:
    """Send times of a steady stream whose tenth frame is ``late`` seconds late and every
    other frame on time: the far end keeps that lateness queued ahead of all that follows."""
    return [k * 0.02 + (late if k == 9 else 0.0) for k in range(frames)]


def test_less_than_a_frame_standing_is_taken_back_by_skipping_a_quiet_frame() -> None:
    far_end = FarEndPlayout()
    times = late_frame_stream(0.015)
    sent = [at for at in times if far_end.admit(at, QUIET)]
    assert far_end.quiet_skipped == 1 and far_end.dropped == 1
    assert max(heard_delay(sent)) < 1e-9, "nothing stands once one quiet frame was skipped"
    unaware = FarEndPlayout()  # frames not offered: the late frame's 15 ms stay for good
    kept = [at for at in times if unaware.admit(at)]
    assert min(heard_delay(kept)[10:]) >= 0.015 - 1e-9


def test_loud_frames_are_never_skipped_for_part_of_a_frame() -> None:
    far_end = FarEndPlayout()
    times = late_frame_stream(0.015)
    assert all(far_end.admit(at, LOUD) for at in times)
    assert far_end.dropped == 0
    # Once quiet frames come, the standing part of a frame goes.
    assert not far_end.admit(100 * 0.02, QUIET)
    assert far_end.admit(101 * 0.02, QUIET)


def test_less_than_half_a_frame_standing_skips_nothing() -> None:
    far_end = FarEndPlayout()
    assert all(far_end.admit(at, QUIET) for at in late_frame_stream(0.008))
    assert far_end.dropped == 0
