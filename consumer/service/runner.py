"""Runner: the poll loop. Fill a batch, hand it to the pipeline on a worker thread, commit what came back.

The loop never waits on the database: while a batch is in the sink it keeps polling (so the group
membership and max.poll.interval.ms survive a slow or absent database), and once a closed batch is
waiting behind the one in flight it pauses every assigned partition until there is room again.
At most one batch is in flight and one waits, so memory stays bounded and offsets go out in order.
Transient failures retry the same batch after a backoff behind the circuit breaker of the dependency
that failed (sink or schema registry); they never dead-letter. A tripped dead-letter guard holds
everything (paused, nothing written or committed) until a restart. Permanent errors end the run without
committing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from consumer.clock import Clock
from consumer.errors import GuardTrippedError, PermanentError, RegistryUnavailableError, TransientError
from consumer.observability.lag import oldest_timestamp_ms
from consumer.observability.metrics import Dependency
from consumer.records import Batch, BatchResult, CloseReason, TopicPartition
from consumer.roles import Source
from consumer.service.adaptive import AdaptiveBatchSize
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.executor import SinkExecutor
from consumer.service.observer import RunnerObserver
from consumer.service.offsets import OffsetTracker
from consumer.service.pipeline import BatchProcessor, Decoded
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


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    future: Future[BatchResult]
    started_at: float


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
        self._rate_limit = rate_limit
        self._adaptive = adaptive
        self._backoff = backoff
        self._observer = observer
        self._clock = clock
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop = stop
        self._executor = executor
        self._waiting: deque[Batch] = deque()
        self._decoded_ahead: Decoded | None = None  # the first waiting batch, decoded while the sink worked
        self._in_flight: _InFlight | None = None
        self._retry_at = 0.0
        self._paused: set[TopicPartition] = set()
        self._abandoned = False  # set when a stop gives up on the batch in hand: callbacks must not retry it
        self._guard_held = False  # the dead-letter guard tripped: hold until restarted
        self._view = _LagView(self)
        self._observer.breakers_changed(self._breakers)

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Consume until the stop event is set; return the exit code (0 clean, 1 batch left uncommitted)."""
        self._source.subscribe(self)
        try:
            while not self._stop.is_set():
                self._turn()
            return self._shut_down()
        finally:
            self._executor.shutdown()

    def _turn(self) -> None:
        if self._waiting_briefly_for_sink():
            return
        self._hold_or_release()  # a batch still queued behind a long write: pause before polling for more
        records = self._source.poll(self._batcher.room(), self._poll_timeout())
        self._observer.polled(self._view)
        if self._guard_held:  # polled only to stay in the group; what arrives is left uncommitted
            self._hold_or_release()
            return
        self._waiting.extend(self._batcher.add(records))
        due = self._batcher.close_if_due()
        if due is not None:
            self._waiting.append(due)
        self._advance()
        self._hold_or_release()

    def _waiting_briefly_for_sink(self) -> bool:
        """Wait on the batch in flight instead of polling when a closed batch is queued behind it and it
        has not run long (see _UNPAUSED_WAIT_S); True when this turn was spent so."""
        left = self._unpaused_wait_left()
        if left <= 0 or self._in_flight is None:
            return False
        self._decode_ahead()
        self._executor.wait(self._in_flight.future, max(0.0, min(self._unpaused_wait_left(), _IDLE_POLL_S)))
        self._observer.waited_for_sink()
        self._advance()
        return True

    def _decode_ahead(self) -> None:
        """Decode the next batch here, on the polling thread, while the one before is in the database: the
        database's waits release the GIL, so the two overlap. A registry outage leaves it to the worker."""
        upcoming = self._waiting[0]
        if self._decoded_ahead is not None and self._decoded_ahead.batch is upcoming:
            return
        try:
            self._decoded_ahead = self._pipeline.decode(upcoming)
        except TransientError:
            self._decoded_ahead = None

    def _unpaused_wait_left(self) -> float:
        """How much longer a queued batch may wait for the one in flight without pausing; 0 if it may not."""
        in_flight = self._in_flight
        if not self._waiting or in_flight is None or self._paused or self._guard_held:
            return 0.0
        return max(0.0, in_flight.started_at + _UNPAUSED_WAIT_S - self._clock.monotonic())

    def _poll_timeout(self) -> float:
        """Until the open batch is due, at most _IDLE_POLL_S; shorter while a batch is in the sink, so its
        commit is not held back by a poll waiting for records (consume() returns early only when full)."""
        until_due = self._batcher.seconds_until_due()
        longest = _IN_FLIGHT_POLL_S if self._in_flight is not None else _IDLE_POLL_S
        return longest if until_due is None else min(until_due, longest)

    def _advance(self) -> None:
        """Collect a finished batch, then start the next one if the breaker and the backoff allow."""
        if self._in_flight is not None and self._in_flight.future.done():
            in_flight, self._in_flight = self._in_flight, None
            self._collect(in_flight)
        if self._in_flight is None and self._waiting and self._may_try():
            batch = self._waiting.popleft()
            if self._rate_limit is not None:
                self._rate_limit.take(len(batch))
            ahead, self._decoded_ahead = self._decoded_ahead, None
            if ahead is not None and ahead.batch is not batch:
                ahead = None  # decoded for another batch (one put back in front for a retry)
            future = self._executor.submit(partial(self._pipeline.process, batch, ahead))
            self._in_flight = _InFlight(batch, future, self._clock.monotonic())
        elif self._offsets.pending() and self._in_flight is None and not self._guard_held:
            self._commit()  # an earlier commit was refused; try again while idle

    def _may_try(self) -> bool:
        return self._seconds_until_may_try() <= 0

    def _seconds_until_may_try(self) -> float:
        """Until the backoff has passed, every breaker lets a probe through and the rate limit has room."""
        waits = [self._retry_at - self._clock.monotonic()]
        waits += [breaker.seconds_until_probe() for breaker in self._breakers.values()]
        if self._rate_limit is not None:
            waits.append(self._rate_limit.seconds_until_ready())
        return max(waits)

    def _collect(self, in_flight: _InFlight) -> None:
        try:
            result = in_flight.future.result()
        except TransientError as exc:
            self._retry_later(in_flight.batch, exc)
            return
        except GuardTrippedError as exc:
            self._hold_for_guard(in_flight.batch, exc)
            return
        except PermanentError as exc:
            self._observer.batch_failed(exc)
            raise  # cli logs it and exits 1; nothing of this batch is committed
        for breaker in self._breakers.values():  # a batch went through: every dependency it needed answered
            breaker.record_success()
        self._observer.breakers_changed(self._breakers)
        self._backoff.reset()
        if self._adaptive is not None:
            limit = self._adaptive.observe(len(result.batch), result.sink_seconds)
            self._batcher.set_max_records(limit)
            self._observer.batch_size_adapted(limit)
        self._offsets.handled(result.next_offsets)
        try:
            self._commit(result)
        except PermanentError as exc:
            self._observer.batch_failed(exc)
            raise

    def _retry_later(self, batch: Batch, exc: TransientError) -> None:
        """Keep the batch in hand (first in line) and try again after a backoff; never dead-letter it."""
        self._waiting.appendleft(batch)
        delay = self._backoff.next_delay()
        self._retry_at = self._clock.monotonic() + delay
        failed = Dependency.SCHEMA_REGISTRY if isinstance(exc, RegistryUnavailableError) else Dependency.SINK
        self._breakers[failed].record_failure()
        self._observer.breakers_changed(self._breakers)
        self._observer.retry_scheduled(batch, exc, delay, self._backoff.failures)

    def _hold_for_guard(self, batch: Batch, exc: GuardTrippedError) -> None:
        """Stop dead-lettering and committing for good: drop what is in hand uncommitted, pause everything
        and keep polling so the group keeps us (and our partitions) until an operator restarts us."""
        self._guard_held = True
        self._waiting.clear()
        self._decoded_ahead = None
        dropped = len(batch) + len(self._batcher.flush(CloseReason.SHUTDOWN) or ())
        self._observer.guard_tripped(batch, exc, dropped)
        self._hold_or_release()

    def _commit(self, result: BatchResult | None = None) -> None:
        started = self._clock.monotonic()
        pending = self._offsets.pending()
        outcome = self._source.commit(pending)
        self._offsets.committed(outcome.committed)
        if outcome.refused:
            self._observer.commit_refused(outcome)
        if result is not None:
            self._observer.batch_committed(result, self._clock.monotonic() - started)
        if outcome.committed:
            self._observer.offsets_committed(outcome.committed, self._view)

    def oldest_in_hand_ms(self) -> int | None:
        """The oldest first-record timestamp of the batches in hand and the open one (batch-level)."""
        in_hand = [batch.records[0].timestamp_ms for batch in self._waiting if batch.records]
        if self._in_flight is not None and self._in_flight.batch.records:
            in_hand.append(self._in_flight.batch.records[0].timestamp_ms)
        opened = self._batcher.oldest_timestamp_ms()
        if opened is not None:
            in_hand.append(opened)
        return oldest_timestamp_ms(in_hand)

    # --- back-pressure -----------------------------------------------------------------------------
    def _hold_or_release(self) -> None:
        """Pause everything while a closed batch waits (sink busy, retrying or breaker open); resume after."""
        # While a failed batch is being retried (backoff, breaker open or probing) the partitions stay paused
        # even with the probe in flight: resuming would only refetch records that the next pause discards.
        retrying = self._backoff.failures > 0
        hold = self._guard_held or retrying or (bool(self._waiting) and self._unpaused_wait_left() <= 0)
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

    # --- rebalance callbacks (polling thread, inside poll) -----------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._offsets.assign(partitions)
        self._observer.partitions_assigned(partitions, self._offsets.assigned)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Write and commit everything in hand for the revoked partitions before returning."""
        self._observer.partitions_revoked(partitions)
        revoked = self._batcher.take(partitions, CloseReason.REVOKE)
        if revoked is not None:
            self._waiting.append(revoked)
        if self._guard_held:
            pass  # nothing more is committed; the next owner replays these partitions from their last commit
        elif not self._abandoned and not self._finish_in_hand(self._clock.monotonic() + self._shutdown_timeout_s):
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
    def _finish_in_hand(self, deadline: float) -> bool:
        """Process and commit the in-flight and waiting batches, retrying transient failures until
        `deadline`; True when nothing is left in hand. Runs on the polling thread without polling:
        used inside a revoke callback and at shutdown."""
        while (self._in_flight is not None or self._waiting) and self._clock.monotonic() < deadline:
            remaining = deadline - self._clock.monotonic()
            if self._in_flight is not None and not self._in_flight.future.done():
                self._executor.wait(self._in_flight.future, min(remaining, _IDLE_POLL_S))
                continue
            self._advance()
            if self._in_flight is None and self._waiting and not self._may_try():
                self._clock.sleep(max(0.0, min(self._seconds_until_may_try(), deadline - self._clock.monotonic())))
        return self._in_flight is None and not self._waiting

    def _shut_down(self) -> int:
        self._observer.stop_requested()
        if self._guard_held:
            self._source.close()
            self._observer.stopped(held=True)
            return 0
        deadline = self._clock.monotonic() + self._shutdown_timeout_s
        last = self._batcher.flush(CloseReason.SHUTDOWN)
        if last is not None:
            self._waiting.append(last)
        self._observer.finishing(len(self._waiting) + bool(self._in_flight))
        finished = self._finish_in_hand(deadline)
        if self._guard_held:  # tripped by the batch in hand: nothing more is committed
            return self._shut_down()
        if finished and self._offsets.pending():
            self._commit()
        if not finished or self._offsets.pending():
            self._observer.stop_timed_out()
            self._abandoned = True
            self._source.close()
            return 1
        self._source.close()
        self._observer.stopped(held=False)
        return 0


class _LagView:
    """The runner's state as a lag refresh reads it (consumer.observability.lag.LagInputs)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self.committed_offset = runner._offsets.committed_offset
        self.group_committed = runner._source.group_committed
        self.high_watermark = runner._source.high_watermark
        self.oldest_in_hand_ms = runner.oldest_in_hand_ms

    def assigned(self) -> frozenset[TopicPartition]:
        return self._runner._offsets.assigned

    def paused(self) -> set[TopicPartition]:
        return self._runner._paused
