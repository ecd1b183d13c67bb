"""Dead letters: publish poison records with the contract's headers, acknowledged before any commit.

The producer is idempotent (acks=all), and a letter still in flight when a publish times out is not
produced again on the retry of the same batch, so a slow broker does not double dead letters.
"""

from __future__ import annotations

import datetime as dt
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.clock import Clock
from consumer.errors import BrokerUnavailableError, FatalError, GuardTrippedError
from consumer.records import DeadLetter

log = logging.getLogger(__name__)

HEADER_PREFIX = "dlq."
Coordinates = tuple[str, int, int]


class DeadLetterSink(Protocol):
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Return once every letter is acknowledged by the broker; raise BrokerUnavailableError (retry the
        batch) or FatalError. Safe to call again with the same letters."""

    def close(self) -> None: ...


class _State(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def dead_letter_headers(
    letter: DeadLetter, group_id: str, failed_at: dt.datetime
) -> list[tuple[str, str | bytes | None]]:
    """Original headers plus this failure's dlq.* headers. An earlier failure's values of those headers
    are replaced (its `dlq.attempts` counted on); other headers, `dlq.replay.count` included, stay."""
    record = letter.record
    previous_attempts = 0
    for name, value in record.headers:
        if name == "dlq.attempts" and value:
            previous_attempts = _int_or_zero(value)
    ours = {
        "dlq.original.topic": record.topic,
        "dlq.original.partition": str(record.partition),
        "dlq.original.offset": str(record.offset),
        "dlq.original.timestamp": str(record.timestamp_ms),
        "dlq.stage": letter.stage.value,
        "dlq.error.class": letter.error_class,
        "dlq.error.message": letter.message[:2000],
        "dlq.consumer.group": group_id,
        "dlq.failed.at": failed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "dlq.attempts": str(previous_attempts + letter.attempts),
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


class KafkaDeadLetterPublisher:
    def __init__(
        self, config: Mapping[str, Any], topic: str, group_id: str, clock: Clock, flush_timeout_s: float = 30.0
    ) -> None:
        self._producer = Producer({**config, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
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
        while True:
            try:
                self._producer.produce(
                    self._topic, value=letter.record.value, key=letter.record.key,
                    headers=dead_letter_headers(letter, self._group_id, failed_at), on_delivery=delivered,
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then try again
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise FatalError(f"dead-letter produce: {exc.args[0].str()}") from None

    def _await(self, wanted: list[Coordinates]) -> None:
        deadline = self._clock.monotonic() + self._flush_timeout_s
        while any(self._states.get(c) is _State.PENDING for c in wanted):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(f"dead-letter topic {self._topic}: not acknowledged in time")
            self._producer.flush(min(remaining, 1.0))
        failed = [c for c in wanted if self._states.get(c) is _State.FAILED]
        if failed:
            error = self._last_error
            if error is not None and error.fatal():
                raise FatalError(f"dead-letter delivery: {error.str()}")
            raise BrokerUnavailableError(
                f"dead-letter delivery failed for {len(failed)} records: {error.str() if error else 'unknown'}"
            )
        for coordinates in wanted:
            del self._states[coordinates]

    def close(self) -> None:
        remaining = self._producer.flush(5.0)
        if remaining:
            log.warning("dead-letter producer closed with undelivered records", extra={"count": remaining})


@dataclass(frozen=True, slots=True)
class _Judged:
    """A batch the guard let through: its size and the sorted positions of its dead letters in it."""

    size: int
    dead_positions: Sequence[int]

    def dead_in_last(self, records: int) -> int:
        return len(self.dead_positions) - bisect_left(self.dead_positions, self.size - records)


class DlqGuard:
    """A bad deploy upstream or a wrong schema must not empty a topic into the dead-letter queue
    (arroyo's DlqLimit). Before a batch's dead letters go out, it judges the most recent `min_records`
    records processed, all outcomes counted, this batch included (the whole batch when it is larger):
    a share of dead letters above `max_ratio` trips it, and it stays tripped until a restart.

    Work is per batch and per dead letter, never per record: batches are kept whole in the window, with
    the positions of their dead letters, so the oldest one can be cut exactly at the window's edge."""

    def __init__(self, max_ratio: float, min_records: int) -> None:
        self._max_ratio = max_ratio
        self._min_records = min_records
        self._window: deque[_Judged] = deque()  # newest last; the oldest is dropped once it is not needed
        self._window_records = 0
        self.tripped = False

    def check(self, batch_size: int, dead_positions: Sequence[int]) -> None:
        """Raise GuardTrippedError (and trip for good) when this batch would take the window over the
        ratio; the batch is not remembered, so it may be checked again with more dead letters."""
        if self.tripped:
            raise GuardTrippedError("the dead-letter guard has tripped; restart after fixing the cause")
        seen, dead = batch_size, len(dead_positions)
        for judged in reversed(self._window):
            if seen >= self._min_records:
                break
            taken = min(judged.size, self._min_records - seen)
            seen += taken
            dead += judged.dead_in_last(taken)
        if seen >= self._min_records and dead > self._max_ratio * seen:
            self.tripped = True
            raise GuardTrippedError(
                f"{dead} of the last {seen} records would be dead-lettered, over DLQ_MAX_RATIO="
                f"{self._max_ratio}; nothing more is written, dead-lettered or committed until a restart"
            )

    def record(self, batch_size: int, dead_positions: Sequence[int]) -> None:
        """Remember a batch that passed `check` and whose dead letters went out."""
        self._window.append(_Judged(batch_size, sorted(dead_positions)))
        self._window_records += batch_size
        while self._window_records - self._window[0].size >= self._min_records:
            self._window_records -= self._window.popleft().size
