"""LagMonitor: consumer_lag_records and consumer_lag_seconds per assigned partition, kept fresh while idle.

No broker round trip: the high watermark is the one librdkafka cached from its last fetch response, the
committed offset is ours once we committed the partition, else the group's as librdkafka's statistics
report it (fetched at assignment), else the low watermark (a new group starts at the earliest record).

Lag in seconds is the age of the oldest record not yet committed, measured per batch, not per record:
a partition with lag reports the age of the oldest record in hand (the first record of the oldest batch
polled and not yet committed). The maximum over partitions is therefore exact; a single partition may
read high while another partition's older batch is in hand. A partition without lag reads 0. Records the
dead-letter guard let go uncommitted count as in hand (the runner's view keeps their first timestamps), so
lag in seconds keeps growing for as long as the guard holds, however fast the refused batch went through.
When records leave our hands otherwise, the age last seen keeps growing for as long as the committed
offset stays where it was; after a commit, a partition whose next records are not in hand yet reads 0
until they are polled.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from consumer.clock import Clock
from consumer.observability.metrics import Metrics
from consumer.records import TopicPartition

Offsets = Callable[[TopicPartition], int | None]


class LagInputs(Protocol):
    """What a lag refresh reads of the runner's state; read only when a refresh is due or after a commit."""

    def assigned(self) -> Collection[TopicPartition]: ...

    def paused(self) -> Collection[TopicPartition]: ...

    def committed_offset(self, partition: TopicPartition) -> int | None:
        """Our last commit of the partition, None before the first."""

    def group_committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset as the client last reported it."""

    def high_watermark(self, partition: TopicPartition) -> int | None: ...

    def oldest_in_hand_ms(self) -> int | None:
        """Kafka timestamp of the oldest record polled and not yet committed (batch-level)."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One assigned partition as /status shows it."""

    topic: str
    partition: int
    committed: int | None
    high_watermark: int | None
    lag_records: int | None  # None until the committed offset or the high watermark is known
    lag_seconds: float


class LagMonitor:
    def __init__(self, metrics: Metrics, clock: Clock, interval_s: float) -> None:
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._next_at = 0.0
        # librdkafka forgets a paused partition's cached high watermark (its fetch queue is purged), which is
        # exactly while the sink is down and lag matters; the last one seen stands in until it fetches again.
        self._last_high: dict[TopicPartition, int] = {}
        self._aged_from: dict[
            TopicPartition, tuple[int, int]
        ] = {}  # committed offset -> oldest timestamp, ms
        self.partitions: tuple[PartitionLag, ...] = ()

    def due(self) -> bool:
        """Whether an idle refresh is due (one every `interval_s`; commits refresh at once)."""
        return self._clock.monotonic() >= self._next_at

    def refresh(
        self,
        assigned: Collection[TopicPartition],
        committed: Offsets,
        group_committed: Offsets,
        high_watermark: Offsets,
        oldest_in_hand_ms: int | None,
    ) -> tuple[PartitionLag, ...]:
        """Recompute every assigned partition's lag and set both gauges; cost O(partitions)."""
        self._next_at = self._clock.monotonic() + self._interval_s
        now_ms = self._clock.wall() * 1000
        aged_from: dict[TopicPartition, tuple[int, int]] = {}
        last_high: dict[TopicPartition, int] = {}
        rows = []
        for topic, partition in sorted(assigned):
            tp = (topic, partition)
            ours = committed(tp)
            offset = ours if ours is not None else group_committed(tp)
            high = high_watermark(tp)
            if high is None:
                high = self._last_high.get(tp)
            if high is not None:
                last_high[tp] = high
            records = max(0, high - offset) if high is not None and offset is not None else None
            oldest_ms = self._oldest_ms(tp, offset, oldest_in_hand_ms) if records else None
            if oldest_ms is not None and offset is not None:
                aged_from[tp] = (offset, oldest_ms)
            seconds = max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms is not None else 0.0
            if records is not None:
                self._metrics.lag_records.labels(topic, str(partition)).set(records)
            self._metrics.lag_seconds.labels(topic, str(partition)).set(seconds)
            rows.append(PartitionLag(topic, partition, offset, high, records, round(seconds, 3)))
        self._aged_from = aged_from
        self._last_high = last_high  # only assigned partitions: a revoked one is forgotten
        self.partitions = tuple(rows)
        return self.partitions

    def _oldest_ms(self, partition: TopicPartition, offset: int | None, in_hand_ms: int | None) -> int | None:
        """The oldest record in hand, else the one seen last time if the partition has not committed since."""
        if in_hand_ms is not None:
            return in_hand_ms
        before = self._aged_from.get(partition)
        return before[1] if before is not None and before[0] == offset else None


def oldest_timestamp_ms(first_timestamps: Collection[int]) -> int | None:
    """The oldest of the first-record timestamps of the batches in hand; records without one (-1) skipped."""
    known = [ts for ts in first_timestamps if ts >= 0]
    return min(known) if known else None
