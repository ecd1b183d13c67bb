from __future__ import annotations

from fakeclock import FakeClock

from consumer.records import CloseReason, RawRecord
from consumer.service.batcher import Batcher


def rec(offset: int, partition: int = 0, size: int = 10, topic: str = "t") -> RawRecord:
    return RawRecord(topic, partition, offset, 0, None, b"x" * size)


def make(max_records: int = 100, max_bytes: int = 10_000, wait: float = 1.0) -> tuple[Batcher, FakeClock]:
    clock = FakeClock()
    return Batcher(max_records, max_bytes, wait, clock), clock


def test_closes_on_count() -> None:
    b, _ = make(max_records=3)
    closed = b.add([rec(i) for i in range(7)])
    assert [len(x) for x in closed] == [3, 3]
    assert all(x.close_reason is CloseReason.RECORDS for x in closed)
    assert [r.offset for r in closed[0].records] == [0, 1, 2]
    assert [r.offset for r in closed[1].records] == [3, 4, 5]
    assert len(b) == 1
    assert b.room() == 2
    assert closed[0].batch_id < closed[1].batch_id


def test_closes_on_bytes_before_overflowing() -> None:
    b, _ = make(max_bytes=25)
    closed = b.add([rec(0), rec(1), rec(2)])  # 10 + 10, then 10 more would make 30 > 25
    assert len(closed) == 1
    assert closed[0].close_reason is CloseReason.BYTES
    assert [r.offset for r in closed[0].records] == [0, 1]
    assert closed[0].value_bytes == 20
    assert len(b) == 1


def test_closes_on_bytes_exactly_reached() -> None:
    b, _ = make(max_bytes=20)
    closed = b.add([rec(0), rec(1)])
    assert len(closed) == 1 and closed[0].close_reason is CloseReason.BYTES
    assert len(b) == 0


def test_single_oversized_record_is_its_own_batch() -> None:
    b, _ = make(max_bytes=5)
    closed = b.add([rec(0, size=50)])
    assert len(closed) == 1 and [r.offset for r in closed[0].records] == [0]


def test_time_measured_from_oldest_record() -> None:
    b, clock = make(wait=1.0)
    assert b.seconds_until_due() is None
    assert b.close_if_due() is None
    clock.advance(5.0)  # idle time before the first record does not count
    b.add([rec(0)])
    clock.advance(0.6)
    b.add([rec(1)])  # a newer record does not restart the wait
    assert abs(b.seconds_until_due() - 0.4) < 1e-9
    clock.advance(0.3)
    assert b.close_if_due() is None
    clock.advance(0.1)
    batch = b.close_if_due()
    assert batch is not None and batch.close_reason is CloseReason.TIME
    assert [r.offset for r in batch.records] == [0, 1]
    assert b.seconds_until_due() is None


def test_wait_restarts_for_the_batch_after_a_count_close() -> None:
    b, clock = make(max_records=2, wait=1.0)
    b.add([rec(0)])
    clock.advance(0.9)
    closed = b.add([rec(1), rec(2)])
    assert len(closed) == 1
    assert abs(b.seconds_until_due() - 1.0) < 1e-9


def test_flush() -> None:
    b, _ = make()
    assert b.flush(CloseReason.SHUTDOWN) is None
    b.add([rec(0), rec(1)])
    batch = b.flush(CloseReason.SHUTDOWN)
    assert batch is not None and batch.close_reason is CloseReason.SHUTDOWN and len(batch) == 2
    assert len(b) == 0


def test_take_partitions_keeps_order() -> None:
    b, _ = make()
    records = [rec(0, 0), rec(0, 1), rec(1, 0), rec(1, 1), rec(2, 0), rec(0, 2)]
    b.add(records)
    taken = b.take([("t", 0), ("t", 2)], CloseReason.REVOKE)
    assert taken is not None and taken.close_reason is CloseReason.REVOKE
    assert [(r.partition, r.offset) for r in taken.records] == [(0, 0), (0, 1), (0, 2), (2, 0)]
    assert taken.value_bytes == 40
    rest = b.flush(CloseReason.SHUTDOWN)
    assert rest is not None
    assert [(r.partition, r.offset) for r in rest.records] == [(1, 0), (1, 1)]
    assert rest.value_bytes == 20


def test_take_nothing_returns_none() -> None:
    b, _ = make()
    b.add([rec(0, 0)])
    assert b.take([("t", 9)], CloseReason.REVOKE) is None
    assert len(b) == 1


def test_drop_partitions_keeps_order_and_bytes() -> None:
    b, _ = make(max_bytes=35)
    b.add([rec(0, 0), rec(0, 1), rec(1, 0)])
    assert b.drop([("t", 0)]) == 2
    assert len(b) == 1
    closed = b.add([rec(1, 1), rec(2, 1)])  # 10 + 10 + 10 = 30 < 35: no close if bytes were recomputed
    assert closed == []
    rest = b.flush(CloseReason.SHUTDOWN)
    assert [(r.partition, r.offset) for r in rest.records] == [(1, 0), (1, 1), (1, 2)]


def test_next_offsets() -> None:
    b, _ = make()
    b.add([rec(5, 0), rec(9, 1), rec(6, 0)])
    batch = b.flush(CloseReason.SHUTDOWN)
    assert batch.next_offsets() == {("t", 0): 7, ("t", 1): 10}


def test_a_shrunk_limit_closes_the_open_batch_at_the_next_check_and_applies_to_the_next() -> None:
    b, _ = make(max_records=100)
    assert b.add([rec(i) for i in range(30)]) == []
    b.set_max_records(20)  # adaptive batching learned the sink is slow
    assert b.room() == 0
    closed = b.close_if_due()
    assert closed is not None and closed.close_reason is CloseReason.RECORDS and len(closed) == 30
    assert [len(x) for x in b.add([rec(i) for i in range(30, 75)])] == [20, 20]
    assert len(b) == 5
