"""Decoding a batch: raw values into rows with their idempotency keys, through one `ValueDecoder` (Avro in
consumer.decode.avro, JSON in consumer.decode.json_values). Poison is set aside with its reason, never raised
past here; tombstones are counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.decode.keys import Fields, KeyOf
from consumer.decode.schema import Converter
from consumer.errors import MissingKeyError, PoisonRecordError, RecordTooLargeError
from consumer.records import ColumnSpec, DeadLetter, DecodedRecord, RawRecord, Stage


class ValueDecoder(Protocol):
    """Turns one value into (fields for the key, the row's cells); raises DecodeError for poison,
    TransientError when a dependency (the registry) is down."""

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]: ...

    def columns(self) -> list[ColumnSpec]:
        """The value columns known so far; grows when a registry schema adds fields."""
        ...


def convert(row: dict[str, Any], converters: Mapping[str, Converter]) -> dict[str, Any]:
    """The decoded value's fields made into the row's cells, in place (only columns that need it)."""
    for name, to_cell in converters.items():
        row[name] = to_cell(row.get(name))
    return row


@dataclass(slots=True)
class DecodedBatch:
    decoded: list[DecodedRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


class Decoder:
    """A batch's raw records into rows with keys; tombstones counted, poison set aside."""

    def __init__(self, values: ValueDecoder, key_of: KeyOf, key_spec: str, max_record_bytes: int) -> None:
        self._values = values
        self._key_of = key_of
        self._key_spec = key_spec
        self._max_record_bytes = max_record_bytes

    def columns(self) -> list[ColumnSpec]:
        return self._values.columns()

    def decode_batch(self, records: Sequence[RawRecord]) -> DecodedBatch:
        out = DecodedBatch()
        decode, key_of, limit = self._values.decode, self._key_of, self._max_record_bytes
        for raw in records:
            value = raw.value
            if value is None:
                out.skipped[raw.topic] += 1
                continue
            try:
                if len(value) > limit:
                    raise RecordTooLargeError(f"value of {len(value)} bytes exceeds MAX_RECORD_BYTES={limit}")
                fields, row = decode(value)
                key = key_of(raw, fields)
                if not key:
                    raise MissingKeyError(f"idempotency key ({self._key_spec}) is missing, null or empty")
            except PoisonRecordError as exc:
                out.dead_letters.append(DeadLetter(raw, Stage(exc.stage), type(exc).__name__, str(exc)))
            else:
                out.decoded.append(DecodedRecord(raw, key, row))
        return out
