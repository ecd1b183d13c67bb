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

import logging
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from consumer.clock import Clock
from consumer.errors import GuardTrippedError, PermanentError, RegistryUnavailableError, TransientError
from consumer.observability.health import HealthState
from consumer.observability.lag import LagMonitor, oldest_timestamp_ms
from consumer.observability.metrics import (
    BatchOutcome,
    BatchStage,
    BreakerState,
    Dependency,
    Metrics,
    Outcome,
    RebalanceKind,
)
from consumer.observability.status import StatusBoard
from consumer.records import Batch, BatchResult, CloseReason, TopicPartition
from consumer.roles import Source
from consumer.service.adaptive import AdaptiveBatchSize
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.executor import SinkExecutor
from consumer.service.offsets import OffsetTracker
from consumer.service.pipeline import BatchProcessor, Decoded
from consumer.service.ratelimit import TokenBucket
from consumer.service.retry import Backoff

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.2  # longest poll while nothing is due: bounds how late a stop or a retry is noticed
_IN_FLIGHT_POLL_S = 0.02  # longest poll while a batch is in the sink: bounds how late its commit goes out
# Pausing throws away a partition's prefetched records (librdkafka purges its fetch queue; confluent-kafka
# -dotnet #1621), and the refetch after resume stalls the pipeline. So while a closed batch waits for the
# one in flight, the loop first just waits for it, without polling, for up to this long; only a longer
# wait (a slow or absent database) pauses the partitions and polls to keep the group membership. A
# rebalance callback waits at most this long, far below any max.poll.interval.ms.
_UNPAUSED_WAIT_S = 1.0
_LAG_REFRESH_S = 1.0  # lag gauges and /status refresh this often while idle (local reads, no broker trip)


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
        metrics: Metrics,
        health: HealthState,
        status: StatusBoard,
        clock: Clock,
        shutdown_timeout_s: float,
        stop: threading.Event,
        rate_limit: TokenBucket | None = None,
        adaptive: AdaptiveBatchSize | None = None,
        lag: LagMonitor | None = None,
    ) -> None:
        self._source = source
        self._batcher = batcher
        self._pipeline = pipeline
        self._offsets = offsets
        self._breakers = breakers
        self._rate_limit = rate_limit
        self._adaptive = adaptive
        self._lag = lag or LagMonitor(metrics, clock, _LAG_REFRESH_S)
        self._backoff = backoff
        self._metrics = metrics
        self._health = health
        self._status = status
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
        self._publish_breaker()

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
        self._health.beat()
        if self._lag.due():
            self._refresh_lag()
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
        self._health.beat()  # the loop is alive: it is waiting on the sink on purpose
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
        except PermanentError:
            self._metrics.batches_total.labels(BatchOutcome.FAILED.value).inc()
            raise  # cli logs it and exits 1; nothing of this batch is committed
        self._breaker_success()
        self._backoff.reset()
        if self._adaptive is not None:
            limit = self._adaptive.observe(len(result.batch), result.sink_seconds)
            self._batcher.set_max_records(limit)
            self._metrics.batch_max_records.set(limit)
        self._offsets.handled(result.next_offsets)
        try:
            self._commit(result)
        except PermanentError:
            self._metrics.batches_total.labels(BatchOutcome.FAILED.value).inc()
            raise

    def _retry_later(self, batch: Batch, exc: TransientError) -> None:
        """Keep the batch in hand (first in line) and try again after a backoff; never dead-letter it."""
        self._waiting.appendleft(batch)
        delay = self._backoff.next_delay()
        self._retry_at = self._clock.monotonic() + delay
        failed = Dependency.SCHEMA_REGISTRY if isinstance(exc, RegistryUnavailableError) else Dependency.SINK
        self._breakers[failed].record_failure()
        self._publish_breaker()
        self._metrics.batches_total.labels(BatchOutcome.RETRIED.value).inc()
        self._metrics.sink_retries_total.labels(type(exc).__name__).inc()
        self._status.error(exc)
        if self._backoff.failures == 1:  # one warning per incident, not one per retry
            log.warning("batch failed, retrying", extra={"batch_id": batch.batch_id, "error_class":
                        type(exc).__name__, "error": str(exc), "retry_in_s": round(delay, 3)})

    def _breaker_success(self) -> None:
        """A batch went through, so every dependency it needed answered."""
        for dependency, breaker in self._breakers.items():
            if breaker.state is not BreakerState.CLOSED:
                log.info("dependency recovered, circuit breaker closed", extra={"dependency": dependency.value})
            breaker.record_success()
        self._publish_breaker()
        self._health.sink_ok = True

    def _publish_breaker(self) -> None:
        any_open = False
        for dependency, breaker in self._breakers.items():
            state = breaker.state
            self._metrics.circuit_breaker_state.labels(dependency.value).set(int(state))
            if state is BreakerState.OPEN:
                any_open = True
                if not self._health.breaker_open:
                    log.warning("circuit breaker open", extra={
                        "dependency": dependency.value, "probe_in_s": round(breaker.seconds_until_probe(), 3)})
            self._status.breaker(dependency.value, state, breaker.changed_at)
        self._health.breaker_open = any_open

    def _hold_for_guard(self, batch: Batch, exc: GuardTrippedError) -> None:
        """Stop dead-lettering and committing for good: drop what is in hand uncommitted, pause everything
        and keep polling so the group keeps us (and our partitions) until an operator restarts us."""
        self._guard_held = True
        self._waiting.clear()
        self._decoded_ahead = None
        dropped = len(batch) + len(self._batcher.flush(CloseReason.SHUTDOWN) or ())
        self._metrics.batches_total.labels(BatchOutcome.FAILED.value).inc()
        self._metrics.dlq_guard_tripped.set(1)
        self._health.guard_tripped = True
        self._status.error(exc)
        self._hold_or_release()
        log.error("dead-letter guard tripped: holding, nothing more is written, dead-lettered or committed; "
                  "find the cause (schema, upstream deploy), then restart", extra={
                      "batch_id": batch.batch_id, "reason": str(exc), "dropped_uncommitted": dropped})

    def _commit(self, result: BatchResult | None = None) -> None:
        started = self._clock.monotonic()
        pending = self._offsets.pending()
        outcome = self._source.commit(pending)
        self._offsets.committed(outcome.committed)
        if outcome.refused:
            self._metrics.commit_failures_total.inc()
            log.warning("offset commit refused; records will be replayed harmlessly if the partition moved",
                        extra={"during_rebalance": outcome.during_rebalance, "errors": sorted(
                            set(outcome.refused.values()))})
        if result is not None:
            self._observe(result, self._clock.monotonic() - started)
        if outcome.committed:
            now = self._clock.wall()
            self._metrics.last_commit_timestamp_seconds.set(now)
            for (topic, partition), offset in outcome.committed.items():
                self._metrics.committed_offset.labels(topic, str(partition)).set(offset)
            self._status.committed(outcome.committed, now)
            self._refresh_lag()

    def _refresh_lag(self) -> None:
        """Lag per assigned partition from cached watermarks, aged by the oldest batch in hand (batch-level)."""
        in_hand = [batch.records[0].timestamp_ms for batch in self._waiting if batch.records]
        if self._in_flight is not None and self._in_flight.batch.records:
            in_hand.append(self._in_flight.batch.records[0].timestamp_ms)
        opened = self._batcher.oldest_timestamp_ms()
        if opened is not None:
            in_hand.append(opened)
        rows = self._lag.refresh(self._offsets.assigned, self._offsets.committed_offset,
                                 self._source.group_committed, self._source.high_watermark,
                                 oldest_timestamp_ms(in_hand))
        self._status.partitions(rows, self._paused)

    def _observe(self, result: BatchResult, commit_seconds: float) -> None:
        """Batch-level metric updates only: the hot path does no per-record metric work."""
        m, batch = self._metrics, result.batch
        for topic, counts in result.counts.items():
            for outcome, n in ((Outcome.SUNK, counts.sunk), (Outcome.DUPLICATE, counts.duplicate),
                               (Outcome.DLQ, counts.dlq), (Outcome.SKIPPED, counts.skipped)):
                if n:
                    m.records_total.labels(topic, outcome.value).inc(n)
        for (stage, error_class), n in result.dead_letter_kinds.items():
            m.dead_letters_total.labels(stage, error_class).inc(n)
        m.batches_total.labels(BatchOutcome.COMMITTED.value).inc()
        m.batch_records.observe(len(batch))
        m.batch_bytes.observe(batch.value_bytes)
        m.batches_closed_total.labels(batch.close_reason.value).inc()
        m.batch_duration_seconds.labels(BatchStage.DECODE.value).observe(result.decode_seconds)
        m.batch_duration_seconds.labels(BatchStage.SINK.value).observe(result.sink_seconds)
        m.batch_duration_seconds.labels(BatchStage.COMMIT.value).observe(commit_seconds)
        total_seconds = self._clock.monotonic() - batch.opened_at
        m.batch_duration_seconds.labels(BatchStage.TOTAL.value).observe(total_seconds)
        now_ms = self._clock.wall() * 1000
        for record in (batch.records[0], batch.records[-1]):  # the oldest and newest: latency's spread
            if record.timestamp_ms >= 0:
                m.end_to_end_latency_seconds.observe(max(0.0, (now_ms - record.timestamp_ms) / 1000))
        self._status.batch(result, commit_seconds, total_seconds)
        log.debug("batch committed", extra={"batch_id": batch.batch_id, "records": len(batch),
                                            "reason": batch.close_reason.value})

    # --- back-pressure -----------------------------------------------------------------------------
    def _hold_or_release(self) -> None:
        """Pause everything while a closed batch waits (sink busy, retrying or breaker open); resume after."""
        # While a failed batch is being retried (backoff, breaker open or probing) the partitions stay paused
        # even with the probe in flight: resuming would only refetch records that the next pause discards.
        retrying = self._backoff.failures > 0
        hold = self._guard_held or retrying or (bool(self._waiting) and self._unpaused_wait_left() <= 0)
        assigned = self._offsets.assigned
        if hold:
            newly = assigned - self._paused
            if newly:
                self._source.pause(newly)
                self._paused |= newly
        elif self._paused:
            self._source.resume(self._paused & assigned)
            self._paused.clear()
        self._metrics.paused_partitions.set(len(self._paused))

    # --- rebalance callbacks (polling thread, inside poll) -----------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._metrics.rebalances_total.labels(RebalanceKind.ASSIGN.value).inc()
        self._offsets.assign(partitions)
        for topic, partition in partitions:
            self._metrics.partition_assigned(topic, partition)
        self._health.joined = True
        self._status.assignment(self._offsets.assigned)
        if partitions:
            log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Write and commit everything in hand for the revoked partitions before returning."""
        self._metrics.rebalances_total.labels(RebalanceKind.REVOKE.value).inc()
        if partitions:
            log.info("partitions revoked", extra={"partitions": _names(partitions)})
        revoked = self._batcher.take(partitions, CloseReason.REVOKE)
        if revoked is not None:
            self._waiting.append(revoked)
        if self._guard_held:
            pass  # nothing more is committed; the next owner replays these partitions from their last commit
        elif not self._abandoned and not self._finish_in_hand(self._clock.monotonic() + self._shutdown_timeout_s):
            log.error("could not commit the records in hand before the revoke; the next owner replays them")
        self._release(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop what is in hand for lost partitions, uncommitted: their new owner replays them."""
        self._metrics.rebalances_total.labels(RebalanceKind.LOST.value).inc()
        dropped = self._batcher.drop(partitions)
        log.warning("partitions lost", extra={"partitions": _names(partitions), "dropped": dropped})
        self._release(partitions)

    def _release(self, partitions: list[TopicPartition]) -> None:
        self._offsets.forget(partitions)
        self._paused.difference_update(partitions)
        for topic, partition in partitions:
            self._metrics.partition_released(topic, partition)
        self._status.assignment(self._offsets.assigned)

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
        self._health.shutting_down = True
        if self._guard_held:
            self._source.close()
            log.info("stopped while the dead-letter guard held; nothing was committed after it tripped")
            return 0
        deadline = self._clock.monotonic() + self._shutdown_timeout_s
        last = self._batcher.flush(CloseReason.SHUTDOWN)
        if last is not None:
            self._waiting.append(last)
        log.info("stopping: finishing the batch in hand", extra={"batches": len(self._waiting) + bool(
            self._in_flight)})
        finished = self._finish_in_hand(deadline)
        if self._guard_held:  # tripped by the batch in hand: nothing more is committed
            return self._shut_down()
        if finished and self._offsets.pending():
            self._commit()
        if not finished or self._offsets.pending():
            log.error("shutdown timeout ran out before the batch in hand was committed; "
                      "its records stay uncommitted and will be replayed")
            self._abandoned = True
            self._source.close()
            return 1
        self._source.close()
        log.info("stopped cleanly")
        return 0


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{topic}/{partition}" for topic, partition in partitions]
