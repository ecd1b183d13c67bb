"""Every Prometheus metric the service exports, declared in one place on an injected registry.

Attribute names are the exposed names minus `consumer_` (and `_total`), so grep finds both.
Label values come from Enums and are pre-created so alerts see series at 0 before the first event.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from itertools import product

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.records import CloseReason, Stage


class Outcome(StrEnum):
    SUNK = "sunk"
    DUPLICATE = "duplicate"
    DLQ = "dlq"
    SKIPPED = "skipped"


class BatchOutcome(StrEnum):
    COMMITTED = "committed"  # its offsets went out
    RETRIED = "retried"  # one failed attempt that will be retried
    FAILED = "failed"  # ended without a commit: a fatal error (exit 1 follows) or the dead-letter guard


class BatchStage(StrEnum):
    DECODE = "decode"
    SINK = "sink"
    COMMIT = "commit"
    TOTAL = "total"


class Dependency(StrEnum):
    """What a batch attempt can fail on: each has its own circuit breaker and retry count."""

    SINK = "sink"
    SCHEMA_REGISTRY = "schema_registry"
    BROKER = "broker"  # publishing the batch's dead letters


class BreakerState(IntEnum):
    """Values of the consumer_circuit_breaker_state gauge, and the states of service.breaker.CircuitBreaker."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class RebalanceKind(StrEnum):
    ASSIGN = "assign"
    REVOKE = "revoke"
    LOST = "lost"


# Batch sizes run from a handful of records (idle topic, time-closed) to the 5000 default and beyond.
_RECORD_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
# Value bytes per batch: 1 KiB up to the 8 MiB default limit and a little past it.
_BYTE_BUCKETS = tuple(float(1024 * 4**i) for i in range(8)) + (16 * 1024 * 1024.0,)
# Stage durations: milliseconds for a healthy sink up to minutes while a database crawls.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Produce-to-commit latency: at best BATCH_MAX_WAIT_MS plus a write, at worst a backlog of minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# Error classes a sink retry can carry (the TransientError subclasses a batch attempt raises); `error_class`
# label values (our own class names only).
SINK_ERROR_CLASSES = ("SinkUnavailableError", "BrokerUnavailableError", "RegistryUnavailableError")

# Poison classes per dead-letter stage, the PoisonRecordError subclasses the decoder and the sink raise:
# `consumer_dead_letters_total` labels.
DEAD_LETTER_CLASSES = {
    Stage.DECODE: ("DecodeError", "RecordTooLargeError"),
    Stage.VALIDATE: ("MissingKeyError",),
    Stage.TRANSFORM: ("TransformError",),
    Stage.SINK: ("RecordRejectedError",),
}


class Metrics:
    """The contract's metrics (docs/contract.md), one attribute each."""

    def __init__(self, registry: CollectorRegistry, topics: list[str]) -> None:
        self.records_total = Counter(
            "consumer_records_total", "Records handled, by topic and outcome.", ["topic", "outcome"],
            registry=registry,
        )
        self.batches_total = Counter(
            "consumer_batches_total", "Batch attempts by outcome.", ["outcome"], registry=registry
        )
        self.batch_records = Histogram(
            "consumer_batch_records", "Records per batch.", buckets=_RECORD_BUCKETS, registry=registry
        )
        self.batch_bytes = Histogram(
            "consumer_batch_bytes", "Value bytes per batch.", buckets=_BYTE_BUCKETS, registry=registry
        )
        self.batch_duration_seconds = Histogram(
            "consumer_batch_duration_seconds", "Time per batch stage.", ["stage"],
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.end_to_end_latency_seconds = Histogram(
            "consumer_end_to_end_latency_seconds", "Record timestamp to the offset commit covering it.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.lag_records = Gauge(
            "consumer_lag_records", "High watermark minus committed offset.", ["topic", "partition"],
            registry=registry,
        )
        self.committed_offset = Gauge(
            "consumer_committed_offset", "Last committed offset.", ["topic", "partition"], registry=registry
        )
        self.circuit_breaker_state = Gauge(
            "consumer_circuit_breaker_state", "0 closed, 1 half-open, 2 open.", ["dependency"], registry=registry
        )
        self.sink_retries_total = Counter(
            "consumer_sink_retries_total", "Sink retries after transient failures.", ["error_class"],
            registry=registry,
        )
        self.retries_total = Counter(
            "consumer_retries_total", "Batch attempts that failed transiently and will be retried, by the "
            "dependency that failed.", ["dependency"], registry=registry,
        )
        self.rebalances_total = Counter(
            "consumer_rebalances_total", "Rebalance callbacks by kind.", ["kind"], registry=registry
        )
        self.paused_partitions = Gauge(
            "consumer_paused_partitions", "Partitions currently paused.", registry=registry
        )
        self.last_commit_timestamp_seconds = Gauge(
            "consumer_last_commit_timestamp_seconds", "Wall time of the last successful commit.", registry=registry
        )
        self.lag_seconds = Gauge(
            "consumer_lag_seconds", "Age of the oldest record not yet committed.", ["topic", "partition"],
            registry=registry,
        )
        self.batches_closed_total = Counter(
            "consumer_batches_closed_total", "Batches closed, by reason.", ["reason"], registry=registry
        )
        self.dlq_guard_tripped = Gauge(
            "consumer_dlq_guard_tripped", "1 while the dead-letter guard holds the service.", registry=registry
        )
        self.batch_max_records = Gauge(
            "consumer_batch_max_records",
            "The record count batches close at now: BATCH_MAX_RECORDS, or less under BATCH_TARGET_LATENCY_MS.",
            registry=registry,
        )
        self.info = Gauge(
            "consumer_info", "Always 1; the version and consumer group of this process (dashboard variables).",
            ["version", "group"], registry=registry,
        )
        self.dead_letters_total = Counter(
            "consumer_dead_letters_total", "Records dead-lettered, by stage and error class.",
            ["stage", "error_class"], registry=registry,
        )
        self.commit_failures_total = Counter(
            "consumer_commit_failures_total", "Offset commits the broker refused (replayed harmlessly).",
            registry=registry,
        )
        self._precreate(topics)

    def _precreate(self, topics: list[str]) -> None:
        for topic, outcome in product(topics, Outcome):
            self.records_total.labels(topic, outcome.value)
        for batch_outcome in BatchOutcome:
            self.batches_total.labels(batch_outcome.value)
        for stage in BatchStage:
            self.batch_duration_seconds.labels(stage.value)
        for dependency in Dependency:
            self.circuit_breaker_state.labels(dependency.value).set(0)
            self.retries_total.labels(dependency.value)
        for error_class in SINK_ERROR_CLASSES:
            self.sink_retries_total.labels(error_class)
        for kind in RebalanceKind:
            self.rebalances_total.labels(kind.value)
        for reason in CloseReason:
            self.batches_closed_total.labels(reason.value)
        for dead_letter_stage, error_classes in DEAD_LETTER_CLASSES.items():
            for error_class in error_classes:
                self.dead_letters_total.labels(dead_letter_stage.value, error_class)

    def partition_assigned(self, topic: str, partition: int) -> None:
        for gauge in (self.lag_records, self.committed_offset, self.lag_seconds):
            gauge.labels(topic, str(partition))

    def partition_released(self, topic: str, partition: int) -> None:
        for gauge in (self.lag_records, self.committed_offset, self.lag_seconds):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass  # never had a series: released before its first batch


class SupervisorMetrics:
    """The `run` supervisor's own metrics (WORKERS > 1), served merged with the workers' metrics."""

    def __init__(self, registry: CollectorRegistry, workers: int) -> None:
        self.worker_restarts_total = Counter(
            "consumer_worker_restarts_total", "Worker processes restarted after an unexpected exit.", ["worker"],
            registry=registry,
        )
        self.workers_running = Gauge(
            "consumer_workers_running", "Worker processes currently running under the supervisor.",
            registry=registry,
        )
        for index in range(workers):
            self.worker_restarts_total.labels(str(index))
