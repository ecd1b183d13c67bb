"""Offset bookkeeping: what to commit per partition (last handled offset + 1), and what was committed.

Offsets only move forward, only for partitions we still own, and a commit the broker refused stays
pending so the next turn tries again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from consumer.records import TopicPartition


class OffsetTracker:
    def __init__(self) -> None:
        self._assigned: set[TopicPartition] = set()
        self._pending: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def assign(self, partitions: Collection[TopicPartition]) -> None:
        self._assigned.update(partitions)

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        """Revoked or lost: nothing of theirs is committed by us any more."""
        for partition in partitions:
            self._assigned.discard(partition)
            self._pending.pop(partition, None)
            self._committed.pop(partition, None)

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    def handled(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """A batch is in the sink and the dead-letter topic: its offsets may be committed."""
        for partition, offset in next_offsets.items():
            if partition not in self._assigned:
                continue  # lost while the batch was in flight: its next owner replays it
            if offset > max(self._pending.get(partition, -1), self._committed.get(partition, -1)):
                self._pending[partition] = offset

    def pending(self) -> dict[TopicPartition, int]:
        return dict(self._pending)

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        for partition, offset in offsets.items():
            if self._pending.get(partition) == offset:
                del self._pending[partition]
            if partition in self._assigned:
                self._committed[partition] = max(offset, self._committed.get(partition, -1))

    def committed_offset(self, partition: TopicPartition) -> int | None:
        return self._committed.get(partition)
