"""build(settings): the one place concrete classes are constructed and wired together.

Units are converted here (ms -> s), library clients are created here, and nothing else reads settings.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.clock import Clock, SystemClock
from consumer.decode.decoder import (
    Decoder,
    JsonDecoder,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
    ValueDecoder,
    key_source,
)
from consumer.decode.registry import SchemaRegistryClient
from consumer.decode.schema import AvroSchema, field_names, load_schema_file, parse_schema
from consumer.errors import ConfigError, TransientError
from consumer.kafka.dead_letters import DlqGuard, KafkaDeadLetterPublisher
from consumer.kafka.source import KafkaSource, ensure_topic, partition_count
from consumer.observability.health import HealthServer, HealthState
from consumer.observability.logs import secret_values
from consumer.observability.metrics import Dependency, Metrics
from consumer.observability.status import StatusBoard
from consumer.service.adaptive import AdaptiveBatchSize
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.offsets import OffsetTracker
from consumer.service.pipeline import Pipeline
from consumer.service.ratelimit import TokenBucket
from consumer.service.retry import Backoff
from consumer.service.runner import Runner
from consumer.settings import GroupProtocol, Settings, ValueFormat, WriteMode
from consumer.sql.sink import SqlSink, create_sink_engine

log = logging.getLogger(__name__)

# The poll loop decodes (holding the GIL) while the sink thread waits on the database; each answer the sink
# thread gets back then waits for the GIL, by default up to 5 ms (sys.getswitchinterval), several times a
# batch (begin, stage, COPY, INSERT, commit). At 1 ms the two threads overlap: draining 300,000 benchmark
# events into PostgreSQL went from 44.5k to 55.4k records/s (0.5 ms gave 52.0k).
GIL_SWITCH_INTERVAL_S = 0.001

# librdkafka's own log lines go through Python logging (served inside poll), so LOG_FORMAT=json holds for them
KAFKA_LOGGER = "consumer.kafka"


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Properties shared by every Kafka client: brokers, security, and KAFKA_EXTRA__* passthrough."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.require_bootstrap(),
        "security.protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    for name, value in settings.kafka_extra.items():
        config[name.lower().replace("_", ".")] = value
    return config


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "group.id": settings.consumer_group_id,
        **({"group.instance.id": settings.kafka_group_instance_id} if settings.kafka_group_instance_id else {}),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a new group sinks the whole topic, as a sink connector would
        **group_protocol_config(settings),
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "statistics.interval.ms": 5000,  # the group's committed offsets for lag before our first commit
        # Prefetch at most 16 MiB (librdkafka's default 64 MiB): memory bounded by batches, not by backlog.
        # Draining 300,000 events: peak RSS 166-171 -> 142 MiB, 30,000: 110 -> 111 MiB, records/s unchanged
        # (43.4k/44.8k -> 43.6k/44.3k); 16 MiB is still over a second of records at full speed.
        "queued.max.messages.kbytes": 16384,
        # A fetch the broker may hold for new records: at most 100 ms (librdkafka's default 500). At half the
        # benchmark's throughput, produce-to-commit p50 408/400 -> 264/269 ms, p99 740/760 -> 681/683 ms;
        # draining a backlog unchanged (53.7k/55.0k -> 56.5k/55.3k records/s); idle, a few fetches a second.
        "fetch.wait.max.ms": 100,
        "logger": logging.getLogger(KAFKA_LOGGER),
        **kafka_client_config(settings),
    }


def group_protocol_config(settings: Settings) -> dict[str, Any]:
    """Membership properties: with KIP-848 (`consumer`) the broker assigns partitions and owns the session,
    and librdkafka refuses the classic protocol's assignment strategy and session timeout."""
    if settings.kafka_group_protocol is GroupProtocol.CONSUMER:
        return {"group.protocol": "consumer"}
    return {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
    }


def build_value_decoder(settings: Settings) -> tuple[ValueDecoder, list[str] | None]:
    """The value decoder and the field names known at start (None when the fields are not known)."""
    reader: AvroSchema | None = load_schema_file(settings.schema_file) if settings.schema_file else None
    if settings.value_format is ValueFormat.JSON:
        return JsonDecoder(reader), field_names(reader) if reader is not None else None
    if settings.schema_registry_url:
        registry = SchemaRegistryClient(settings.schema_registry_url)
        initial = reader if reader is not None else _latest_registry_schema(registry, settings)
        decoder = RegistryAvroDecoder(registry, reader, initial)
        return decoder, field_names(initial) if initial is not None else None
    assert reader is not None  # Settings requires SCHEMA_FILE for avro without a registry
    return SchemalessAvroDecoder(reader), field_names(reader)


def _latest_registry_schema(registry: SchemaRegistryClient, settings: Settings) -> AvroSchema | None:
    subject = f"{settings.consumer_topics[0]}-value"
    try:
        latest = registry.latest(subject)
    except TransientError as exc:
        log.warning("schema registry not answering at start; columns follow the first records",
                    extra={"error": str(exc)})
        return None
    if latest is None:
        return None
    try:
        return parse_schema(latest[1])
    except ValueError as exc:
        raise ConfigError(f"SCHEMA_REGISTRY_URL: latest schema of {subject} is not usable: {exc}") from None


@dataclass
class Application:
    runner: Runner
    health: HealthState
    server: HealthServer
    metrics: Metrics
    closers: list[Callable[[], None]] = field(default_factory=list)

    def run(self) -> int:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.server.start()
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
    status = StatusBoard(health, __version__, settings.masked(), clock, settings.log_summary_interval_s)
    values, fields = build_value_decoder(settings)
    decoder = Decoder(values, key_source(settings.idempotency_key, fields), settings.idempotency_key,
                      settings.max_record_bytes)
    sink = SqlSink(create_sink_engine(settings.sink_url, settings.sink_password_file), settings.sink_table,
                   upsert=settings.sink_write_mode is WriteMode.UPSERT,
                   typed_values=settings.value_format is ValueFormat.AVRO)
    client_config = kafka_client_config(settings)
    _ensure_dead_letter_topic(client_config, settings)
    try:
        source = KafkaSource(consumer_config(settings), settings.consumer_topics)
        publisher = KafkaDeadLetterPublisher({**client_config, "logger": logging.getLogger(KAFKA_LOGGER)},
                                             settings.dead_letter_topic,
                                             settings.consumer_group_id, clock)
    except KafkaException as exc:
        raise ConfigError(f"KAFKA_EXTRA: {exc.args[0].str()}") from None
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
        metrics=metrics,
        health=health,
        status=status,
        clock=clock,
        shutdown_timeout_s=settings.shutdown_timeout_ms / 1000,
        stop=stop,
        rate_limit=TokenBucket(settings.sink_max_records_per_second, clock)
        if settings.sink_max_records_per_second else None,
        adaptive=AdaptiveBatchSize(settings.batch_target_latency_ms / 1000, settings.batch_max_records)
        if settings.batch_target_latency_ms else None,
    )
    metrics.batch_max_records.set(settings.batch_max_records)
    server = HealthServer(settings.metrics_port, registry, health, secret_values(settings))
    return Application(runner, health, server, metrics, closers=[publisher.close, sink.close])


def _ensure_dead_letter_topic(config: dict[str, Any], settings: Settings) -> None:
    try:
        partitions = partition_count(config, settings.consumer_topics[0]) or 1
        ensure_topic(config, settings.dead_letter_topic, partitions)
    except TransientError as exc:
        # The producer will retry; a missing topic then shows as delivery failures and blocks commits.
        log.warning("could not check the dead-letter topic at start", extra={"error": str(exc)})


def _prepare_sink(sink: SqlSink, decoder: Decoder, health: HealthState) -> None:
    """Create or evolve the table now when the columns are known; a database that is down is waited for
    by the runner (the first batch retries), a fatal error stops the start."""
    columns = decoder.columns()
    try:
        sink.ping()
        if columns:
            sink.prepare(columns)
        health.sink_ok = True
    except TransientError as exc:
        log.warning("sink not answering at start; batches will wait for it", extra={"error": str(exc)})
