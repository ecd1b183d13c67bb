"""LagMonitor: lag in records from cached offsets, lag in seconds from the oldest batch in hand."""

from __future__ import annotations

from fakeclock import FakeClock
from prometheus_client import CollectorRegistry

from consumer.observability.lag import LagMonitor, oldest_timestamp_ms
from consumer.observability.metrics import Metrics

A, B = ("t", 0), ("t", 1)


def _gauge(registry: CollectorRegistry, name: str, partition: int) -> float | None:
    return registry.get_sample_value(name, {"topic": "t", "partition": str(partition)})


def test_lag_uses_our_commit_then_the_groups_then_nothing() -> None:
    registry, clock = CollectorRegistry(), FakeClock()
    lag = LagMonitor(Metrics(registry, ["t"]), clock, 1.0)
    ours = {A: 40}
    group = {A: 10, B: 5}
    high = {A: 50, B: 5}
    rows = lag.refresh([A, B, ("t", 2)], ours.get, group.get, high.get, None)
    assert [(r.partition, r.committed, r.lag_records) for r in rows] == [
        (0, 40, 10),
        (1, 5, 0),
        (2, None, None),
    ]
    assert _gauge(registry, "consumer_lag_records", 0) == 10
    assert _gauge(registry, "consumer_lag_records", 1) == 0
    assert _gauge(registry, "consumer_lag_records", 2) is None  # unknown is not reported as caught up
    assert sum(r.lag_records or 0 for r in lag.partitions) == 10


def test_lag_seconds_is_the_age_of_the_oldest_record_in_hand_for_partitions_with_lag() -> None:
    registry, clock = CollectorRegistry(), FakeClock(wall=1_700_000_100.0)
    lag = LagMonitor(Metrics(registry, ["t"]), clock, 1.0)
    in_hand = oldest_timestamp_ms([1_700_000_090_000, 1_700_000_070_000, -1])
    assert in_hand == 1_700_000_070_000
    lag.refresh([A, B], {A: 3, B: 9}.get, {}.get, {A: 9, B: 9}.get, in_hand)
    assert _gauge(registry, "consumer_lag_seconds", 0) == 30.0
    assert _gauge(registry, "consumer_lag_seconds", 1) == 0.0  # caught up: nothing uncommitted
    assert max(r.lag_seconds for r in lag.partitions) == 30.0
    lag.refresh([A, B], {A: 9, B: 9}.get, {}.get, {A: 9, B: 9}.get, None)
    assert _gauge(registry, "consumer_lag_seconds", 0) == 0.0


def test_refresh_is_due_once_per_interval() -> None:
    clock = FakeClock()
    lag = LagMonitor(Metrics(CollectorRegistry(), ["t"]), clock, 1.0)
    assert lag.due()
    lag.refresh([], {}.get, {}.get, {}.get, None)
    assert not lag.due()
    clock.advance(0.5)
    assert not lag.due()
    clock.advance(0.5)
    assert lag.due()


def test_no_timestamps_in_hand_means_no_age() -> None:
    assert oldest_timestamp_ms([]) is None
    assert oldest_timestamp_ms([-1, -1]) is None


def test_an_age_keeps_growing_while_records_left_our_hands_uncommitted() -> None:
    """The guard drops the batch in hand: nothing is in hand, nothing is committed, the records get older."""
    registry, clock = CollectorRegistry(), FakeClock(wall=1_700_000_100.0)
    lag = LagMonitor(Metrics(registry, ["t"]), clock, 1.0)
    committed, high = {A: 3}, {A: 9}
    lag.refresh([A], committed.get, {}.get, high.get, 1_700_000_090_000)
    assert _gauge(registry, "consumer_lag_seconds", 0) == 10.0
    clock.advance(20)
    lag.refresh([A], committed.get, {}.get, high.get, None)
    assert _gauge(registry, "consumer_lag_seconds", 0) == 30.0
    committed[A] = 6  # a commit moved the partition: the remembered record is behind us
    lag.refresh([A], committed.get, {}.get, high.get, None)
    assert _gauge(registry, "consumer_lag_seconds", 0) == 0.0


def test_a_paused_partitions_forgotten_high_watermark_keeps_its_last_value_while_assigned() -> None:
    """librdkafka drops a paused partition's cached high watermark: during a sink outage (everything paused)
    lag in records and seconds must still show, from the last watermark seen."""
    registry, clock = CollectorRegistry(), FakeClock(wall=1_700_000_100.0)
    lag = LagMonitor(Metrics(registry, ["t"]), clock, 1.0)
    lag.refresh([A], {A: 10}.get, {}.get, {A: 50}.get, 1_700_000_090_000)
    clock.advance(5)
    rows = lag.refresh([A], {A: 10}.get, {}.get, {}.get, 1_700_000_090_000)  # paused: watermark unknown
    assert [(r.high_watermark, r.lag_records) for r in rows] == [(50, 40)]
    assert _gauge(registry, "consumer_lag_seconds", 0) == 15.0
    lag.refresh([B], {}.get, {}.get, {}.get, None)  # A revoked: its watermark is forgotten
    rows = lag.refresh([A], {A: 10}.get, {}.get, {}.get, None)
    assert [(r.high_watermark, r.lag_records) for r in rows] == [(None, None)]
