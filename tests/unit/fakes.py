"""Fakes of our own roles (Source, BatchProcessor, SinkExecutor) for testing the runner's logic without a broker.

They implement the Protocols, record what was asked of them, and fail or block on demand. Delivery
guarantees are proven against the real broker and databases in tests/integration; these pin down the
runner's ordering and holding rules, which a real broker makes hard to stage exactly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future

from fakeclock import FakeClock

from consumer.decode.decoder import DecodedBatch
from consumer.errors import WriteCancelledError
from consumer.records import Batch, BatchResult, CommitOutcome, RawRecord, TopicCounts, TopicPartition
from consumer.roles import RebalanceListener
from consumer.service.pipeline import Collapsed, Decoded

Served = Callable[[RebalanceListener], None]

_IDLE_WAIT_S = 0.005  # an empty poll waits this long, as a real one waits for its timeout, so loops do not spin


class FakeSource:
    """Serves records fed per partition, round-robin, skipping paused and unassigned partitions; assigns them
    all at the first poll; every commit succeeds and is recorded. With a FakeClock an empty poll lets its
    timeout pass on that clock instead of waiting. `revoke`, `lose` and `serve_in` stage rebalance callbacks
    (or anything else) inside the next poll, commit or close, where librdkafka serves them."""

    def __init__(self, partitions: Collection[TopicPartition], clock: FakeClock | None = None) -> None:
        self._queues: dict[TopicPartition, deque[RawRecord]] = {tp: deque() for tp in partitions}
        self._listener: RebalanceListener | None = None
        self._assigned = False
        self._clock = clock
        self._served: dict[str, deque[Served]] = {"poll": deque(), "commit": deque(), "close": deque()}
        self.assignment: set[TopicPartition] = set()
        self.calls: list[str] = []  # poll, commit, close and the callbacks served inside them, in order
        self._lock = threading.Lock()
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []  # answered as committed, in order
        self.sync_commits = 0
        self.silent = False  # send_commit gets no answer (a broker away) while set
        self.unanswered: list[dict[TopicPartition, int]] = []
        self._answers: list[CommitOutcome] = []
        self.close_timeout_s: float | None = None
        self.polls = 0
        self.pause_calls = 0
        self.timeouts: list[float] = []
        self.resume_calls = 0
        self.handed_out = 0
        self.closed = False
        self._fed: dict[TopicPartition, int] = {}
        self.high_watermarks: dict[TopicPartition, int] = {}

    def feed(self, partition: TopicPartition, count: int, timestamp_ms: int = 0) -> None:
        """Append `count` records to `partition`, offsets following the ones fed before."""
        with self._lock:
            start = self._fed.get(partition, 0)
            self._queues[partition].extend(
                RawRecord(partition[0], partition[1], start + i, timestamp_ms, None, b"v") for i in range(count)
            )
            self._fed[partition] = start + count

    def serve_in(self, call: str, event: Served) -> None:
        """Run `event` with the listener inside the next `call`: "poll", "commit" or "close"."""
        self._served[call].append(event)

    def revoke(self, partitions: list[TopicPartition], inside: str = "poll") -> None:
        def revoked(listener: RebalanceListener) -> None:
            self.calls.append("on_revoked")
            listener.on_revoked(partitions)
            self.assignment -= set(partitions)
            self.calls.append("on_revoked returned")

        self.serve_in(inside, revoked)

    def lose(self, partitions: list[TopicPartition], inside: str = "poll") -> None:
        def lost(listener: RebalanceListener) -> None:
            self.assignment -= set(partitions)
            listener.on_lost(partitions)

        self.serve_in(inside, lost)

    def _serve(self, call: str) -> None:
        assert self._listener is not None
        self.calls.append(call)
        while self._served[call]:
            self._served[call].popleft()(self._listener)

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        assert self._listener is not None
        self.polls += 1
        self.timeouts.append(timeout_s)
        if not self._assigned:
            self._assigned = True
            self.assignment = set(self._queues)
            self._listener.on_assigned(list(self._queues))
        self._serve("poll")
        out: list[RawRecord] = []
        with self._lock:
            live = [q for tp, q in self._queues.items() if tp in self.assignment and tp not in self.paused and q]
            while live and len(out) < max(1, max_records):
                for queue in list(live):
                    if not queue or len(out) >= max(1, max_records):
                        live.remove(queue)
                        continue
                    out.append(queue.popleft())
        self.handed_out += len(out)
        if not out and self._clock is not None:
            self._clock.advance(timeout_s)
        elif not out:
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
        self._serve("commit")
        self.commits.append(dict(offsets))
        self.sync_commits += 1
        return CommitOutcome(committed=dict(offsets))

    def send_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Answered at once (as if served by the next poll), unless `silent`: then held in `unanswered`
        until `answer_late()`, like a commit waiting for a coordinator that is away."""
        if not offsets:
            return
        self._serve("commit")  # "commit" staging serves inside either kind of commit
        if self.silent:
            self.unanswered.append(dict(offsets))
            return
        self.commits.append(dict(offsets))
        self._answers.append(CommitOutcome(committed=dict(offsets)))

    def answer_late(self) -> None:
        """The commits held while `silent` get their (successful) answers, in order, at the next take."""
        for offsets in self.unanswered:
            self.commits.append(offsets)
            self._answers.append(CommitOutcome(committed=offsets))
        self.unanswered.clear()

    def commit_answers(self) -> list[CommitOutcome]:
        answers, self._answers = self._answers, []
        return answers

    def high_watermark(self, partition: TopicPartition) -> int | None:
        return self.high_watermarks.get(partition)  # set by a test of lag; librdkafka's cache otherwise

    def group_committed(self, partition: TopicPartition) -> int | None:
        return None

    def close(self, timeout_s: float) -> None:
        self._serve("close")
        self.close_timeout_s = timeout_s
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


class StepExecutor:
    """The sink executor stepped by the test: a submitted write runs only when the test calls `finish()`.
    Waiting on one that is not finished lets the wait's timeout pass on the fake clock, as a write that takes
    its time would; with `finish_when_waited` the wait finishes it instead. `during_wait` runs once inside
    the next wait, to stage what happens while the runner waits on the sink."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._writes: deque[tuple[Callable[[], BatchResult], Future[BatchResult]]] = deque()
        self.finish_when_waited = False
        self.during_wait: deque[Callable[[], None]] = deque()
        self.submitted = 0
        self.shut = False
        self.cancels = 0

    @property
    def running(self) -> int:
        return len(self._writes)

    def submit(self, write: Callable[[], BatchResult]) -> Future[BatchResult]:
        assert not self._writes, "the runner submits a write only after collecting the one before"
        future: Future[BatchResult] = Future()
        self._writes.append((write, future))
        self.submitted += 1
        return future

    def finish(self) -> None:
        write, future = self._writes.popleft()
        try:
            future.set_result(write())
        except Exception as exc:  # noqa: BLE001 - handed to the runner through the future, as a worker does
            future.set_exception(exc)

    def wait(self, future: Future[BatchResult], timeout_s: float) -> None:
        if self.during_wait:
            self.during_wait.popleft()()
        if not future.done() and self.finish_when_waited and self._writes:
            self.finish()
        if not future.done():
            self._clock.advance(timeout_s)

    def cancel_running(self) -> None:
        """As the sink's cancel does: the write running now ends with WriteCancelledError."""
        self.cancels += 1
        if self._writes:
            _write, future = self._writes.popleft()
            future.set_exception(WriteCancelledError("write cancelled by the stop"))

    def shutdown(self) -> None:
        self.shut = True
