"""KafkaSource: the only door to `confluent_kafka.Consumer` for consuming.

Auto-commit and auto offset store are off: offsets are committed by us, after the sink. The poll loop
commits asynchronously (`send_commit`): the broker's answer comes back inside a later `poll()`, so a broker
outage never holds the loop (a synchronous commit waits for the group coordinator: up to the session
timeout with the connection refused, until `socket.timeout.ms` with it blackholed, and a consume() on
another thread waits as long, measured with librdkafka 2.16). Only a revoke callback, which must not poll, commits synchronously.
Assignment is cooperative-sticky; the rebalance callbacks run inside `poll()` on the polling thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition

from consumer.errors import FatalError
from consumer.kafka.connectivity import BrokerConnectivity
from consumer.kafka.errors import client_construction, translate
from consumer.records import CommitOutcome, RawRecord, TopicPartition
from consumer.roles import RebalanceListener

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
    def __init__(
        self, config: Mapping[str, Any], topics: list[str], connectivity: BrokerConnectivity | None = None
    ) -> None:
        self._topics = topics
        self._connectivity = connectivity
        self._fatal: KafkaError | None = None
        self._group_committed: dict[TopicPartition, int] = {}
        self._commit_answers: list[CommitOutcome] = []  # answers to send_commit, served inside poll
        self._commits_sent: deque[dict[TopicPartition, int]] = deque()  # librdkafka answers them in order
        with client_construction():
            self._consumer = Consumer({
                **config, "error_cb": self._on_error, "stats_cb": self._on_stats, "on_commit": self._on_commit,
            })

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        elif self._connectivity is not None and self._connectivity.error(error):
            return  # a connection attempt failed: the connectivity state says it once, not once per retry
        log.warning("kafka client error", extra={"error": error.str(), "code": error.name()})

    def _on_commit(self, error: KafkaError | None, partitions: list[KafkaPartition]) -> None:
        """The answer to an asynchronous commit (inside poll). Fatal errors are raised by the next poll."""
        if error is not None and error.fatal():
            self._fatal = error
            return
        sent = self._commits_sent.popleft() if self._commits_sent else {}
        if error is not None and not partitions:  # refused as a whole: every partition it asked for
            partitions = [KafkaPartition(t, p, o) for (t, p), o in sent.items()]
        self._commit_answers.append(_outcome(partitions, error))

    def _on_stats(self, report: str) -> None:
        """librdkafka statistics (every `statistics.interval.ms`, inside poll): whether a broker is up, and
        each partition's committed offset as the group knows it, or its low watermark when it has none yet."""
        try:
            parsed = json.loads(report)
        except json.JSONDecodeError:
            return
        if self._connectivity is not None:
            self._connectivity.statistics(parsed.get("brokers", {}))
        topics = parsed.get("topics", {})
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
            raise translate(exc) from None
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_to_raw(message))
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                # a subscribed topic that does not exist (yet): the service's TopicWatch reports it once
                log.debug("subscribed topic not available", extra={"error": error.str(), "topic": message.topic()})
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

    def send_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit asynchronously: the answer is one CommitOutcome in `commit_answers()` after a later poll
        (or none at all while the broker is away: the caller bounds its wait). Fatal errors raise."""
        if not offsets:
            return
        request = [KafkaPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=request, asynchronous=True)
            self._commits_sent.append(dict(offsets))
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                raise FatalError(f"kafka commit: {error.str()}") from None
            self._commit_answers.append(CommitOutcome(
                refused={tp: error.str() for tp in offsets}, during_rebalance=error.code() in _REBALANCE_CODES
            ))

    def commit_answers(self) -> list[CommitOutcome]:
        """The answers to `send_commit` received since the last call, in the order they came."""
        answers, self._commit_answers = self._commit_answers, []
        return answers

    def commit(self, offsets: Mapping[TopicPartition, int]) -> CommitOutcome:
        """Commit synchronously (inside a revoke callback, which must not poll). A refusal (rebalance,
        broker away) is returned, not raised: the offsets stay pending and the records are replayed
        harmlessly if the partition moves. Fatal errors raise."""
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
        return _outcome(result or [], None)

    def high_watermark(self, partition: TopicPartition) -> int | None:
        """The high watermark last seen in a fetch response (no broker round trip)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(KafkaPartition(*partition), cached=True)
        except KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    def close(self, timeout_s: float) -> None:
        """Leave the group, waiting at most `timeout_s`. Offsets are not committed here; the runner committed
        what was handled. librdkafka's close did not return within minutes with the broker's path
        blackholed, so it runs on a daemon thread that is left behind if it has not returned in time
        (the group then drops us after the session timeout)."""
        closing = threading.Thread(target=self._close, name="kafka-close", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            log.warning("consumer close did not finish in time; the group drops us after its session timeout",
                        extra={"timeout_s": timeout_s})

    def _close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})


def _outcome(partitions: list[KafkaPartition], error: KafkaError | None) -> CommitOutcome:
    """A commit's per-partition answer; a partition without its own error shares the request's `error`."""
    committed: dict[TopicPartition, int] = {}
    refused: dict[TopicPartition, str] = {}
    rebalance = False
    for partition in partitions:
        key = (partition.topic, partition.partition)
        failed = partition.error if partition.error is not None else error
        if failed is not None:
            refused[key] = failed.str()
            rebalance = rebalance or failed.code() in _REBALANCE_CODES
        else:
            committed[key] = partition.offset
    return CommitOutcome(committed, refused, rebalance)
