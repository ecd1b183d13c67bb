"""Dead letters: publish poison records with the contract's headers, acknowledged before any commit.

The producer is idempotent (acks=all), and a letter still in flight when a publish times out is not
produced again on the retry of the same batch, so a slow broker does not double dead letters.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any

from confluent_kafka import KafkaError, Message

from consumer.clock import Clock
from consumer.errors import BrokerUnavailableError
from consumer.kafka import headers as h
from consumer.kafka.errors import delivery_failure
from consumer.kafka.produce import blocking_produce, idempotent_producer
from consumer.records import DeadLetter

log = logging.getLogger(__name__)

Coordinates = tuple[str, int, int]


class _State(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


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
    kept: list[tuple[str, str | bytes | None]] = [
        (name, value if value is not None else b"") for name, value in record.headers if name not in ours
    ]
    return kept + [(name, value.encode("utf-8")) for name, value in ours.items()]


def _int_or_zero(value: bytes) -> int:
    try:
        return int(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 0


DEAD_LETTER_LINGER_MS = 5  # dead letters are few and a batch waits for them: barely batched


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
        self._last_error: KafkaError | None = None

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        failed_at = dt.datetime.fromtimestamp(self._clock.wall(), tz=dt.UTC)
        wanted = []
        for letter in letters:
            record = letter.record
            coordinates = (record.topic, record.partition, record.offset)
            wanted.append(coordinates)
            if self._states.get(coordinates) in (None, _State.FAILED):
                self._produce(letter, coordinates, failed_at)
        self._await(wanted)

    def _produce(self, letter: DeadLetter, coordinates: Coordinates, failed_at: dt.datetime) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            self._states[coordinates] = _State.FAILED if error else _State.DELIVERED
            if error:
                self._last_error = error

        self._states[coordinates] = _State.PENDING
        blocking_produce(
            self._producer, self._topic, "dead-letter produce", value=letter.record.value, key=letter.record.key,
            headers=dead_letter_headers(letter, self._group_id, failed_at, self._redact), on_delivery=delivered,
        )

    def _await(self, wanted: list[Coordinates]) -> None:
        deadline = self._clock.monotonic() + self._flush_timeout_s
        while any(self._states.get(c) is _State.PENDING for c in wanted):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(f"dead-letter topic {self._topic}: not acknowledged in time")
            self._producer.flush(min(remaining, 1.0))
        failed = [c for c in wanted if self._states.get(c) is _State.FAILED]
        if failed:
            raise delivery_failure(self._last_error, len(failed), "dead-letter delivery")
        for coordinates in wanted:
            del self._states[coordinates]

    def close(self) -> None:
        remaining = self._producer.flush(5.0)
        if remaining:
            log.warning("dead-letter producer closed with undelivered records", extra={"count": remaining})
