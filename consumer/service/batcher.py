"""Micro-batches: close at BATCH_MAX_RECORDS, BATCH_MAX_BYTES or BATCH_MAX_WAIT_MS, whichever comes first.

The wait is measured from when the batch's oldest record arrived here (not from its Kafka timestamp,
which for a backlog would close every batch at once). Records keep their polling order, so
per-partition order holds inside and across batches.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import count

from consumer.clock import Clock
from consumer.records import Batch, CloseReason, RawRecord, TopicPartition


class Batcher:
    def __init__(self, max_records: int, max_bytes: int, max_wait_s: float, clock: Clock) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._ids = count(1)
        self._records: list[RawRecord] = []
        self._bytes = 0
        self._opened_at = 0.0

    def __len__(self) -> int:
        return len(self._records)

    def room(self) -> int:
        """Records the open batch can still take before it closes on count."""
        return max(0, self._max_records - len(self._records))

    def set_max_records(self, max_records: int) -> None:
        """A new count limit (adaptive batching); an open batch already at it closes on the next check."""
        self._max_records = max_records

    def add(self, records: Sequence[RawRecord]) -> list[Batch]:
        """Append polled records; return the batches that closed on count or bytes, oldest first."""
        closed: list[Batch] = []
        if records and not self._records:
            self._opened_at = self._clock.monotonic()
        for record in records:
            size = len(record.value) if record.value is not None else 0
            if self._records and self._bytes + size > self._max_bytes:
                closed.append(self._close(CloseReason.BYTES))
            if not self._records:
                self._opened_at = self._clock.monotonic()
            self._records.append(record)
            self._bytes += size
            if len(self._records) >= self._max_records:
                closed.append(self._close(CloseReason.RECORDS))
            elif self._bytes >= self._max_bytes:
                closed.append(self._close(CloseReason.BYTES))
        return closed

    def oldest_timestamp_ms(self) -> int | None:
        """Kafka timestamp of the open batch's first record (its oldest, for consumer_lag_seconds)."""
        return self._records[0].timestamp_ms if self._records else None

    def seconds_until_due(self) -> float | None:
        """Time left before the open batch closes on time; None when it is empty."""
        if not self._records:
            return None
        return max(0.0, self._opened_at + self._max_wait_s - self._clock.monotonic())

    def close_if_due(self) -> Batch | None:
        if self._records and len(self._records) >= self._max_records:
            return self._close(CloseReason.RECORDS)  # the limit shrank under the open batch
        remaining = self.seconds_until_due()
        if remaining is None or remaining > 0:
            return None
        return self._close(CloseReason.TIME)

    def flush(self, reason: CloseReason) -> Batch | None:
        """Close the open batch now (shutdown), if it holds anything."""
        return self._close(reason) if self._records else None

    def take(self, partitions: Collection[TopicPartition], reason: CloseReason) -> Batch | None:
        """Split the records of `partitions` out of the open batch (revoke), keeping the rest open."""
        taken = self._split(partitions)
        if not taken:
            return None
        return Batch(next(self._ids), taken, reason, sum(r.size for r in taken), self._opened_at)

    def drop(self, partitions: Collection[TopicPartition]) -> int:
        """Forget the records of lost partitions; they were never committed and the next owner replays them."""
        return len(self._split(partitions))

    def _split(self, partitions: Collection[TopicPartition]) -> list[RawRecord]:
        wanted = set(partitions)
        taken = [r for r in self._records if (r.topic, r.partition) in wanted]
        if taken:
            self._records = [r for r in self._records if (r.topic, r.partition) not in wanted]
            self._bytes = sum(r.size for r in self._records)
        return taken

    def _close(self, reason: CloseReason) -> Batch:
        batch = Batch(next(self._ids), self._records, reason, self._bytes, self._opened_at)
        self._records = []
        self._bytes = 0
        return batch
