"""LagMonitor: consumer_lag_records and consumer_lag_seconds per assigned partition, kept fresh while idle.

No broker round trip: the high watermark is the one librdkafka cached from its last fetch response, the
committed offset is ours once we committed the partition, else the group's as librdkafka's statistics
report it (fetched at assignment), else the low watermark (a new group starts at the earliest record).

Lag in seconds is the age of the oldest record not yet committed, measured per batch, not per record:
a partition with lag reports the age of the oldest record in hand (the first record of the oldest batch
polled and not yet committed). The maximum over partitions is therefore exact; a single partition may
read high while another partition's older batch is in hand. A partition without lag reads 0, and so
does one whose records are not in hand yet (not fetched since the last commit).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from consumer.clock import Clock
from consumer.metrics import Metrics
from consumer.records import TopicPartition

Offsets = Callable[[TopicPartition], int | None]


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
        age_s = 0.0
        if oldest_in_hand_ms is not None:
            age_s = max(0.0, self._clock.wall() - oldest_in_hand_ms / 1000)
        rows = []
        for topic, partition in sorted(assigned):
            tp = (topic, partition)
            ours = committed(tp)
            offset = ours if ours is not None else group_committed(tp)
            high = high_watermark(tp)
            records = max(0, high - offset) if high is not None and offset is not None else None
            seconds = age_s if records else 0.0
            if records is not None:
                self._metrics.lag_records.labels(topic, str(partition)).set(records)
            self._metrics.lag_seconds.labels(topic, str(partition)).set(seconds)
            rows.append(PartitionLag(topic, partition, offset, high, records, round(seconds, 3)))
        self.partitions = tuple(rows)
        return self.partitions

    def total_records(self) -> int:
        return sum(row.lag_records or 0 for row in self.partitions)

    def max_seconds(self) -> float:
        return max((row.lag_seconds for row in self.partitions), default=0.0)


def oldest_timestamp_ms(first_timestamps: Collection[int]) -> int | None:
    """The oldest of the first-record timestamps of the batches in hand; records without one (-1) skipped."""
    known = [ts for ts in first_timestamps if ts >= 0]
    return min(known) if known else None
