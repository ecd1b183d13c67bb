"""Kafka helpers over confluent-kafka for tests: topics, producing with exact end offsets, reading back.

End offsets come from producer delivery reports (highest delivered offset + 1): exactly what this writer
put there, on any broker (Tansu, the demo's broker, answers ListOffsets(latest) wrongly once a partition
holds multi-record batches).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where it is defined; confluent_kafka.admin re-exports it untyped

from .waiting import wait_until

_REQUEST_TIMEOUT_S = 10.0
# How long read_all keeps consuming after reaching `expected`, to catch extra records (see read_all).
_DRAIN_POLLS = 2
_DRAIN_POLL_S = 0.3
# consume() returns at num_messages or at its timeout, whichever comes first: ask for no more than is missing,
# or every read would sit out the timeout. The drain asks for up to this many extras per call.
_DRAIN_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Msg:
    """A record to produce; `partition=None` lets the partitioner choose (by key hash when keyed)."""

    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ReadMsg:
    """A record read back; `headers` keeps the last value of a repeated name (a None value reads as b"")."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int


def admin(bootstrap: str) -> AdminClient:
    """An AdminClient that keeps librdkafka's connection chatter out of the test output."""
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def create_topic(
    bootstrap: str, name: str, partitions: int = 3, timeout_s: float = 30.0, config: Mapping[str, str] | None = None
) -> str:
    """Create `name` (with topic `config`, e.g. max.message.bytes) and wait until metadata shows every partition with a leader; returns `name`.

    CreateTopics returning is not enough: a producer or an assign() racing the metadata propagation would
    see an unknown topic or partition, and a test would fail (or lose records) for a reason of its own.
    """
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))], request_timeout=_REQUEST_TIMEOUT_S
    )
    futures[name].result(timeout=timeout_s)
    wait_until(
        lambda: _leaders(client, name) == partitions,
        timeout_s,
        f"topic {name} to show {partitions} partitions with leaders",
        ignore=(KafkaException,),
    )
    return name


def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has; fails the test if the broker does not know it."""
    count = _leaders(admin(bootstrap), topic)
    if count == 0:
        pytest.fail(f"topic {topic} is unknown to the broker")
    return count


def _leaders(client: AdminClient, topic: str) -> int:
    """Partitions of `topic` that have a leader (0 while the topic is unknown)."""
    metadata = client.list_topics(topic, timeout=_REQUEST_TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return 0
    return sum(1 for p in metadata.partitions.values() if p.error is None and p.leader >= 0)


class TopicWriter:
    """An idempotent producer for one topic that tracks cumulative end offsets across sends.

    `end_offsets` starts with every partition of the topic at 0, so it compares directly with
    `committed_offsets(...)` (which also reports 0 where nothing was committed).
    """

    def __init__(
        self, bootstrap: str, topic: str, flush_timeout_s: float = 30.0, config: Mapping[str, Any] | None = None
    ) -> None:
        self.topic = topic
        self._flush_timeout_s = flush_timeout_s
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **(config or {})}
        )
        self._end_offsets = dict.fromkeys(range(partition_count(bootstrap, topic)), 0)

    @property
    def end_offsets(self) -> dict[int, int]:
        """Per partition, highest delivered offset + 1 over all sends (a copy)."""
        return dict(self._end_offsets)

    @property
    def total(self) -> int:
        """The sum of end offsets: every record this writer (and any earlier one) put before them."""
        return sum(self._end_offsets.values())

    def send(self, messages: Iterable[Msg]) -> dict[int, int]:
        """Produce `messages` in order, flush, raise on any failed delivery; returns this send's end offsets."""
        reports: list[tuple[KafkaError | None, Message]] = []
        for msg in messages:
            self._producer.produce(
                self.topic, on_delivery=lambda err, m: reports.append((err, m)), **_produce_kwargs(msg)
            )
            self._producer.poll(0)  # serve delivery callbacks so a long send does not fill the local queue
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            raise RuntimeError(
                f"{remaining} records to {self.topic} still undelivered after {self._flush_timeout_s}s"
            )
        sent = _end_offsets_of(reports)
        for partition, end in sent.items():
            self._end_offsets[partition] = max(self._end_offsets.get(partition, 0), end)
        return sent


def produce(bootstrap: str, topic: str, messages: Iterable[Msg]) -> dict[int, int]:
    """Produce once with a throwaway writer; returns the end offsets of the partitions written to."""
    return TopicWriter(bootstrap, topic).send(messages)


def _produce_kwargs(msg: Msg) -> dict[str, Any]:
    """Only the arguments that are set: confluent-kafka rejects partition=None and timestamp=None."""
    kwargs: dict[str, Any] = {"value": msg.value, "key": msg.key}
    if msg.headers is not None:
        kwargs["headers"] = msg.headers
    if msg.partition is not None:
        kwargs["partition"] = msg.partition
    if msg.timestamp_ms is not None:
        kwargs["timestamp"] = msg.timestamp_ms
    return kwargs


def _end_offsets_of(reports: Sequence[tuple[KafkaError | None, Message]]) -> dict[int, int]:
    """Highest delivered offset + 1 per partition; raises listing the first failures if any delivery failed."""
    failures = [f"{m.partition()}: {err}" for err, m in reports if err is not None]
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries failed, first: {failures[:5]}")
    ends: dict[int, int] = {}
    for _, m in reports:
        partition, offset = m.partition(), m.offset()
        assert partition is not None and offset is not None
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


_COORDINATOR_NOT_READY = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                          KafkaError.COORDINATOR_NOT_AVAILABLE)


def _committed_when_coordinator_ready(consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
    """The committed offsets, or None while the group coordinator is still loading (a fresh Apache Kafka
    answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS until __consumer_offsets is online)."""
    try:
        return consumer.committed(partitions, timeout=_REQUEST_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and (error.retriable() or error.code() in _COORDINATOR_NOT_READY):
            return None
        raise


def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int | Iterable[int]
) -> dict[int, int]:
    """The group's committed offsets (the next offset it will read) per partition.

    A partition where the group never committed reports OFFSET_INVALID (-1001); it is returned as 0 because
    both mean "a new owner starts from the beginning" with auto.offset.reset=earliest, and 0 compares
    directly with `TopicWriter.end_offsets`. The throwaway consumer never subscribes, so it does not join
    the group and cannot trigger a rebalance of the service under test.
    """
    numbers = range(partitions) if isinstance(partitions, int) else list(partitions)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 0}
    )
    try:
        asked = [TopicPartition(topic, p) for p in numbers]
        found = wait_until(lambda: _committed_when_coordinator_ready(consumer, asked), _REQUEST_TIMEOUT_S * 3,
                           f"the group coordinator of {group} to answer", interval_s=0.2)
    finally:
        consumer.close()
    errors = [f"{tp.partition}: {tp.error}" for tp in found if tp.error is not None]
    if errors:
        raise RuntimeError(f"committed offsets of {group} on {topic} failed: {errors}")
    return {tp.partition: 0 if tp.offset == OFFSET_INVALID else tp.offset for tp in found}


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[ReadMsg]:
    """Every record of `topic` from the beginning, once at least `expected` arrived, ordered by partition, offset.

    assign() without a group commit keeps this reader invisible to the service's group. After `expected`
    records it keeps consuming for about a second so extra records (duplicates, stray dead letters) are
    returned too and a test can assert an exact count; fails the test with what was seen on timeout.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-all-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,  # the drain waits for the broker's answer; keep it short
            "log_level": 0,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partition_count(bootstrap, topic))])
        seen = _consume_until(consumer, expected, timeout_s, topic)
        for _ in range(_DRAIN_POLLS):
            seen += _consume_batch(consumer, _DRAIN_BATCH, _DRAIN_POLL_S)
    finally:
        consumer.close()
    return sorted(seen, key=lambda m: (m.partition, m.offset))


def _consume_until(consumer: Consumer, expected: int, timeout_s: float, topic: str) -> list[ReadMsg]:
    seen: list[ReadMsg] = []
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected:
        if time.monotonic() >= deadline:
            per_partition = dict(sorted(Counter(m.partition for m in seen).items()))
            pytest.fail(
                f"read {len(seen)} of {expected} records from {topic} in {timeout_s}s; "
                f"per partition: {per_partition}; last: {seen[-3:]}"
            )
        seen += _consume_batch(
            consumer, expected - len(seen), min(1.0, max(0.0, deadline - time.monotonic()))
        )
    return seen


def _consume_batch(consumer: Consumer, at_most: int, timeout_s: float) -> list[ReadMsg]:
    """One consume() call; a consumer error fails loudly instead of looking like "no records"."""
    batch: list[ReadMsg] = []
    for m in consumer.consume(num_messages=max(1, at_most), timeout=timeout_s):
        if m.error() is not None:
            raise KafkaException(m.error())
        batch.append(_read_msg(m))
    return batch


def _read_msg(m: Message) -> ReadMsg:
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    assert topic is not None and partition is not None and offset is not None
    raw_headers = m.headers() or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    return ReadMsg(
        topic=topic,
        partition=partition,
        offset=offset,
        key=m.key(),
        value=m.value(),
        headers={name: v if isinstance(v, bytes) else (v or "").encode() for name, v in pairs},
        timestamp=m.timestamp()[1],
    )
