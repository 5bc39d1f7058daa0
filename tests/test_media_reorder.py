"""The reorder buffer: in-order release, bounded waits for gaps, late and duplicate drops."""

from __future__ import annotations

import random

import pytest

from callbridge.media.reorder import ReorderBuffer


def push_all(buffer: ReorderBuffer[int], order: list[int]) -> list[int]:
    released: list[int] = []
    for seq in order:
        released += buffer.push(seq, seq)
    return released


def test_the_first_depth_items_are_held_then_released_in_order() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    assert buffer.push(2, 2) == []
    assert buffer.push(1, 1) == []
    assert buffer.push(3, 3) == []
    assert buffer.pending == 3
    assert buffer.push(4, 4) == [1, 2, 3, 4]
    assert buffer.pending == 0


def test_in_order_items_pass_straight_through_once_started() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(depth=4)
    for seq in range(1, 5):
        buffer.push(seq, f"f{seq}")
    assert [buffer.push(seq, f"f{seq}") for seq in range(5, 9)] == [["f5"], ["f6"], ["f7"], ["f8"]]
    assert (buffer.dropped, buffer.missing) == (0, 0)


def test_swapped_pairs_are_restored() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    order = [1, 2, 3, 4, 6, 5, 7, 9, 8, 10, 11, 13, 12]
    assert push_all(buffer, order) == list(range(1, 14))
    assert (buffer.dropped, buffer.missing) == (0, 0)


def test_a_gap_is_given_up_on_after_depth_newer_items() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    push_all(buffer, [1, 2, 3, 4])
    assert push_all(buffer, [6, 7, 8]) == []
    assert buffer.push(9, 9) == [6, 7, 8, 9]
    assert buffer.missing == 1
    assert buffer.push(5, 5) == [], "too late once the gap was skipped"
    assert buffer.dropped == 1


def test_a_late_item_within_the_window_fills_its_gap() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    push_all(buffer, [1, 2, 3, 4])
    assert push_all(buffer, [6, 7]) == []
    assert buffer.push(5, 5) == [5, 6, 7]
    assert buffer.missing == 0


def test_several_gaps_in_one_release() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=2)
    push_all(buffer, [1, 2])
    assert buffer.push(4, 4) == []
    assert buffer.push(7, 7) == [4]
    assert buffer.pending == 1
    assert buffer.push(8, 8) == [7, 8]
    assert buffer.missing == 3


def test_duplicates_and_old_items_are_dropped() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=3)
    assert push_all(buffer, [10, 11, 11, 12]) == [10, 11, 12]
    assert push_all(buffer, [12, 3, 14, 14]) == []
    assert buffer.dropped == 4
    assert buffer.push(13, 13) == [13, 14]


def test_depth_one_never_waits() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=1)
    assert buffer.push(5, 5) == [5]
    assert buffer.push(7, 7) == [7]
    assert buffer.push(6, 6) == []
    assert (buffer.missing, buffer.dropped) == (1, 1)


def test_flush_releases_everything_held_in_order() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    assert push_all(buffer, [3, 1]) == []
    assert buffer.flush() == [1, 3]
    assert buffer.missing == 1
    assert buffer.flush() == []
    assert buffer.push(2, 2) == [], "older than what the flush released"
    assert buffer.push(4, 4) == [4]


def test_flush_after_start_counts_the_gaps_up_to_the_last_item() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    push_all(buffer, [1, 2, 3, 4])
    push_all(buffer, [7, 6])
    assert buffer.flush() == [6, 7]
    assert buffer.missing == 1


def test_random_local_shuffles_come_out_sorted() -> None:
    rng = random.Random(7)
    order = list(range(1, 501))
    for start in range(0, 498, 3):  # shuffle within windows of three
        window = order[start : start + 3]
        rng.shuffle(window)
        order[start : start + 3] = window
    buffer: ReorderBuffer[int] = ReorderBuffer(depth=4)
    released = push_all(buffer, order) + buffer.flush()
    assert released == list(range(1, 501))
    assert (buffer.dropped, buffer.missing) == (0, 0)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReorderBuffer(depth=0)
