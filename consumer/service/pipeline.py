"""Pipeline.process(batch): decode, write, dead-letter; imports no Kafka and no SQL (an import-linter contract).

Thread-agnostic on purpose: the runner calls it on a worker thread so polling never waits on the sink.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.clock import Clock
from consumer.decode.decoder import DecodedBatch, Decoder
from consumer.errors import RecordRejectedError
from consumer.records import Batch, BatchResult, DeadLetter, DecodedRecord, Stage, TopicCounts
from consumer.roles import DeadLetterSink, Sink
from consumer.service.guard import DlqGuard


@dataclass(frozen=True, slots=True)
class Collapsed:
    """A batch's records with one per idempotency key; `runners_up` are the others, best first."""

    winners: list[DecodedRecord]
    runners_up: dict[str, list[DecodedRecord]]


def collapse_duplicates(records: Sequence[DecodedRecord], upsert: bool) -> Collapsed:
    """`insert` keeps the first (lowest offset) record per key, `upsert` the last (highest).
    Hot path: one dict lookup per record; lists are made only for keys that repeat."""
    winners: dict[str, DecodedRecord] = {}
    runners_up: dict[str, list[DecodedRecord]] = {}
    for record in records:
        kept = winners.get(record.key)
        if kept is None:
            winners[record.key] = record
        elif upsert:  # the newer record wins; the one it displaces becomes the best runner-up
            runners_up.setdefault(record.key, []).insert(0, kept)
            winners[record.key] = record
        else:
            runners_up.setdefault(record.key, []).append(record)
    return Collapsed(list(winners.values()), runners_up)


def dead_positions(batch: Batch, letters: Sequence[DeadLetter]) -> list[int]:
    """Where in the batch the dead letters sit, for the guard's window; an index of the batch is built only
    when there are dead letters, so a clean batch costs nothing here."""
    if not letters:
        return []
    index = {(r.topic, r.partition, r.offset): i for i, r in enumerate(batch.records)}
    return [index[(d.record.topic, d.record.partition, d.record.offset)] for d in letters]


@dataclass(slots=True)
class _Written:
    sunk: Counter[str]
    duplicate: Counter[str]
    rejected: list[DeadLetter]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A batch decoded ahead of its write: the runner decodes the next batch on the polling thread while
    the one before is in the database (whose waits release the GIL)."""

    batch: Batch
    records: DecodedBatch
    collapsed: Collapsed
    seconds: float


class BatchProcessor(Protocol):
    """What the runner hands a closed batch to, on its worker thread, one batch at a time."""

    def decode(self, batch: Batch) -> Decoded:
        """CPU only, any thread, writes nothing; raises TransientError when the schema registry is away."""
        ...

    def process(self, batch: Batch, decoded: Decoded | None = None) -> BatchResult:
        """Write the batch (decoding it first unless `decoded` is given) and publish its dead letters, then
        return its next offsets. Safe to repeat after a failure. Raises TransientError (retry later),
        GuardTrippedError (hold) or PermanentError (stop)."""
        ...


class Pipeline:
    def __init__(
        self, decoder: Decoder, sink: Sink, dead_letters: DeadLetterSink, guard: DlqGuard, upsert: bool,
        clock: Clock,
    ) -> None:
        self._decoder = decoder
        self._sink = sink
        self._dead_letters = dead_letters
        self._guard = guard
        self._upsert = upsert
        self._clock = clock

    def decode(self, batch: Batch) -> Decoded:
        """Decode, setting poison aside, and collapse duplicate keys."""
        started = self._clock.monotonic()
        records = self._decoder.decode_batch(batch.records)
        collapsed = collapse_duplicates(records.decoded, self._upsert)
        return Decoded(batch, records, collapsed, self._clock.monotonic() - started)

    def process(self, batch: Batch, decoded: Decoded | None = None) -> BatchResult:
        """1. decode (unless done ahead), setting poison aside and collapsing duplicate keys  2. ask the
        dead-letter guard, before anything is written  3. write the rest, isolating rows the database
        rejects  4. ask the guard again, now with the rejected rows  5. publish poison to the dead-letter
        topic and wait for its acknowledgement  6. hand back next offsets; the runner commits them only
        after 3 and 5 succeeded. Transient and fatal errors propagate, and so does the guard's refusal; only
        record-level failures are dead-lettered."""
        if decoded is None or decoded.batch is not batch:
            decoded = self.decode(batch)
        self._guard.check(len(batch), dead_positions(batch, decoded.records.dead_letters))
        decoded_at = self._clock.monotonic()
        self._sink.prepare(self._decoder.columns())
        written = self._write(decoded.collapsed)
        sunk_at = self._clock.monotonic()
        poison = decoded.records.dead_letters + written.rejected
        positions = dead_positions(batch, poison)
        self._guard.check(len(batch), positions)
        self._dead_letters.publish(poison)
        self._guard.record(len(batch), positions)
        counts: dict[str, TopicCounts] = {}
        kinds: Counter[tuple[str, str]] = Counter()
        for topic, n in decoded.records.skipped.items():
            counts.setdefault(topic, TopicCounts()).skipped += n
        for letter in poison:
            counts.setdefault(letter.record.topic, TopicCounts()).dlq += 1
            kinds[(letter.stage.value, letter.error_class)] += 1
        for topic, n in written.sunk.items():
            counts.setdefault(topic, TopicCounts()).sunk += n
        for topic, n in written.duplicate.items():
            counts.setdefault(topic, TopicCounts()).duplicate += n
        return BatchResult(
            batch=batch, next_offsets=batch.next_offsets(), counts=counts, dead_letters=len(poison),
            dead_letter_kinds=dict(kinds),
            decode_seconds=decoded.seconds, sink_seconds=sunk_at - decoded_at,
        )

    def _write(self, collapsed: Collapsed) -> _Written:
        written = _Written(Counter(), Counter(), [])
        pending = collapsed.winners
        runners_up = {key: list(group) for key, group in collapsed.runners_up.items()}
        while pending:
            rejected = self._write_isolating(pending, written)
            # A rejected row does not win its key: the next record with that key gets its turn.
            pending = [runners_up[r.key].pop(0) for r, _ in rejected if runners_up.get(r.key)]
            written.rejected.extend(
                DeadLetter(r.raw, Stage.SINK, type(err).__name__, str(err)) for r, err in rejected
            )
        for group in runners_up.values():
            for record in group:
                written.duplicate[record.raw.topic] += 1
        return written

    def _write_isolating(
        self, records: list[DecodedRecord], written: _Written
    ) -> list[tuple[DecodedRecord, RecordRejectedError]]:
        """Write `records`; when the database rejects the batch for a row's sake, bisect down to the bad
        rows (O(k log n) transactions for k bad rows in n) and return them with their errors."""
        try:
            result = self._sink.write(records)
        except RecordRejectedError as exc:
            if len(records) == 1:
                return [(records[0], exc)]
            middle = len(records) // 2
            return self._write_isolating(records[:middle], written) + self._write_isolating(
                records[middle:], written
            )
        written.sunk.update(result.written)
        written.duplicate.update(result.duplicates())
        return []
