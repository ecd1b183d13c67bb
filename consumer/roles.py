"""The roles the runner and the pipeline drive, their contracts written once: where records come from
(`Source`, calling back a `RebalanceListener`), where rows go (`Sink`), where poison goes (`DeadLetterSink`).
consumer.kafka and consumer.sql implement them; only consumer.service.app and consumer.service.components meet
the concrete classes, so the loop itself imports no Kafka and no SQL. A leaf: imports only consumer.records."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from consumer.records import (
    ColumnSpec,
    CommitOutcome,
    DeadLetter,
    DecodedRecord,
    RawRecord,
    TopicPartition,
    WriteResult,
)


class RebalanceListener(Protocol):
    """Called on the polling thread, inside `Source.poll()`."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Return only after the records in hand for these partitions are written and committed."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop records in hand for these partitions, uncommitted."""


class Source(Protocol):
    """Where records come from, called only on the polling thread. `poll` runs the rebalance callbacks and
    serves the answers to `send_commit`; nothing here blocks longer than its timeout except `commit`
    (synchronous, for a revoke callback, which must not poll)."""

    def subscribe(self, listener: RebalanceListener) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` records of unpaused partitions; raises FatalError or BrokerUnavailableError."""
        ...

    def pause(self, partitions: Collection[TopicPartition]) -> None: ...

    def resume(self, partitions: Collection[TopicPartition]) -> None: ...

    def send_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit asynchronously; the answer shows up in `commit_answers()` after a later poll, or never
        while the broker is away; raises FatalError."""
        ...

    def commit_answers(self) -> list[CommitOutcome]:
        """The answers to `send_commit` served since the last call, in order (each taken once)."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> CommitOutcome:
        """Commit synchronously; a refusal is returned, not raised; raises FatalError."""
        ...

    def high_watermark(self, partition: TopicPartition) -> int | None: ...

    def group_committed(self, partition: TopicPartition) -> int | None: ...

    def close(self, timeout_s: float) -> None:
        """Leave the group, returning after at most `timeout_s` whether or not the broker answered."""
        ...


class Sink(Protocol):
    """Where batches land. Called from one thread at a time; every method may block on the database."""

    def prepare(self, columns: Sequence[ColumnSpec]) -> None:
        """Create the table or add nullable columns for new fields; a no-op when nothing changed.
        Raises FatalError (cannot create/alter) or SinkUnavailableError."""

    def write(self, records: Sequence[DecodedRecord]) -> WriteResult:
        """Write one batch in one transaction; keys are unique within the call; safe to repeat.
        Raises SinkUnavailableError, RecordRejectedError (some row is bad) or FatalError."""

    def ping(self) -> None:
        """Answer when the database does; raises like `write`."""

    def column_names(self) -> frozenset[str] | None:
        """The table's columns as they are now, None when there is no table yet; raises like `write`."""

    def cancel(self) -> None:
        """Called from another thread (a stop that ran out of time): ask the database to abandon the `write`
        in progress, which then rolls back and raises WriteCancelledError. Returns within seconds, also when
        the database does not answer; does nothing when no write is running."""

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Return once every letter is acknowledged by the broker; raise BrokerUnavailableError (retry the
        batch) or FatalError. Safe to call again with the same letters."""

    def close(self) -> None: ...
