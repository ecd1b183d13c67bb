"""RunnerEvents: what the runner reports (consumer.service.observer.RunnerObserver) turned into metrics, the
/status snapshot, the probes' state and log lines, in one place, so the loop's control flow holds none of them.

Names are the contract's: every metric and label value, and every log message operators and the runbook
search for, are the ones the runner used to write itself, under the runner's logger name. Each event is
called per turn or per batch, never per record.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from consumer.clock import Clock
from consumer.errors import GuardTrippedError, PermanentError, TransientError
from consumer.observability.health import HealthState
from consumer.observability.lag import LagInputs, LagMonitor
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
from consumer.records import Batch, BatchResult, CommitOutcome, TopicPartition

# The runner's lines keep the logger name they always had, so LOG_LEVEL filters and log searches still match.
log = logging.getLogger("consumer.service.runner")

LAG_REFRESH_S = 1.0  # lag gauges and /status refresh this often while idle (local reads, no broker trip)


class BreakerReading(Protocol):
    """A circuit breaker as the observer reads it (consumer.service.breaker.CircuitBreaker)."""

    @property
    def state(self) -> BreakerState: ...

    @property
    def changed_at(self) -> float: ...

    def seconds_until_probe(self) -> float: ...


class RunnerEvents:
    """The service's RunnerObserver."""

    def __init__(
        self, metrics: Metrics, health: HealthState, status: StatusBoard, clock: Clock, lag: LagMonitor | None = None
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._status = status
        self._clock = clock
        self._lag = lag or LagMonitor(metrics, clock, LAG_REFRESH_S)
        self._breaker_states: dict[Dependency, BreakerState] = {}
        self._commits_refused = 0  # in a row, since the last accepted commit: one warning per incident

    # --- the loop ----------------------------------------------------------------------------------
    def polled(self, view: LagInputs) -> None:
        self._health.beat()
        if self._lag.due():
            self._refresh_lag(view)

    def waited_for_sink(self) -> None:
        self._health.beat()  # the loop is alive: it is waiting on the sink on purpose

    def partitions_paused(self, paused: Collection[TopicPartition]) -> None:
        self._metrics.paused_partitions.set(len(paused))

    # --- batches -----------------------------------------------------------------------------------
    def breakers_changed(self, breakers: Mapping[Dependency, BreakerReading]) -> None:
        any_open = False
        for dependency, breaker in breakers.items():
            state = breaker.state
            if state is BreakerState.CLOSED and self._breaker_states.get(dependency, state) is not state:
                log.info("dependency recovered, circuit breaker closed", extra={"dependency": dependency.value})
            self._breaker_states[dependency] = state
            self._metrics.circuit_breaker_state.labels(dependency.value).set(int(state))
            if state is BreakerState.OPEN:
                any_open = True
                if not self._health.breaker_open:
                    log.warning("circuit breaker open", extra={
                        "dependency": dependency.value, "probe_in_s": round(breaker.seconds_until_probe(), 3)})
            self._status.breaker(dependency.value, state, breaker.changed_at)
        self._health.breaker_open = any_open

    def retry_scheduled(
        self, batch: Batch, error: TransientError, dependency: Dependency, delay_s: float, failures: int
    ) -> None:
        self._metrics.batches_total.labels(BatchOutcome.RETRIED.value).inc()
        self._metrics.retries_total.labels(dependency.value).inc()
        if dependency is not Dependency.BROKER:  # dead letters the broker did not take are no sink retry
            self._metrics.sink_retries_total.labels(type(error).__name__).inc()
        self._status.error(error)
        if failures == 1:  # one warning per incident, not one per retry
            log.warning("batch failed, retrying", extra={"batch_id": batch.batch_id, "error_class":
                        type(error).__name__, "error": str(error), "retry_in_s": round(delay_s, 3)})

    def batch_failed(self, error: PermanentError) -> None:
        self._metrics.batches_total.labels(BatchOutcome.FAILED.value).inc()

    def guard_tripped(self, batch: Batch, error: GuardTrippedError, dropped: int) -> None:
        self._metrics.batches_total.labels(BatchOutcome.FAILED.value).inc()
        self._metrics.dlq_guard_tripped.set(1)
        self._health.guard_tripped = True
        self._status.error(error)
        log.error("dead-letter guard tripped: holding, nothing more is written, dead-lettered or committed; "
                  "find the cause (schema, upstream deploy), then restart", extra={
                      "batch_id": batch.batch_id, "reason": str(error), "dropped_uncommitted": dropped})

    def batch_size_adapted(self, max_records: int) -> None:
        self._metrics.batch_max_records.set(max_records)

    def batch_through(self, result: BatchResult) -> None:
        """Outcome counts, batch-level only (the hot path does no per-record metric work), before the commit
        goes out: whoever sees the commit at the broker finds the records already counted."""
        self._health.sink_ok = True
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
        self._status.counted(result)

    def batch_committed(self, result: BatchResult, commit_seconds: float) -> None:
        """The commit carrying the batch was answered (or given up on): its commit and total durations and
        the end-to-end latency of its oldest and newest record."""
        m, batch = self._metrics, result.batch
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

    def commit_refused(self, outcome: CommitOutcome) -> None:
        """Counted each time; logged once until a commit is accepted again (a broker outage refuses or
        leaves unanswered a commit every few seconds: no line per retry)."""
        self._metrics.commit_failures_total.inc()
        self._commits_refused += 1
        level = logging.WARNING if self._commits_refused == 1 else logging.DEBUG
        log.log(level, "offset commit refused; records will be replayed harmlessly if the partition moved",
                extra={"during_rebalance": outcome.during_rebalance, "errors": sorted(set(outcome.refused.values()))})

    def offsets_committed(self, offsets: Mapping[TopicPartition, int], view: LagInputs) -> None:
        if self._commits_refused > 1:
            log.info("offset commits accepted again", extra={"refused_in_a_row": self._commits_refused})
        self._commits_refused = 0
        now = self._clock.wall()
        self._metrics.last_commit_timestamp_seconds.set(now)
        for (topic, partition), offset in offsets.items():
            self._metrics.committed_offset.labels(topic, str(partition)).set(offset)
        self._status.committed(offsets, now)
        self._refresh_lag(view)

    def _refresh_lag(self, view: LagInputs) -> None:
        """Lag per assigned partition from cached watermarks, aged by the oldest batch in hand (batch-level)."""
        rows = self._lag.refresh(view.assigned(), view.committed_offset, view.group_committed,
                                 view.high_watermark, view.oldest_in_hand_ms())
        self._status.partitions(rows, view.paused())

    # --- rebalances --------------------------------------------------------------------------------
    def partitions_assigned(self, partitions: Sequence[TopicPartition], assigned: Collection[TopicPartition]) -> None:
        self._metrics.rebalances_total.labels(RebalanceKind.ASSIGN.value).inc()
        for topic, partition in partitions:
            self._metrics.partition_assigned(topic, partition)
        self._health.joined = True
        self._status.assignment(assigned)
        if partitions:
            log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def partitions_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._metrics.rebalances_total.labels(RebalanceKind.REVOKE.value).inc()
        if partitions:
            log.info("partitions revoked", extra={"partitions": _names(partitions)})

    def revoke_left_uncommitted(self) -> None:
        log.error("could not commit the records in hand before the revoke; the next owner replays them")

    def partitions_lost(self, partitions: Sequence[TopicPartition], dropped: int) -> None:
        self._metrics.rebalances_total.labels(RebalanceKind.LOST.value).inc()
        log.warning("partitions lost", extra={"partitions": _names(partitions), "dropped": dropped})

    def partitions_released(self, partitions: Sequence[TopicPartition], assigned: Collection[TopicPartition]) -> None:
        for topic, partition in partitions:
            self._metrics.partition_released(topic, partition)
        self._status.assignment(assigned)

    # --- stopping ----------------------------------------------------------------------------------
    def stop_requested(self) -> None:
        self._health.shutting_down = True

    def finishing(self, batches: int) -> None:
        log.info("stopping: finishing the batch in hand", extra={"batches": batches})

    def stop_timed_out(self) -> None:
        log.error("shutdown timeout ran out before the batch in hand was committed; "
                  "its records stay uncommitted and will be replayed")

    def stopped(self, held: bool) -> None:
        if held:
            log.info("stopped while the dead-letter guard held; nothing was committed after it tripped")
        else:
            log.info("stopped cleanly")


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{topic}/{partition}" for topic, partition in partitions]
