"""Decoding: raw values into rows (Avro schemaless, Avro wire format via a registry, or JSON),
and each record's idempotency key. Poison is set aside with its reason, never raised past here.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastavro import parse_schema as _fastavro_parse
from fastavro import schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException

from consumer.decode.registry import SchemaNotFound, SchemaRegistryClient
from consumer.decode.schema import (
    AvroSchema,
    ColumnKind,
    ColumnSpec,
    Converter,
    bytes_text,
    cell_converters,
    columns_of,
    field_names,
    float_free_fields,
    key_text,
    merge_columns,
    reading_uuids_as_text,
    to_json_text,
)
from consumer.errors import (
    ConfigError,
    DecodeError,
    MissingKeyError,
    PoisonRecordError,
    RecordTooLargeError,
)
from consumer.records import DeadLetter, DecodedRecord, RawRecord, Stage

# What fastavro raises on bytes that are not a value of the schema (truncated, garbage, bad utf-8).
_AVRO_DATA_ERRORS = (
    EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, SchemaResolutionError,
)
_WIRE_MAGIC = 0
_WIRE_HEADER = 5  # magic byte + 4-byte big-endian schema id

Fields = Mapping[str, Any]


class ValueDecoder(Protocol):
    """Turns one value into (fields for the key, the row's cells); raises DecodeError for poison,
    TransientError when a dependency (the registry) is down."""

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]: ...

    def columns(self) -> list[ColumnSpec]:
        """The value columns known so far; grows when a registry schema adds fields."""
        ...


def _convert(row: dict[str, Any], converters: Mapping[str, Converter]) -> dict[str, Any]:
    for name, convert in converters.items():
        row[name] = convert(row.get(name))
    return row


def _read_avro(value: bytes, start: int, writer: AvroSchema, reader: AvroSchema | None) -> dict[str, Any]:
    buffer = io.BytesIO(value)
    buffer.seek(start)
    try:
        record = schemaless_reader(buffer, writer, reader)
    except _AVRO_DATA_ERRORS as exc:
        raise DecodeError(f"not a valid Avro value: {type(exc).__name__}: {exc}") from None
    if buffer.tell() != len(value):
        raise DecodeError(f"Avro value has {len(value) - buffer.tell()} trailing bytes")
    if not isinstance(record, dict):
        raise DecodeError("Avro value is not a record")
    return record


class SchemalessAvroDecoder:
    """Values written with `schemaless_writer` and the SCHEMA_FILE schema (no header)."""

    def __init__(self, schema: AvroSchema) -> None:
        self._schema = reading_uuids_as_text(schema)
        self._columns = columns_of(schema)
        self._converters = cell_converters(self._columns, float_free_fields(schema))

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        row = _convert(_read_avro(value, 0, self._schema, None), self._converters)
        return row, row

    def columns(self) -> list[ColumnSpec]:
        return self._columns


@dataclass(slots=True)
class _WriterSchema:
    writer: AvroSchema
    converters: Mapping[str, Converter]


class RegistryAvroDecoder:
    """Confluent wire format: magic byte 0, a 4-byte schema id, then the Avro body.

    Writer schemas come from the registry by id (cached); with a reader schema (SCHEMA_FILE) values are
    resolved against it, so producers may evolve their schema; without one, the table follows the
    writers and a new optional field adds a nullable column.
    """

    def __init__(
        self, registry: SchemaRegistryClient, reader: AvroSchema | None, initial: AvroSchema | None = None
    ) -> None:
        self._registry = registry
        self._reader_columns = columns_of(reader) if reader is not None else None
        self._reader_float_free = float_free_fields(reader) if reader is not None else None
        self._reader = reading_uuids_as_text(reader) if reader is not None else None  # as values are read
        base = reader if reader is not None else initial
        self._columns: dict[str, ColumnSpec] = {c.name: c for c in columns_of(base)} if base else {}
        self._writers: dict[int, _WriterSchema] = {}
        # The runner decodes the next batch on the polling thread while the worker may decode another:
        # loading a new schema id (and growing the columns) happens under this lock, once per id.
        self._loading = threading.Lock()

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        if len(value) < _WIRE_HEADER or value[0] != _WIRE_MAGIC:
            raise DecodeError("not Confluent wire format (magic byte 0 and a 4-byte schema id)")
        schema_id = int.from_bytes(value[1:_WIRE_HEADER], "big")
        entry = self._writers.get(schema_id) or self._load(schema_id)
        row = _convert(_read_avro(value, _WIRE_HEADER, entry.writer, self._reader), entry.converters)
        return row, row

    def columns(self) -> list[ColumnSpec]:
        return list(self._columns.values())

    def _load(self, schema_id: int) -> _WriterSchema:
        with self._loading:
            loaded = self._writers.get(schema_id)
            return loaded if loaded is not None else self._load_locked(schema_id)

    def _load_locked(self, schema_id: int) -> _WriterSchema:
        try:
            writer = _fastavro_parse(self._registry.schema(schema_id), named_schemas={})
        except SchemaNotFound:
            raise DecodeError(f"schema id {schema_id} is not in the registry") from None
        except (SchemaParseException, ValueError, TypeError) as exc:
            raise DecodeError(f"schema id {schema_id} cannot be parsed: {exc}") from None
        columns = self._reader_columns if self._reader_columns is not None else columns_of(writer)
        float_free = self._reader_float_free if self._reader_float_free is not None else float_free_fields(writer)
        writer = reading_uuids_as_text(writer)
        if self._reader is None:
            self._columns = merge_columns(self._columns, columns)
        entry = _WriterSchema(writer, cell_converters(columns, float_free))
        self._writers[schema_id] = entry
        return entry


class JsonDecoder:
    """JSON objects; with SCHEMA_FILE one column per field, without it one `value` JSON column."""

    def __init__(self, schema: AvroSchema | None) -> None:
        self._columns = columns_of(schema) if schema is not None else [ColumnSpec("value", ColumnKind.JSON, True)]
        self._names = field_names(schema) if schema is not None else None
        self._converters = cell_converters(self._columns)

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise DecodeError(f"JSON value is a {type(obj).__name__}, not an object")
        if self._names is None:
            return obj, {"value": to_json_text(obj)}
        row = _convert({name: obj.get(name) for name in self._names}, self._converters)
        return row, row  # keys from the converted row: a uuid key is canonical, like its cell

    def columns(self) -> list[ColumnSpec]:
        return self._columns


KeyOf = Callable[[RawRecord, Fields], str | None]


def key_source(spec: str, known_fields: Sequence[str] | None) -> KeyOf:
    """The IDEMPOTENCY_KEY setting as a function of (record, decoded fields)."""
    kind, _, name = spec.partition(":")
    if kind == "coordinates":
        return lambda raw, fields: f"{raw.topic}/{raw.partition}/{raw.offset}"
    if kind == "key":
        return lambda raw, fields: bytes_text(raw.key) if raw.key is not None else None
    if kind == "header":
        return lambda raw, fields: _header_key(raw, name)
    if known_fields is not None and name not in known_fields:
        raise ConfigError(f"IDEMPOTENCY_KEY: field {name!r} is not in the value schema")
    return lambda raw, fields: key_text(fields.get(name))


def _header_key(raw: RawRecord, name: str) -> str | None:
    for header, value in raw.headers:
        if header == name:
            return bytes_text(value) if value is not None else None
    return None


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
