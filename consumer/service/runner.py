"""Runner: the poll loop, a state machine stepped one `turn()` at a time.

    RUNNING --the guard trips--> HELD
    RUNNING --stop--> STOPPING --> STOPPED
    HELD    --stop--> STOPPED

RUNNING fills batches, hands them to the pipeline on the sink executor and commits what came back. HELD is
the dead-letter guard's: everything paused, polled only to stay in the group, nothing written or committed
until a restart. STOPPING polls no more; it finishes and commits what is in hand within the shutdown
timeout. STOPPED is closed: a rebalance callback that close() serves finds nothing to do. The timeout
starts when the stop is first seen, and a revoke callback served after that (in the last poll, inside
a commit) finishes within what is left of it, so the stop never takes longer than SHUTDOWN_TIMEOUT_MS.

The loop never waits on the database: while a batch is in the sink it keeps polling (so the group
membership and max.poll.interval.ms survive a slow or absent database), and once a closed batch is
waiting behind the one in flight it pauses every assigned partition until there is room again.
At most one batch is in flight and one waits, so memory stays bounded and offsets go out in order.
Offsets go out asynchronously: the broker's answer comes back inside a later poll, so the loop keeps
polling and beating through a broker outage. One commit is out at a time; one not answered within
_COMMIT_ANSWER_S (at most the shutdown timeout) counts as refused: its offsets stay pending and go out
again (if the partition moved meanwhile its next owner replays those records, harmlessly). A revoke
callback, which must not poll, commits synchronously before it returns; a stop polls (everything
paused) for the answers until its deadline, and leaves the group within a short grace after it.
Transient failures retry the same batch after a backoff behind the circuit breaker of the dependency
that failed (sink or schema registry); they never dead-letter. Permanent errors end the run without
committing. What happens is reported to a RunnerObserver, per turn or per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial

from consumer.clock import Clock
from consumer.errors import (
    BrokerUnavailableError,
    GuardTrippedError,
    PermanentError,
    RegistryUnavailableError,
    TransientError,
)
from consumer.observability.lag import oldest_timestamp_ms
from consumer.observability.metrics import Dependency
from consumer.records import Batch, BatchResult, CloseReason, CommitOutcome, TopicPartition
from consumer.roles import Source
from consumer.service.adaptive import AdaptiveBatchSize
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.executor import SinkExecutor
from consumer.service.in_hand import InFlight, InHand
from consumer.service.observer import RunnerObserver
from consumer.service.offsets import OffsetTracker
from consumer.service.pipeline import BatchProcessor
from consumer.service.ratelimit import TokenBucket
from consumer.service.retry import Backoff

_IDLE_POLL_S = 0.2  # longest poll while nothing is due: bounds how late a stop or a retry is noticed
_IN_FLIGHT_POLL_S = 0.02  # longest poll while a batch is in the sink: bounds how late its commit goes out
# Pausing throws away a partition's prefetched records (librdkafka purges its fetch queue; confluent-kafka
# -dotnet #1621), and the refetch after resume stalls the pipeline. So while a closed batch waits for the
# one in flight, the loop first just waits for it, without polling, for up to this long; only a longer
# wait (a slow or absent database) pauses the partitions and polls to keep the group membership. A
# rebalance callback waits at most this long, far below any max.poll.interval.ms.
_UNPAUSED_WAIT_S = 1.0
# A stop that ran out of time cancels the write in the database and waits this long more for it to roll
# back; one the cancel cannot reach (a peer gone silent) is left to the sink's daemon thread.
_CANCELLED_WRITE_GRACE_S = 2.0
# An asynchronous commit not answered in this long (or the shutdown timeout, if shorter) counts as refused
# and is sent again. librdkafka holds a commit while it waits for the group coordinator (up to the session
# timeout, or socket.timeout.ms on a blackholed connection); a few seconds keeps a refusal visible early.
_COMMIT_ANSWER_S = 5.0
# Leaving the group may wait this long past the stop deadline (it takes milliseconds with a broker).
_CLOSE_GRACE_S = 2.0


class Phase(Enum):
    RUNNING = "running"
    HELD = "held"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class _SentCommit:
    """An asynchronous commit waiting for the broker's answer, and the batches whose offsets it carries."""

    offsets: dict[TopicPartition, int]
    sent_at: float  # monotonic
    results: list[BatchResult] = field(default_factory=list)


class Runner:
    def __init__(
        self,
        source: Source,
        batcher: Batcher,
        pipeline: BatchProcessor,
        offsets: OffsetTracker,
        breakers: Mapping[Dependency, CircuitBreaker],
        backoff: Backoff,
        executor: SinkExecutor,
        observer: RunnerObserver,
        clock: Clock,
        shutdown_timeout_s: float,
        stop: threading.Event,
        rate_limit: TokenBucket | None = None,
        adaptive: AdaptiveBatchSize | None = None,
    ) -> None:
        self._source = source
        self._batcher = batcher
        self._pipeline = pipeline
        self._offsets = offsets
        self._breakers = breakers
        self._backoff = backoff
        self._executor = executor
        self._observer = observer
        self._clock = clock
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop = stop
        self._rate_limit = rate_limit
        self._adaptive = adaptive
        self._phase = Phase.RUNNING
        self._hand = InHand()
        self._retry_at = 0.0  # monotonic; a failed batch waits for it (the backoff)
        self._paused: set[TopicPartition] = set()
        self._stop_deadline: float | None = None  # monotonic; set when the stop is first seen
        self._commit_answer_s = min(_COMMIT_ANSWER_S, shutdown_timeout_s)
        self._commit_sent: _SentCommit | None = None
        self._unreported: list[BatchResult] = []  # went through; reported once a commit carrying them is answered
        self._given_up = 0  # commits counted as refused whose late answers are still due (answered in order)
        self._revoking = False  # inside a revoke callback: commits are synchronous
        self._view = _LagView(source, offsets, batcher, self._hand, self._paused)
        self._observer.breakers_changed(breakers)

    @property
    def phase(self) -> Phase:
        return self._phase

    def run(self) -> int:
        """Consume until the stop event is set; return the exit code (0 clean, 1 batch left uncommitted)."""
        self.start()
        try:
            while not self._stop.is_set():
                self.turn()
            return self.shut_down()
        finally:
            self._executor.shutdown()

    def start(self) -> None:
        self._source.subscribe(self)

    def turn(self) -> None:
        """One step: wait briefly on the sink, or poll, batch what came and move the batches on."""
        if self._waiting_briefly_for_sink():
            return
        self._hold_or_release()  # a batch still queued behind a long write: pause before polling for more
        records = self._source.poll(self._batcher.room(), self._poll_timeout())
        self._take_commit_answers()
        held = self._phase is Phase.HELD  # held, it polls only to stay in the group; nothing is kept
        if not held:
            self._hand.extend(self._batcher.add(records))
            self._hand.add(self._batcher.close_if_due())
        # after the records are in hand: the fetch that brought them raised the high watermark, so a lag
        # refresh before would count them without their age (lag seconds 0 with records lagging)
        self._observer.polled(self._view)
        if not held:
            self._advance()
        self._hold_or_release()

    def shut_down(self) -> int:
        """Finish and commit what is in hand within the shutdown timeout, then close the source: 0 when
        nothing was left uncommitted or the guard held, 1 when the timeout ran out first (a write still
        in the database is then cancelled, and never collected: uncommitted, it is the next owner's)."""
        self._see_stop()
        self._observer.stop_requested()
        if self._phase is Phase.RUNNING:
            self._finish_for_stop()
        held = self._phase is Phase.HELD
        uncommitted = not held and bool(self._hand or self._offsets.pending())
        self._phase = Phase.STOPPED
        if uncommitted:
            self._cancel_stuck_write()
            self._observer.stop_timed_out()
        self._source.close(max(0.0, self._deadline() - self._clock.monotonic()) + _CLOSE_GRACE_S)
        if not uncommitted:
            self._observer.stopped(held)
        return 1 if uncommitted else 0

    # --- moving batches on -------------------------------------------------------------------------
    def _waiting_briefly_for_sink(self) -> bool:
        """Wait on the batch in flight instead of polling when a closed batch is queued behind it and it
        has not run long (see _UNPAUSED_WAIT_S); True when this turn was spent so."""
        in_flight = self._hand.in_flight
        if self._unpaused_wait_left() <= 0 or in_flight is None:
            return False
        self._hand.decode_next(self._pipeline.decode)
        self._executor.wait(in_flight.future, max(0.0, min(self._unpaused_wait_left(), _IDLE_POLL_S)))
        self._observer.waited_for_sink()
        self._advance()
        return True

    def _unpaused_wait_left(self) -> float:
        """How much longer a queued batch may wait for the one in flight without pausing; 0 if it may not."""
        in_flight = self._hand.in_flight
        if not self._hand.waiting or in_flight is None or self._paused or self._phase is Phase.HELD:
            return 0.0
        return max(0.0, in_flight.started_at + _UNPAUSED_WAIT_S - self._clock.monotonic())

    def _poll_timeout(self) -> float:
        """Until the open batch is due, at most _IDLE_POLL_S; shorter while a batch is in the sink, so its
        commit is not held back by a poll waiting for records (consume() returns early only when full)."""
        until_due = self._batcher.seconds_until_due()
        longest = _IN_FLIGHT_POLL_S if self._hand.in_flight is not None else _IDLE_POLL_S
        return longest if until_due is None else min(until_due, longest)

    def _advance(self) -> None:
        """Collect a finished batch, then start the next one if the breaker and the backoff allow."""
        finished = self._hand.finished()
        if finished is not None:
            self._collect(finished)
        if self._hand.in_flight is None and self._hand.waiting and self._may_try():
            self._start_next()
        elif self._offsets.pending() and self._commit_sent is None and self._phase is not Phase.HELD:
            self._commit()  # an earlier commit was refused or not answered; send the offsets again

    def _start_next(self) -> None:
        batch, decoded = self._hand.next()
        if self._rate_limit is not None:
            self._rate_limit.take(len(batch))
        future = self._executor.submit(partial(self._pipeline.process, batch, decoded))
        self._hand.in_flight = InFlight(batch, future, self._clock.monotonic())

    def _may_try(self) -> bool:
        return self._seconds_until_may_try() <= 0

    def _seconds_until_may_try(self) -> float:
        """Until the backoff has passed, every breaker lets a probe through and the rate limit has room."""
        waits = [self._retry_at - self._clock.monotonic()]
        waits += [breaker.seconds_until_probe() for breaker in self._breakers.values()]
        if self._rate_limit is not None:
            waits.append(self._rate_limit.seconds_until_ready())
        return max(waits)

    def _collect(self, finished: InFlight) -> None:
        try:
            self._went_through(finished.future.result())
        except TransientError as exc:
            self._retry_later(finished.batch, exc)
        except GuardTrippedError as exc:
            self._hold_for_guard(finished.batch, exc)
        except PermanentError as exc:  # from the write or the commit (Source.commit raises only FatalError)
            self._observer.batch_failed(exc)
            raise  # cli logs it and exits 1; nothing of this batch is committed

    def _went_through(self, result: BatchResult) -> None:
        for breaker in self._breakers.values():  # every dependency the batch needed answered
            breaker.record_success()
        self._observer.breakers_changed(self._breakers)
        self._backoff.reset()
        if self._adaptive is not None:
            limit = self._adaptive.observe(len(result.batch), result.sink_seconds)
            self._batcher.set_max_records(limit)
            self._observer.batch_size_adapted(limit)
        self._offsets.handled(result.next_offsets)
        self._observer.batch_through(result)
        self._commit(result)

    def _retry_later(self, batch: Batch, exc: TransientError) -> None:
        """Keep the batch in hand (first in line) and try again after a backoff; never dead-letter it."""
        self._hand.put_back(batch)
        delay = self._backoff.next_delay()
        self._retry_at = self._clock.monotonic() + delay
        failed = failed_dependency(exc)
        self._breakers[failed].record_failure()
        self._observer.breakers_changed(self._breakers)
        self._observer.retry_scheduled(batch, exc, failed, delay, self._backoff.failures)

    def _hold_for_guard(self, batch: Batch, exc: GuardTrippedError) -> None:
        """Stop dead-lettering and committing for good: drop what is in hand uncommitted, pause everything
        and keep polling so the group keeps us (and our partitions) until an operator restarts us."""
        self._phase = Phase.HELD
        # Lag in seconds must keep describing this incident: the records let go stay the oldest uncommitted
        self._view.let_go(batch.records[0].timestamp_ms if batch.records else -1)
        self._hand.drop_waiting()
        dropped = len(batch) + len(self._batcher.flush(CloseReason.SHUTDOWN) or ())
        # The batches that went through before it are committed, as they would have been without the trip:
        # once the guard shows tripped, the group's offsets stand where the service stopped.
        if not self._revoking:  # inside a revoke callback commits are synchronous, and polling is not allowed
            self._await_commit_answers(self._clock.monotonic() + self._commit_answer_s)
        self._observer.guard_tripped(batch, exc, dropped)
        self._hold_or_release()

    def _commit(self, result: BatchResult | None = None) -> None:
        """Send the pending offsets, unless a commit is out already (they go with the next one); inside a
        revoke callback commit them synchronously instead."""
        if result is not None:
            self._unreported.append(result)
        if self._revoking:
            self._commit_now()
            return
        if self._commit_sent is None and self._offsets.pending():
            self._commit_sent = _SentCommit(self._offsets.pending(), self._clock.monotonic(), self._unreported)
            self._unreported = []
            self._source.send_commit(self._commit_sent.offsets)
            self._take_commit_answers()  # a refusal may be known at once
        elif self._commit_sent is None:  # nothing pending (all lost or committed already): nothing to wait for
            self._report_batches(self._unreported, 0.0)
            self._unreported = []

    def _commit_now(self) -> None:
        started = self._clock.monotonic()
        outcome = self._source.commit(self._offsets.pending())
        results, self._unreported = self._unreported, []
        self._answered(outcome, results, self._clock.monotonic() - started)

    def _take_commit_answers(self) -> None:
        """Apply the answers the last poll served; give up on a commit out longer than _COMMIT_ANSWER_S."""
        for outcome in self._source.commit_answers():
            if self._given_up:  # the late answer to a commit counted as refused: what it committed counts
                self._given_up -= 1
                self._answered(replace(outcome, refused={}), [], 0.0)
                continue
            sent, self._commit_sent = self._commit_sent, None
            if sent is None:
                self._answered(outcome, [], 0.0)
            else:
                self._answered(outcome, sent.results, self._clock.monotonic() - sent.sent_at)
        sent = self._commit_sent
        if sent is not None and self._clock.monotonic() - sent.sent_at >= self._commit_answer_s:
            self._commit_sent = None
            self._given_up += 1
            silent = f"no answer within {self._commit_answer_s:g} s"
            self._answered(CommitOutcome(refused=dict.fromkeys(sent.offsets, silent)), sent.results,
                           self._clock.monotonic() - sent.sent_at)

    def _answered(self, outcome: CommitOutcome, results: list[BatchResult], commit_seconds: float) -> None:
        assigned = self._offsets.assigned
        committed = {tp: offset for tp, offset in outcome.committed.items() if tp in assigned}
        self._offsets.committed(committed)
        if outcome.refused:
            self._observer.commit_refused(outcome)
        self._report_batches(results, commit_seconds)
        if committed:
            self._observer.offsets_committed(committed, self._view)

    def _report_batches(self, results: list[BatchResult], commit_seconds: float) -> None:
        for result in results:
            self._observer.batch_committed(result, commit_seconds)

    def _hold_or_release(self) -> None:
        """Pause everything while a closed batch waits (sink busy, retrying or breaker open) or the guard
        holds; resume after. While a failed batch is retried (backoff, breaker open or probing) they stay
        paused even with the probe in flight: resuming would only refetch what the next pause discards."""
        queued = bool(self._hand.waiting) and self._unpaused_wait_left() <= 0
        hold = self._phase is Phase.HELD or self._backoff.failures > 0 or queued
        assigned = self._offsets.assigned
        if hold and assigned - self._paused:
            newly = assigned - self._paused
            self._source.pause(newly)
            self._paused |= newly
        elif not hold and self._paused:
            self._source.resume(self._paused & assigned)
            self._paused.clear()
        else:
            return
        self._observer.partitions_paused(self._paused)

    # --- rebalance callbacks (polling thread, inside the source's calls) ------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._offsets.assign(partitions)
        self._observer.partitions_assigned(partitions, self._offsets.assigned)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Write and commit everything in hand for the revoked partitions before returning. Held, nothing
        more is committed: the next owner replays them from their last commit; stopped, nothing is left."""
        self._observer.partitions_revoked(partitions)
        self._hand.add(self._batcher.take(partitions, CloseReason.REVOKE))
        if self._phase in (Phase.RUNNING, Phase.STOPPING):
            self._revoking = True
            try:
                finished = self._finish_in_hand()
                if self._offsets.pending():  # also offsets sent asynchronously and not answered yet
                    self._commit_now()
            finally:
                self._revoking = False
            if not finished:
                self._observer.revoke_left_uncommitted()
        self._release(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop what is in hand for lost partitions, uncommitted: their new owner replays them."""
        dropped = self._batcher.drop(partitions)
        self._observer.partitions_lost(partitions, dropped)
        self._release(partitions)

    def _release(self, partitions: list[TopicPartition]) -> None:
        self._offsets.forget(partitions)
        if self._paused.intersection(partitions):
            self._paused.difference_update(partitions)
            self._observer.partitions_paused(self._paused)
        self._observer.partitions_released(partitions, self._offsets.assigned)

    # --- stopping ----------------------------------------------------------------------------------
    def _finish_for_stop(self) -> None:
        self._phase = Phase.STOPPING
        self._hand.add(self._batcher.flush(CloseReason.SHUTDOWN))
        self._observer.finishing(len(self._hand))
        if self._finish_in_hand():
            self._await_commit_answers(self._deadline())

    def _await_commit_answers(self, deadline: float) -> None:
        """Poll, everything paused, for the answers to the commits sent, sending the pending offsets again
        after a refusal, until nothing is pending or `deadline` passes (stopping or held: a rebalance
        served meanwhile may change the phase, and ends the wait). A record a poll still hands out is
        dropped: never committed, it is the next owner's."""
        unpaused = self._offsets.assigned - self._paused
        if unpaused:
            self._source.pause(unpaused)
            self._paused |= unpaused
            self._observer.partitions_paused(self._paused)
        phase = self._phase
        while self._offsets.pending() and self._phase is phase:
            left = deadline - self._clock.monotonic()
            if left <= 0:
                break
            if self._commit_sent is None:
                self._commit()
            self._source.poll(1, min(left, _IN_FLIGHT_POLL_S))
            self._take_commit_answers()

    def _finish_in_hand(self) -> bool:
        """Process and commit the in-flight and waiting batches, retrying transient failures, for up to
        the shutdown timeout (what is left of it once the stop was seen); True when nothing is left in
        hand. Runs on the polling thread without polling: used inside a revoke callback and at shutdown."""
        deadline = self._deadline()
        while self._hand:
            deadline = min(deadline, self._deadline())  # a stop seen meanwhile brings it forward
            left = deadline - self._clock.monotonic()
            if left <= 0:
                break
            in_flight = self._hand.in_flight
            if in_flight is not None and not in_flight.future.done():
                self._executor.wait(in_flight.future, min(left, _IDLE_POLL_S))
                continue
            self._advance()
            if self._hand.in_flight is None and self._hand.waiting and not self._may_try():
                until = min(self._seconds_until_may_try(), deadline - self._clock.monotonic())
                self._clock.sleep(max(0.0, until))
        return not self._hand

    def _cancel_stuck_write(self) -> None:
        """Cancel a write still in the database (a lock wait, a hung connection), so its transaction rolls
        back now rather than holding its locks, and the keys the next owner replays, until the database
        notices we are gone; then wait for it only briefly (_CANCELLED_WRITE_GRACE_S)."""
        in_flight = self._hand.in_flight
        if in_flight is None or in_flight.future.done():
            return
        self._executor.cancel_running()
        self._executor.wait(in_flight.future, _CANCELLED_WRITE_GRACE_S)

    def _deadline(self) -> float:
        """The shutdown timeout from now, or once the stop was seen, from then."""
        if self._stop.is_set():
            self._see_stop()
        if self._stop_deadline is not None:
            return self._stop_deadline
        return self._clock.monotonic() + self._shutdown_timeout_s

    def _see_stop(self) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = self._clock.monotonic() + self._shutdown_timeout_s


def failed_dependency(error: TransientError) -> Dependency:
    """Whose breaker a transient failure of a batch attempt feeds. In a batch attempt only the dead-letter
    publish talks to the broker (commits happen on the polling thread), so a broker failure there is the
    broker's: it must not open the sink's breaker, nor count as a sink retry."""
    if isinstance(error, RegistryUnavailableError):
        return Dependency.SCHEMA_REGISTRY
    if isinstance(error, BrokerUnavailableError):
        return Dependency.BROKER
    return Dependency.SINK


class _LagView:
    """The runner's state as a lag refresh reads it (consumer.observability.lag.LagInputs); it holds the
    runner's own objects, so it reads them as they are when a refresh is due."""

    def __init__(
        self, source: Source, offsets: OffsetTracker, batcher: Batcher, hand: InHand, paused: set[TopicPartition]
    ) -> None:
        self._offsets, self._batcher, self._hand, self._paused = offsets, batcher, hand, paused
        self._let_go: list[int] = []  # first-record timestamps of batches dropped uncommitted (the guard's)
        self.committed_offset = offsets.committed_offset
        self.group_committed = source.group_committed
        self.high_watermark = source.high_watermark

    def assigned(self) -> frozenset[TopicPartition]:
        return self._offsets.assigned

    def paused(self) -> set[TopicPartition]:
        return self._paused

    def let_go(self, first_timestamp_ms: int) -> None:
        """The guard refused a batch and everything behind it: nothing is committed from here on, so the
        refused batch's first record stays the oldest uncommitted one, whatever is in hand later."""
        self._let_go = [*self._hand.first_timestamps(), first_timestamp_ms]
        opened = self._batcher.oldest_timestamp_ms()
        if opened is not None:
            self._let_go.append(opened)

    def oldest_in_hand_ms(self) -> int | None:
        """The oldest first-record timestamp of the batches in hand, the open one and those let go
        uncommitted (batch-level)."""
        opened = self._batcher.oldest_timestamp_ms()
        in_hand = [*self._hand.first_timestamps(), *self._let_go]
        return oldest_timestamp_ms(in_hand if opened is None else [*in_hand, opened])
