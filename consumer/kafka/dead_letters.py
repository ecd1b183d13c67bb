"""Dead letters: publish poison records with the contract's headers, acknowledged before any commit.

The producer is idempotent (acks=all), and a letter still in flight when a publish times out is not
produced again on the retry of the same batch, so a slow broker does not double dead letters.

A dead letter is never a reason to stop: the producer's message.max.bytes fits MAX_RECORD_BYTES plus
headroom for key and headers, and a letter the broker (or librdkafka) still refuses as too large is sent
again alone (librdkafka may have packed it with others into one batch the topic refuses), then without its
value, then bare (no value, key or original headers); `dlq.value.dropped` and friends say so and give the
dropped parts' sizes and SHA-256 digests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any

from confluent_kafka import KafkaError, Message

from consumer.clock import Clock
from consumer.errors import BrokerUnavailableError, FatalError
from consumer.kafka import headers as h
from consumer.kafka.config import DEAD_LETTER_LINGER_MS
from consumer.kafka.errors import delivery_failure
from consumer.kafka.produce import MessageTooLargeError, blocking_produce, idempotent_producer, too_large
from consumer.records import DeadLetter

log = logging.getLogger(__name__)

Coordinates = tuple[str, int, int]


class _State(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    TOO_LARGE = "too large"


class Shape(Enum):
    """How much of a dead letter is published: each refusal for size takes the next, smaller one."""

    WHOLE = "whole"
    WITHOUT_VALUE = "without value"
    BARE = "bare"  # our dlq.* headers alone: no value, no key, no original headers


_SMALLER = {Shape.WHOLE: Shape.WITHOUT_VALUE, Shape.WITHOUT_VALUE: Shape.BARE}


def _unchanged(text: str) -> str:
    return text


def dead_letter_headers(
    letter: DeadLetter, group_id: str, failed_at: dt.datetime, redact: Callable[[str], str] = _unchanged
) -> list[tuple[str, str | bytes | None]]:
    """Original headers plus this failure's dlq.* headers. An earlier failure's values of those headers
    are replaced (its `dlq.attempts` counted on); other headers, `dlq.replay.count` included, stay. The error
    message is redacted (a driver's message may quote a connection string) before it is cut, so no cut
    leaves half a secret."""
    record = letter.record
    previous_attempts = 0
    for name, value in record.headers:
        if name == h.ATTEMPTS and value:
            previous_attempts = _int_or_zero(value)
    ours = {
        h.ORIGINAL_TOPIC: record.topic,
        h.ORIGINAL_PARTITION: str(record.partition),
        h.ORIGINAL_OFFSET: str(record.offset),
        h.ORIGINAL_TIMESTAMP: str(record.timestamp_ms),
        h.STAGE: letter.stage.value,
        h.ERROR_CLASS: letter.error_class,
        h.ERROR_MESSAGE: redact(letter.message)[:2000],
        h.CONSUMER_GROUP: group_id,
        h.FAILED_AT: failed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        h.ATTEMPTS: str(previous_attempts + letter.attempts),
    }
    # A record's own dlq.value.dropped & co. would make `dlq replay` refuse a whole letter: never kept.
    kept: list[tuple[str, str | bytes | None]] = [
        (name, value if value is not None else b"") for name, value in record.headers
        if name not in ours and name not in h.DROPPED
    ]
    return kept + [(name, value.encode("utf-8")) for name, value in ours.items()]


def dead_letter_message(
    letter: DeadLetter, group_id: str, failed_at: dt.datetime, shape: Shape,
    redact: Callable[[str], str] = _unchanged,
) -> dict[str, Any]:
    """The key, value and headers to publish for `letter` in `shape`."""
    record = letter.record
    headers = dead_letter_headers(letter, group_id, failed_at, redact)
    if shape is Shape.WHOLE:
        return {"key": record.key, "value": record.value, "headers": headers}
    dropped = [(h.VALUE_DROPPED, b"true"), *_size_and_digest(h.VALUE_SIZE, h.VALUE_SHA256, record.value or b"")]
    key = record.key
    if shape is Shape.BARE:
        kept = [(name, value) for name, value in headers if name in h.WRITTEN or name == h.REPLAY_COUNT]
        dropped.append((h.HEADERS_DROPPED, str(len(headers) - len(kept)).encode()))
        headers = kept
        if key is not None:
            dropped += [(h.KEY_DROPPED, b"true"), *_size_and_digest(h.KEY_SIZE, h.KEY_SHA256, key)]
            key = None
    return {"key": key, "value": None, "headers": headers + dropped}


def _size_and_digest(size_name: str, digest_name: str, data: bytes) -> list[tuple[str, str | bytes | None]]:
    return [(size_name, str(len(data)).encode()), (digest_name, hashlib.sha256(data).hexdigest().encode())]


def _int_or_zero(value: bytes) -> int:
    try:
        return int(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 0


class KafkaDeadLetterPublisher:
    def __init__(
        self, config: Mapping[str, Any], topic: str, group_id: str, clock: Clock, flush_timeout_s: float = 30.0,
        redact: Callable[[str], str] = _unchanged,
    ) -> None:
        self._producer = idempotent_producer(config, linger_ms=DEAD_LETTER_LINGER_MS)
        self._redact = redact
        self._topic = topic
        self._group_id = group_id
        self._clock = clock
        self._flush_timeout_s = flush_timeout_s
        self._states: dict[Coordinates, _State] = {}
        self._shapes: dict[Coordinates, Shape] = {}
        self._sent_alone: set[Coordinates] = set()  # refused for size when it was the only letter in flight
        self._last_error: KafkaError | None = None

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        failed_at = dt.datetime.fromtimestamp(self._clock.wall(), tz=dt.UTC)
        wanted: dict[Coordinates, DeadLetter] = {}
        for letter in letters:
            record = letter.record
            coordinates = (record.topic, record.partition, record.offset)
            wanted[coordinates] = letter
            if self._states.get(coordinates) in (None, _State.FAILED):
                self._produce(letter, coordinates, failed_at)
        self._await(wanted)
        # Refused for size: maybe only for the batch librdkafka packed it into, so alone first, then smaller.
        for coordinates, letter in wanted.items():
            while self._states.get(coordinates) is _State.TOO_LARGE:
                self._produce(letter, coordinates, failed_at)
                self._await({coordinates: letter})
        failed = [c for c in wanted if self._states.get(c) is _State.FAILED]
        if failed:
            raise delivery_failure(self._last_error, len(failed), "dead-letter delivery")
        for coordinates in wanted:
            del self._states[coordinates]
            self._shapes.pop(coordinates, None)
            self._sent_alone.discard(coordinates)

    def _produce(self, letter: DeadLetter, coordinates: Coordinates, failed_at: dt.datetime) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self._states[coordinates] = _State.DELIVERED
            elif too_large(error):
                self._states[coordinates] = _State.TOO_LARGE
            else:
                self._states[coordinates] = _State.FAILED
                self._last_error = error

        shape = self._next_shape(coordinates)
        self._states[coordinates] = _State.PENDING
        try:
            blocking_produce(
                self._producer, self._topic, "dead-letter produce", on_delivery=delivered,
                **dead_letter_message(letter, self._group_id, failed_at, shape, self._redact),
            )
        except MessageTooLargeError:  # librdkafka's own limit: sending it alone would not help
            self._states[coordinates] = _State.TOO_LARGE
            self._sent_alone.add(coordinates)

    def _next_shape(self, coordinates: Coordinates) -> Shape:
        """The shape to send now: the same again (alone this time) after a first refusal for size, the next
        smaller one after a refusal while alone."""
        shape = self._shapes.get(coordinates, Shape.WHOLE)
        if self._states.get(coordinates) is _State.TOO_LARGE:
            if coordinates not in self._sent_alone:
                self._sent_alone.add(coordinates)
            else:
                smaller = _SMALLER.get(shape)
                if smaller is None:
                    raise FatalError(
                        f"DLQ_TOPIC: {self._topic} refuses even a bare dead letter (no value, key or original "
                        f"headers) as too large; raise the topic's max.message.bytes"
                    )
                shape = smaller
                log.warning("dead letter too large for the dead-letter topic; publishing it %s", shape.value,
                            extra={"topic": coordinates[0], "partition": coordinates[1], "offset": coordinates[2],
                                   "dlq_topic": self._topic})
        self._shapes[coordinates] = shape
        return shape

    def _await(self, wanted: Mapping[Coordinates, DeadLetter]) -> None:
        deadline = self._clock.monotonic() + self._flush_timeout_s
        while any(self._states.get(c) is _State.PENDING for c in wanted):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(f"dead-letter topic {self._topic}: not acknowledged in time")
            self._producer.flush(min(remaining, 1.0))

    def close(self) -> None:
        remaining = self._producer.flush(5.0)
        if remaining:
            log.warning("dead-letter producer closed with undelivered records", extra={"count": remaining})
