"""Decoding a batch: raw values into rows with their idempotency keys, through one `ValueDecoder` (Avro in
consumer.decode.avro, JSON in consumer.decode.json_values). Poison is set aside with its reason, never raised
past here; tombstones are counted. One record's failure, whatever a library raised on its bytes, is that
record's dead letter; only a dependency's failure (the registry down) leaves as a TransientError.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.decode.keys import Fields, KeyOf
from consumer.decode.schema import Converter
from consumer.errors import (
    MissingKeyError,
    PoisonRecordError,
    RecordTooLargeError,
    TransformError,
)
from consumer.records import ColumnSpec, DeadLetter, DecodedRecord, RawRecord, Stage

# What a library may raise on one hostile value (a recursion or an allocation too deep or too large, bad
# UTF-8 or a lone surrogate, a number out of range, bytes that are no value): that record's failure, never the
# batch's. An error of ours (a ConsumerError) or anything else keeps its meaning; a wave of these is held by
# the dead-letter guard, not written off.
VALUE_FAILURES = (
    ArithmeticError, LookupError, ValueError, TypeError, AttributeError, EOFError, RecursionError, MemoryError,
    struct.error,
)


class ValueDecoder(Protocol):
    """Turns one value into (fields for the key, the row's cells); raises DecodeError for poison,
    TransientError when a dependency (the registry) is down."""

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]: ...

    def columns(self) -> list[ColumnSpec]:
        """The value columns known so far; grows when a registry schema adds fields."""
        ...

    def table_at_start(self, names: frozenset[str]) -> None:
        """The table's columns at start: a writer schema's new field must not equal one of them but for
        case, and under SINK_SCHEMA_EVOLUTION=none writer schemas may use only them (a no-op for columns
        that come from SCHEMA_FILE, ours)."""


def convert(row: dict[str, Any], converters: Mapping[str, Converter]) -> dict[str, Any]:
    """The decoded value's fields made into the row's cells, in place (only columns that need it). Whatever a
    converter raises on this one value (a lone surrogate, a number too large, a value nested too deeply for
    the JSON encoder) is this record's TransformError."""
    for name, to_cell in converters.items():
        try:
            row[name] = to_cell(row.get(name))
        except PoisonRecordError:
            raise
        except VALUE_FAILURES as exc:
            raise TransformError(f"field {name!r}: {type(exc).__name__}: {exc}") from None
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

    def table_at_start(self, names: frozenset[str]) -> None:
        self._values.table_at_start(names)

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
            except VALUE_FAILURES as exc:  # a library's failure on this one value's bytes is this record's
                out.dead_letters.append(
                    DeadLetter(raw, Stage.DECODE, type(exc).__name__, f"{type(exc).__name__}: {exc}")
                )
            else:
                out.decoded.append(DecodedRecord(raw, key, row))
        return out
