"""build(settings): the one place the concrete classes meet and are wired into a service that `run` starts.

Units are converted here (ms -> s); the parts `check` builds too come from consumer.service.components. Only
the command line (`run`) and `demo` import this module (an import-linter contract).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.clock import Clock, SystemClock
from consumer.decode.decoder import Decoder
from consumer.errors import TransientError
from consumer.kafka.admin import ensure_dead_letter_topic
from consumer.kafka.config import (
    consumer_config,
    dead_letter_max_bytes,
    dead_letter_producer_config,
    kafka_client_config,
)
from consumer.kafka.connectivity import BrokerConnectivity
from consumer.kafka.dead_letters import KafkaDeadLetterPublisher
from consumer.kafka.source import KafkaSource
from consumer.observability.health import HealthServer, HealthState
from consumer.observability.metrics import Dependency, Metrics
from consumer.observability.runner_events import RunnerEvents
from consumer.observability.status import StatusBoard
from consumer.secrets import Redactor
from consumer.service.adaptive import AdaptiveBatchSize
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.components import prepare_sink, validated_parts
from consumer.service.executor import SinkThread
from consumer.service.guard import DlqGuard
from consumer.service.offsets import OffsetTracker
from consumer.service.pipeline import Pipeline
from consumer.service.ratelimit import TokenBucket
from consumer.service.retry import Backoff
from consumer.service.runner import Runner
from consumer.service.topic_watch import CHECK_TIMEOUT_S, TopicWatch
from consumer.settings import Settings, WriteMode
from consumer.sql.sink import SqlSink

log = logging.getLogger(__name__)

# The poll loop decodes (holding the GIL) while the sink thread waits on the database; each answer the sink
# thread gets back then waits for the GIL, by default up to 5 ms (sys.getswitchinterval), several times a
# batch (begin, stage, COPY, INSERT, commit). At 1 ms the two threads overlap: draining 300,000 benchmark
# events into PostgreSQL went from 44.5k to 55.4k records/s (0.5 ms gave 52.0k).
GIL_SWITCH_INTERVAL_S = 0.001


@dataclass
class Application:
    runner: Runner
    health: HealthState
    server: HealthServer
    metrics: Metrics
    closers: list[Callable[[], None]] = field(default_factory=list)
    starters: list[Callable[[], None]] = field(default_factory=list)  # background work begun with the run

    def run(self) -> int:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.server.start()
        for start in self.starters:
            start()
        try:
            return self.runner.run()
        finally:
            for close in reversed(self.closers):
                close()
            self.server.close()


def build(settings: Settings, stop: threading.Event, clock: Clock | None = None) -> Application:
    clock = clock or SystemClock()
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings.consumer_topics)
    metrics.info.labels(__version__, settings.consumer_group_id).set(1)
    health = HealthState(clock, settings.liveness_window_s)
    redact = Redactor(settings.secret_values())
    status = StatusBoard(health, __version__, settings.masked(), clock, settings.log_summary_interval_s,
                         settings.dead_letter_topic, redact)
    # Bound first: a port in use is a configuration error (exit 2) before anything else is reached.
    server = HealthServer(settings.metrics_port, registry, health, settings.secret_values(),
                          host=settings.metrics_host)
    decoder, sink = validated_parts(settings)  # as `check` validates them
    watch, all_present = _topic_watch(settings, health, clock)
    source = KafkaSource(consumer_config(settings), settings.consumer_topics,
                         BrokerConnectivity(clock, health.broker_changed))
    publisher = KafkaDeadLetterPublisher(dead_letter_producer_config(settings), settings.dead_letter_topic,
                                         settings.consumer_group_id, clock, redact=redact)
    _prepare_sink(sink, decoder, health)
    runner = Runner(
        source=source,
        batcher=Batcher(settings.batch_max_records, settings.batch_max_bytes, settings.batch_max_wait_ms / 1000,
                        clock),
        pipeline=Pipeline(decoder, sink, publisher, DlqGuard(settings.dlq_max_ratio, settings.dlq_guard_min_records),
                          settings.sink_write_mode is WriteMode.UPSERT, clock),
        offsets=OffsetTracker(),
        breakers={dependency: CircuitBreaker(settings.breaker_failure_threshold,
                                             settings.breaker_reset_timeout_ms / 1000, clock)
                  for dependency in Dependency},
        backoff=Backoff(settings.retry_backoff_initial_ms / 1000, settings.retry_backoff_max_ms / 1000),
        executor=SinkThread(cancel=sink.cancel),
        observer=RunnerEvents(metrics, health, status, clock),
        clock=clock,
        shutdown_timeout_s=settings.shutdown_timeout_ms / 1000,
        stop=stop,
        rate_limit=TokenBucket(settings.sink_max_records_per_second, clock)
        if settings.sink_max_records_per_second else None,
        adaptive=AdaptiveBatchSize(settings.batch_target_latency_ms / 1000, settings.batch_max_records)
        if settings.batch_target_latency_ms else None,
    )
    metrics.batch_max_records.set(settings.batch_max_records)
    return Application(runner, health, server, metrics, closers=[watch.close, publisher.close, sink.close],
                       starters=[] if all_present else [watch.start])


def _topic_watch(settings: Settings, health: HealthState, clock: Clock) -> tuple[TopicWatch, bool]:
    """Look for the source topics now (the dead-letter topic is made before the first batch when they exist);
    the watch keeps looking in the background while one is missing or the broker did not answer."""
    # max.message.bytes: room for a letter of MAX_RECORD_BYTES (a broker's default is about 1 MiB)
    find_missing = partial(ensure_dead_letter_topic, kafka_client_config(settings), settings.dead_letter_topic,
                           settings.consumer_topics, CHECK_TIMEOUT_S,
                           {"max.message.bytes": str(dead_letter_max_bytes(settings))})
    watch = TopicWatch(find_missing, health, clock)
    return watch, watch.check()


def _prepare_sink(sink: SqlSink, decoder: Decoder, health: HealthState) -> None:
    """Create or evolve the table now when the columns are known; a database that is down is waited for
    by the runner (the first batch retries), a fatal error stops the start. The decoder learns the table's
    columns first (see Decoder.table_at_start)."""
    try:
        prepare_sink(sink, decoder, create=True)
        health.sink_ok = True
    except TransientError as exc:
        log.warning("sink not answering at start; batches will wait for it", extra={"error": str(exc)})
