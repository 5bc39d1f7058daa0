"""The far-end playout model: a burst toward a phone leaves no lasting queue there."""

from callbridge.media.playout import FarEndPlayout


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
