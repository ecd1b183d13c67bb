"""DlqGuard: the share of dead letters over the most recent DLQ_GUARD_MIN_RECORDS records processed."""

from __future__ import annotations

import pytest

from consumer.errors import GuardTrippedError
from consumer.service.guard import DlqGuard


def _passes(guard: DlqGuard, size: int, dead: list[int]) -> bool:
    try:
        guard.check(size, dead)
    except GuardTrippedError:
        return False
    guard.record(size, dead)
    return True


def test_never_trips_before_the_window_holds_min_records() -> None:
    guard = DlqGuard(max_ratio=0.2, min_records=100)
    assert _passes(guard, 50, list(range(50)))  # all poison, but only 50 records seen
    assert not _passes(guard, 50, [])  # 50 of the last 100 dead: over 0.2
    assert guard.tripped


def test_a_batch_larger_than_the_window_is_judged_whole() -> None:
    guard = DlqGuard(max_ratio=0.2, min_records=100)
    assert _passes(guard, 1000, list(range(200)))  # exactly 0.2 is not over it
    assert not _passes(guard, 1000, list(range(201)))


def test_the_oldest_batch_is_cut_exactly_at_the_window_edge() -> None:
    """Where a partly covered batch's dead letters sit decides; a pro-rata share would get both wrong."""
    guard = DlqGuard(max_ratio=0.1, min_records=100)
    assert _passes(guard, 100, list(range(10)))  # 10 dead, all at the start
    assert _passes(guard, 50, [])  # window: 50 + the last 50 of the first, where nothing died -> 0 of 100
    assert _passes(guard, 50, list(range(10)))  # window: 50 (10 dead) + 50 clean -> 10 of 100, not over
    assert _passes(guard, 100, list(range(90, 100)))  # judged whole: 10 of 100, dead at the end
    assert not _passes(guard, 10, [0])  # 1 + the last 90 of the previous, holding all its 10 -> 11 of 100


def test_a_check_that_fails_holds_for_good_and_a_clean_batch_cannot_trip_it() -> None:
    guard = DlqGuard(max_ratio=0.5, min_records=10)
    for _ in range(5):
        assert _passes(guard, 10, [0, 1, 2, 3, 4])  # exactly half, again and again
    assert not _passes(guard, 10, [0, 1, 2, 3, 4, 5])
    with pytest.raises(GuardTrippedError):
        guard.check(10, [])  # tripped: even a clean batch is refused until a restart


def test_check_does_not_remember_the_batch() -> None:
    guard = DlqGuard(max_ratio=0.5, min_records=10)
    guard.check(10, [0, 1, 2])  # checked after decode
    guard.check(10, [0, 1, 2, 3])  # checked again with the rows the sink rejected
    guard.record(10, [0, 1, 2, 3])
    assert _passes(guard, 10, [0])
