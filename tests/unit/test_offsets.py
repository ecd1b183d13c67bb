from __future__ import annotations

from consumer.service.offsets import OffsetTracker

P0, P1 = ("t", 0), ("t", 1)


def test_handled_pending_committed() -> None:
    t = OffsetTracker()
    t.assign([P0, P1])
    t.handled({P0: 5, P1: 3})
    assert t.pending() == {P0: 5, P1: 3}
    t.committed({P0: 5, P1: 3})
    assert t.pending() == {}
    assert t.committed_offset(P0) == 5


def test_only_forward() -> None:
    t = OffsetTracker()
    t.assign([P0])
    t.handled({P0: 10})
    t.handled({P0: 7})
    assert t.pending() == {P0: 10}
    t.committed({P0: 10})
    t.handled({P0: 10})
    t.handled({P0: 9})
    assert t.pending() == {}
    t.handled({P0: 11})
    assert t.pending() == {P0: 11}


def test_unassigned_ignored_and_forget() -> None:
    t = OffsetTracker()
    t.assign([P0])
    t.handled({P1: 4})
    assert t.pending() == {}
    t.handled({P0: 4})
    t.forget([P0])
    assert t.pending() == {}
    assert t.assigned == frozenset()
    t.committed({P0: 4})
    assert t.committed_offset(P0) is None


def test_refused_commit_stays_pending_and_newer_pending_survives_old_commit() -> None:
    t = OffsetTracker()
    t.assign([P0])
    t.handled({P0: 5})
    # commit of 5 in flight, then 8 handled; ack of 5 must not drop 8
    t.handled({P0: 8})
    t.committed({P0: 5})
    assert t.pending() == {P0: 8}
    assert t.committed_offset(P0) == 5
    # a commit that never got acked leaves it pending
    assert t.pending() == {P0: 8}


def test_reassign_starts_fresh() -> None:
    t = OffsetTracker()
    t.assign([P0])
    t.handled({P0: 5})
    t.committed({P0: 5})
    t.forget([P0])
    t.assign([P0])
    t.handled({P0: 2})  # the new owner may legitimately be behind
    assert t.pending() == {P0: 2}
