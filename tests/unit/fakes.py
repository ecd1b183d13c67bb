"""Fakes of our own roles (Source, BatchProcessor) for testing the runner's logic without a broker.

They implement the Protocols, record what was asked of them, and fail or block on demand. Delivery
guarantees are proven against the real broker and databases in tests/integration; these pin down the
runner's ordering and holding rules, which a real broker makes hard to stage exactly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Mapping

from consumer.decode.decoder import DecodedBatch
from consumer.records import Batch, BatchResult, CommitOutcome, RawRecord, TopicCounts, TopicPartition
from consumer.roles import RebalanceListener
from consumer.service.pipeline import Collapsed, Decoded

_IDLE_WAIT_S = 0.005  # an empty poll waits this long, as a real one waits for its timeout, so loops do not spin


class FakeSource:
    """Serves records fed per partition, round-robin, skipping paused partitions; assigns them all at the
    first poll; every commit succeeds and is recorded."""

    def __init__(self, partitions: Collection[TopicPartition]) -> None:
        self._queues: dict[TopicPartition, deque[RawRecord]] = {tp: deque() for tp in partitions}
        self._listener: RebalanceListener | None = None
        self._assigned = False
        self._lock = threading.Lock()
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.polls = 0
        self.pause_calls = 0
        self.timeouts: list[float] = []
        self.resume_calls = 0
        self.handed_out = 0
        self.closed = False
        self._fed: dict[TopicPartition, int] = {}

    def feed(self, partition: TopicPartition, count: int) -> None:
        """Append `count` records to `partition`, offsets following the ones fed before."""
        with self._lock:
            start = self._fed.get(partition, 0)
            self._queues[partition].extend(
                RawRecord(partition[0], partition[1], start + i, 0, None, b"v") for i in range(count)
            )
            self._fed[partition] = start + count

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        assert self._listener is not None
        self.polls += 1
        self.timeouts.append(timeout_s)
        if not self._assigned:
            self._assigned = True
            self._listener.on_assigned(list(self._queues))
        out: list[RawRecord] = []
        with self._lock:
            live = [q for tp, q in self._queues.items() if tp not in self.paused and q]
            while live and len(out) < max(1, max_records):
                for queue in list(live):
                    if not queue or len(out) >= max(1, max_records):
                        live.remove(queue)
                        continue
                    out.append(queue.popleft())
        self.handed_out += len(out)
        if not out:
            threading.Event().wait(min(timeout_s, _IDLE_WAIT_S))
        return out

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused |= set(partitions)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self.resume_calls += 1
        self.paused -= set(partitions)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> CommitOutcome:
        if not offsets:
            return CommitOutcome()
        self.commits.append(dict(offsets))
        return CommitOutcome(committed=dict(offsets))

    def high_watermark(self, partition: TopicPartition) -> int | None:
        return None

    def group_committed(self, partition: TopicPartition) -> int | None:
        return None

    def close(self) -> None:
        self.closed = True

    def last_committed(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class FakePipeline:
    """Processes a batch by returning its next offsets; `gates` block a batch id until set, `failures`
    are raised, one per attempt, for a batch id. Records attempts and completions in order."""

    def __init__(self) -> None:
        self.gates: dict[int, threading.Event] = {}
        self.failures: dict[int, list[Exception]] = {}
        self.attempts: list[int] = []
        self.processed: list[Batch] = []
        self.decoded_ahead: list[int] = []
        self.given_decoded: list[int] = []

    def gate(self, batch_id: int) -> threading.Event:
        event = self.gates[batch_id] = threading.Event()
        return event

    def decode(self, batch: Batch) -> Decoded:
        self.decoded_ahead.append(batch.batch_id)
        return Decoded(batch, DecodedBatch(), Collapsed([], {}), 0.0)

    def process(self, batch: Batch, decoded: Decoded | None = None) -> BatchResult:
        self.attempts.append(batch.batch_id)
        if decoded is not None:
            assert decoded.batch is batch
            self.given_decoded.append(batch.batch_id)
        gate = self.gates.get(batch.batch_id)
        if gate is not None:
            gate.wait(30)
        failures = self.failures.get(batch.batch_id)
        if failures:
            raise failures.pop(0)
        self.processed.append(batch)
        counts: dict[str, TopicCounts] = {}
        for record in batch.records:
            counts.setdefault(record.topic, TopicCounts()).sunk += 1
        return BatchResult(batch=batch, next_offsets=batch.next_offsets(), counts=counts)
