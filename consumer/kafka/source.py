"""KafkaSource: the only door to `confluent_kafka.Consumer` for consuming.

Auto-commit and auto offset store are off: offsets are committed by us, synchronously, after the sink.
Assignment is cooperative-sticky; the rebalance callbacks run inside `poll()` on the polling thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from consumer.errors import BrokerUnavailableError, ConfigError, FatalError
from consumer.records import RawRecord, TopicPartition

log = logging.getLogger(__name__)

# Commit refusals that only mean "a rebalance moved on" (librdkafka #4059): the next owner replays.
_REBALANCE_CODES = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
})


class RebalanceListener(Protocol):
    """Called on the polling thread, inside `KafkaSource.poll()`."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Return only after the records in hand for these partitions are written and committed."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop records in hand for these partitions, uncommitted."""


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    refused: dict[TopicPartition, str] = field(default_factory=dict)
    during_rebalance: bool = False  # refused only because the group moved on (librdkafka #4059)


class Source(Protocol):
    """Where records come from, called only on the polling thread. `poll` runs the rebalance callbacks;
    nothing here blocks longer than its timeout except `commit` (synchronous) and `close`."""

    def subscribe(self, listener: RebalanceListener) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` records of unpaused partitions; raises FatalError or BrokerUnavailableError."""
        ...

    def pause(self, partitions: Collection[TopicPartition]) -> None: ...

    def resume(self, partitions: Collection[TopicPartition]) -> None: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> CommitOutcome:
        """Commit synchronously; a refusal is returned, not raised; raises FatalError."""
        ...

    def high_watermark(self, partition: TopicPartition) -> int | None: ...

    def group_committed(self, partition: TopicPartition) -> int | None: ...

    def close(self) -> None: ...


_new_tuple = tuple.__new__


def _to_raw(message: Message) -> RawRecord:
    """Once per record: built with tuple.__new__, skipping the NamedTuple's Python-level __new__."""
    timestamp_type, timestamp = message.timestamp()
    headers: Any = message.headers()
    return _new_tuple(RawRecord, (
        message.topic() or "", message.partition() or 0, message.offset() or 0,
        timestamp if timestamp_type else -1,
        message.key(), message.value(), tuple(headers) if headers else (),
    ))


class KafkaSource:
    def __init__(self, config: Mapping[str, Any], topics: list[str]) -> None:
        self._topics = topics
        self._fatal: KafkaError | None = None
        self._group_committed: dict[TopicPartition, int] = {}
        self._consumer = Consumer({**config, "error_cb": self._on_error, "stats_cb": self._on_stats})
        self._listener: RebalanceListener | None = None

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        log.warning("kafka client error", extra={"error": error.str(), "code": error.name()})

    def _on_stats(self, report: str) -> None:
        """librdkafka statistics (every `statistics.interval.ms`, inside poll): keep each partition's
        committed offset as the group knows it, or its low watermark when the group has none yet."""
        try:
            topics = json.loads(report).get("topics", {})
        except json.JSONDecodeError:
            return
        known: dict[TopicPartition, int] = {}
        for topic, described in topics.items():
            for partition, stats in described.get("partitions", {}).items():
                committed, low = stats.get("committed_offset", -1), stats.get("lo_offset", -1)
                if int(partition) >= 0 and (committed >= 0 or low >= 0):
                    known[(topic, int(partition))] = committed if committed >= 0 else low
        self._group_committed = known

    def group_committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset from the last statistics report (no broker round trip)."""
        return self._group_committed.get(partition)

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener

        def assigned(_consumer: Consumer, partitions: list[KafkaPartition]) -> None:
            listener.on_assigned([(p.topic, p.partition) for p in partitions])

        def revoked(_consumer: Consumer, partitions: list[KafkaPartition]) -> None:
            listener.on_revoked([(p.topic, p.partition) for p in partitions])

        def lost(_consumer: Consumer, partitions: list[KafkaPartition]) -> None:
            listener.on_lost([(p.topic, p.partition) for p in partitions])

        self._consumer.subscribe(self._topics, on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` records, waiting at most `timeout_s`; runs rebalance callbacks."""
        if self._fatal is not None:
            raise FatalError(f"kafka: {self._fatal.str()}")
        try:
            messages = self._consumer.consume(num_messages=max(1, max_records), timeout=timeout_s)
        except KafkaException as exc:
            raise _translate(exc.args[0]) from None
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_to_raw(message))
            elif error.code() != KafkaError._PARTITION_EOF:
                if error.fatal():
                    raise FatalError(f"kafka: {error.str()}")
                log.warning("consume error", extra={"error": error.str(), "topic": message.topic()})
        return records

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause([KafkaPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume([KafkaPartition(t, p) for t, p in partitions])

    def commit(self, offsets: Mapping[TopicPartition, int]) -> CommitOutcome:
        """Commit synchronously. A refusal (rebalance, broker away) is returned, not raised: the offsets
        stay pending and the records are replayed harmlessly if the partition moves. Fatal errors raise."""
        if not offsets:
            return CommitOutcome()
        request = [KafkaPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            result = self._consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                raise FatalError(f"kafka commit: {error.str()}") from None
            return CommitOutcome(
                refused={tp: error.str() for tp in offsets}, during_rebalance=error.code() in _REBALANCE_CODES
            )
        committed: dict[TopicPartition, int] = {}
        refused: dict[TopicPartition, str] = {}
        rebalance = False
        for partition in result or []:
            key = (partition.topic, partition.partition)
            if partition.error is not None:
                refused[key] = partition.error.str()
                rebalance = rebalance or partition.error.code() in _REBALANCE_CODES
            else:
                committed[key] = partition.offset
        return CommitOutcome(committed, refused, rebalance)

    def high_watermark(self, partition: TopicPartition) -> int | None:
        """The high watermark last seen in a fetch response (no broker round trip)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(KafkaPartition(*partition), cached=True)
        except KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    def close(self) -> None:
        """Leave the group. Offsets are not committed here; the runner committed what was handled."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})


def _translate(error: KafkaError) -> Exception:
    if error.fatal():
        return FatalError(f"kafka: {error.str()}")
    return BrokerUnavailableError(f"kafka: {error.str()}")


# What librdkafka reports (through error_cb) when the broker answered but refused us: credentials or TLS.
# Retrying cannot help, so at start they are configuration errors naming the setting to fix.
_REFUSALS = {
    KafkaError._AUTHENTICATION: "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: the broker refused the credentials",
    KafkaError._SSL: "KAFKA_SSL_CA_LOCATION: TLS with the broker failed",
}
_METADATA_POLL_S = 1.0


def broker_metadata(config: Mapping[str, Any], timeout_s: float, topic: str | None = None) -> ClusterMetadata:
    """Cluster metadata (of `topic` alone when given). Raises ConfigError as soon as the broker refuses our
    credentials or its certificate is not trusted, BrokerUnavailableError when no broker answers in time."""
    refusals: list[KafkaError] = []
    try:
        admin = AdminClient({**config, "error_cb": refusals.append})  # type: ignore[dict-item]
    except KafkaException as exc:  # librdkafka refused a property: only KAFKA_EXTRA__* can name an unknown one
        raise ConfigError(f"KAFKA_EXTRA: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(topic=topic, timeout=min(_METADATA_POLL_S, timeout_s))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: the reason behind "broker transport failure", if any
            for error in refusals:
                if error.code() in _REFUSALS:
                    raise ConfigError(f"{_REFUSALS[error.code()]}: {error.str()}") from None
            if time.monotonic() >= deadline:
                reason = refusals[-1].str() if refusals else exc.args[0].str()
                raise BrokerUnavailableError(f"kafka: no broker answered in {timeout_s:.0f} s: {reason}") from None


def ensure_topic(config: Mapping[str, Any], topic: str, partitions: int, timeout_s: float = 15.0) -> None:
    """Create `topic` if it does not exist (the dead-letter topic); an existing topic is left alone."""
    metadata = broker_metadata(config, timeout_s)
    if topic in metadata.topics and metadata.topics[topic].error is None:
        return
    admin = AdminClient(dict(config))  # held while the future runs: a collected client ends the request
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)], request_timeout=timeout_s)
    try:
        futures[topic].result(timeout=timeout_s)
        log.info("created topic", extra={"topic": topic, "partitions": partitions})
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise BrokerUnavailableError(f"kafka: cannot create topic {topic}: {exc.args[0].str()}") from None


def partition_count(config: Mapping[str, Any], topic: str, timeout_s: float = 15.0) -> int | None:
    """Partitions of `topic`, or None when it does not exist yet."""
    metadata = broker_metadata(config, timeout_s, topic)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        return None
    return len(described.partitions)
