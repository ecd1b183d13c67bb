"""RunnerEvents turns the runner's events into the contract's metrics, /status, probe state and log lines:
the names and messages dashboards, alerts and the runbook read, under the runner's logger name."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from fakeclock import FakeClock
from prometheus_client import CollectorRegistry

from consumer.errors import FatalError, GuardTrippedError, SinkUnavailableError
from consumer.observability.health import HealthState
from consumer.observability.metrics import BreakerState, Dependency, Metrics
from consumer.observability.runner_events import RunnerEvents
from consumer.observability.status import StatusBoard
from consumer.records import (
    Batch,
    BatchResult,
    CloseReason,
    CommitOutcome,
    RawRecord,
    TopicCounts,
    TopicPartition,
)
from consumer.service.observer import RunnerObserver

TOPIC = "t"
RUNNER_LOGGER = "consumer.service.runner"


@dataclass
class Breaker:
    state: BreakerState
    changed_at: float = 0.0

    def seconds_until_probe(self) -> float:
        return 1.5 if self.state is BreakerState.OPEN else 0.0


@dataclass
class View:
    assigned_: frozenset[TopicPartition] = frozenset({(TOPIC, 0)})
    paused_: frozenset[TopicPartition] = frozenset()

    def assigned(self) -> frozenset[TopicPartition]:
        return self.assigned_

    def paused(self) -> frozenset[TopicPartition]:
        return self.paused_

    def committed_offset(self, partition: TopicPartition) -> int | None:
        return 10

    def group_committed(self, partition: TopicPartition) -> int | None:
        return None

    def high_watermark(self, partition: TopicPartition) -> int | None:
        return 25

    def oldest_in_hand_ms(self) -> int | None:
        return None


@dataclass
class Observed:
    events: RunnerEvents
    registry: CollectorRegistry
    health: HealthState
    clock: FakeClock

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def observed(caplog: pytest.LogCaptureFixture) -> Observed:
    caplog.set_level(logging.DEBUG, logger=RUNNER_LOGGER)
    clock = FakeClock()
    registry = CollectorRegistry()
    metrics = Metrics(registry, [TOPIC])
    health = HealthState(clock, 60)
    events = RunnerEvents(metrics, health, StatusBoard(health, "test", {}, clock), clock)
    return Observed(events, registry, health, clock)


def _batch(n: int = 3) -> Batch:
    records = [RawRecord(TOPIC, 0, i, 1_699_999_999_000, None, b"v") for i in range(n)]
    return Batch(7, records, CloseReason.RECORDS, n, 990.0)


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == RUNNER_LOGGER]


def test_it_is_a_runner_observer(observed: Observed) -> None:
    observer: RunnerObserver = observed.events
    assert observer is observed.events


def test_a_committed_batch_counts_records_batches_durations_and_marks_the_sink_answering(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    batch = _batch()
    counts = {TOPIC: TopicCounts(sunk=2, dlq=1)}
    result = BatchResult(batch, batch.next_offsets(), counts, dead_letters=1,
                         dead_letter_kinds={("decode", "DecodeError"): 1})
    observed.events.batch_through(result)
    observed.events.batch_committed(result, 0.25)
    observed.events.offsets_committed({(TOPIC, 0): 3}, View())
    assert observed.value("consumer_records_total", topic=TOPIC, outcome="sunk") == 2
    assert observed.value("consumer_records_total", topic=TOPIC, outcome="dlq") == 1
    assert observed.value("consumer_dead_letters_total", stage="decode", error_class="DecodeError") == 1
    assert observed.value("consumer_batches_total", outcome="committed") == 1
    assert observed.value("consumer_batches_closed_total", reason="records") == 1
    assert observed.value("consumer_batch_duration_seconds_sum", stage="commit") == 0.25
    assert observed.value("consumer_batch_duration_seconds_sum", stage="total") == 10.0  # opened at 990
    assert observed.value("consumer_end_to_end_latency_seconds_count") == 2  # oldest and newest record
    assert observed.value("consumer_committed_offset", topic=TOPIC, partition="0") == 3
    assert observed.value("consumer_last_commit_timestamp_seconds") == observed.clock.wall()
    assert observed.value("consumer_lag_records", topic=TOPIC, partition="0") == 15  # 25 - 10
    assert observed.health.sink_ok
    assert _messages(caplog) == [("DEBUG", "batch committed")]


def test_a_retry_counts_per_attempt_and_warns_once_per_incident(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    for failures in (1, 2, 3):
        observed.events.retry_scheduled(_batch(), SinkUnavailableError("db away"), Dependency.SINK, 0.5, failures)
    assert observed.value("consumer_batches_total", outcome="retried") == 3
    assert observed.value("consumer_sink_retries_total", error_class="SinkUnavailableError") == 3
    assert _messages(caplog) == [("WARNING", "batch failed, retrying")]


def test_breaker_changes_set_the_gauge_warn_on_open_and_log_the_recovery(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    closed = {d: Breaker(BreakerState.CLOSED) for d in Dependency}
    observed.events.breakers_changed(closed)
    observed.events.breakers_changed({**closed, Dependency.SINK: Breaker(BreakerState.OPEN)})
    assert observed.value("consumer_circuit_breaker_state", dependency="sink") == 2
    assert observed.health.breaker_open
    observed.events.breakers_changed({**closed, Dependency.SINK: Breaker(BreakerState.OPEN)})  # still open
    observed.events.breakers_changed(closed)
    assert observed.value("consumer_circuit_breaker_state", dependency="sink") == 0
    assert not observed.health.breaker_open
    assert _messages(caplog) == [("WARNING", "circuit breaker open"),
                                 ("INFO", "dependency recovered, circuit breaker closed")]


def test_the_guard_trips_the_gauge_the_probe_and_one_error(observed: Observed, caplog: pytest.LogCaptureFixture) -> None:
    observed.events.guard_tripped(_batch(), GuardTrippedError("too many"), dropped=5)
    observed.events.batch_failed(FatalError("gone"))
    assert observed.value("consumer_dlq_guard_tripped") == 1
    assert observed.value("consumer_batches_total", outcome="failed") == 2
    assert observed.health.guard_tripped
    [(level, message)] = _messages(caplog)
    assert level == "ERROR" and message.startswith("dead-letter guard tripped: holding")


def test_rebalances_count_by_kind_and_partition_series_follow_the_assignment(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    observed.events.partitions_assigned([(TOPIC, 0), (TOPIC, 1)], {(TOPIC, 0), (TOPIC, 1)})
    assert observed.health.joined
    assert observed.value("consumer_committed_offset", topic=TOPIC, partition="1") == 0
    observed.events.partitions_revoked([(TOPIC, 1)])
    observed.events.partitions_released([(TOPIC, 1)], {(TOPIC, 0)})
    observed.events.partitions_lost([(TOPIC, 0)], dropped=4)
    observed.events.partitions_released([(TOPIC, 0)], set())
    observed.events.revoke_left_uncommitted()
    for kind in ("assign", "revoke", "lost"):
        assert observed.value("consumer_rebalances_total", kind=kind) == 1
    assert observed.value("consumer_committed_offset", topic=TOPIC, partition="1") is None
    assert _messages(caplog) == [
        ("INFO", "partitions assigned"), ("INFO", "partitions revoked"), ("WARNING", "partitions lost"),
        ("ERROR", "could not commit the records in hand before the revoke; the next owner replays them"),
    ]


def test_commit_refusals_pauses_and_adapted_sizes_set_their_metrics(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    observed.events.commit_refused(CommitOutcome(refused={(TOPIC, 0): "REBALANCE_IN_PROGRESS"}, during_rebalance=True))
    observed.events.partitions_paused({(TOPIC, 0), (TOPIC, 1)})
    observed.events.batch_size_adapted(1234)
    assert observed.value("consumer_commit_failures_total") == 1
    assert observed.value("consumer_paused_partitions") == 2
    assert observed.value("consumer_batch_max_records") == 1234
    assert _messages(caplog) == [
        ("WARNING", "offset commit refused; records will be replayed harmlessly if the partition moved")]


def test_commit_refusals_in_a_row_warn_once_and_an_accepted_commit_ends_the_incident(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker outage refuses (or leaves unanswered) a commit every few seconds: counted each time, one
    WARNING per incident, then one INFO when a commit goes through; the next incident warns again."""
    silent = CommitOutcome(refused={(TOPIC, 0): "no answer within 5 s"})
    for _ in range(4):
        observed.events.commit_refused(silent)
    observed.events.offsets_committed({(TOPIC, 0): 10}, View())
    observed.events.commit_refused(silent)
    assert observed.value("consumer_commit_failures_total") == 5
    refused = "offset commit refused; records will be replayed harmlessly if the partition moved"
    assert [m for m in _messages(caplog) if m[0] != "DEBUG"] == [
        ("WARNING", refused), ("INFO", "offset commits accepted again"), ("WARNING", refused)]


def test_stopping_marks_the_service_shutting_down_and_logs_how_it_ended(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    observed.events.stop_requested()
    observed.events.finishing(2)
    observed.events.stop_timed_out()
    observed.events.stopped(held=False)
    observed.events.stopped(held=True)
    assert observed.health.not_ready_because() == "shutting down"
    assert _messages(caplog) == [
        ("INFO", "stopping: finishing the batch in hand"),
        ("ERROR", ("shutdown timeout ran out before the batch in hand was committed; "
                   "its records stay uncommitted and will be replayed")),
        ("INFO", "stopped cleanly"),
        ("INFO", "stopped while the dead-letter guard held; nothing was committed after it tripped"),
    ]


def test_polling_beats_the_liveness_probe_and_refreshes_lag_only_when_due(observed: Observed) -> None:
    observed.clock.advance(120)
    assert not observed.health.live()
    observed.events.polled(View())
    assert observed.health.live()
    assert observed.value("consumer_lag_records", topic=TOPIC, partition="0") == 15
    observed.events.polled(View(paused_=frozenset({(TOPIC, 0)})))  # within LAG_REFRESH_S: not refreshed
    assert observed.health.status["assignment"][0]["paused"] is False
    observed.clock.advance(1.0)
    observed.events.polled(View(paused_=frozenset({(TOPIC, 0)})))
    assert observed.health.status["assignment"][0]["paused"] is True
