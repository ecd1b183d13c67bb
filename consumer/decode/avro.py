"""Avro values: schemaless (SCHEMA_FILE) or Confluent wire format with writer schemas from the registry."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro import parse_schema as _fastavro_parse
from fastavro import schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException

from consumer.decode.avro_risk import AvroNode, analyse
from consumer.decode.avro_scan import check_value
from consumer.decode.column_rules import ColumnRules
from consumer.decode.decoder import convert
from consumer.decode.keys import Fields
from consumer.decode.limits import DEFAULT_LIMITS, DecodeLimits
from consumer.decode.registry import SchemaNotFound, SchemaRegistryClient
from consumer.decode.schema import (
    AvroSchema,
    Converter,
    cell_converters,
    columns_of,
    float_free_fields,
    reading_uuids_as_text,
)
from consumer.errors import ConfigError, DecodeError, SchemaRejectedError
from consumer.records import ColumnSpec

# What fastavro raises on bytes that are not a value of the schema (truncated, garbage, bad utf-8), and what a
# value that slipped past the limits could still make it raise (a recursion or an allocation refused).
_AVRO_DATA_ERRORS = (
    EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, SchemaResolutionError,
    RecursionError, MemoryError,
)
_WIRE_MAGIC = 0
_WIRE_HEADER = 5  # magic byte + 4-byte big-endian schema id


@dataclass(frozen=True, slots=True)
class _Guard:
    """How values of one writer schema are checked before fastavro reads them: longer than `scan_above`
    bytes (-1 for a risky schema: every value), the scanner walks them against the limits first."""

    root: AvroNode
    scan_above: int
    limits: DecodeLimits

    @classmethod
    def of(cls, writer: AvroSchema, limits: DecodeLimits) -> _Guard:
        """ValueError when the schema cannot be analysed."""
        risk = analyse(writer)
        return cls(risk.root, risk.scan_above(limits), limits)


def _read_avro(
    value: bytes, start: int, writer: AvroSchema, reader: AvroSchema | None, guard: _Guard
) -> dict[str, Any]:
    if len(value) > guard.scan_above:  # the one comparison a safe schema's ordinary value costs
        check_value(value, start, guard.root, guard.limits)
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

    def __init__(self, schema: AvroSchema, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        """ConfigError naming SCHEMA_FILE when the schema cannot be analysed."""
        try:
            self._guard = _Guard.of(schema, limits)
        except ValueError as exc:
            raise ConfigError(f"SCHEMA_FILE: {exc}") from None
        self._schema = reading_uuids_as_text(schema)
        self._columns = columns_of(schema)
        self._converters = cell_converters(self._columns, float_free_fields(schema))

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        row = convert(_read_avro(value, 0, self._schema, None, self._guard), self._converters)
        return row, row

    def columns(self) -> list[ColumnSpec]:
        return self._columns

    def table_at_start(self, names: frozenset[str]) -> None:
        """The columns are SCHEMA_FILE's: nothing to keep to."""


@dataclass(slots=True)
class _WriterSchema:
    writer: AvroSchema
    converters: Mapping[str, Converter]
    guard: _Guard


class RegistryAvroDecoder:
    """Confluent wire format: magic byte 0, a 4-byte schema id, then the Avro body.

    Writer schemas come from the registry by id (cached); with a reader schema (SCHEMA_FILE) values are
    resolved against it, so producers may evolve their schema; without one, the table follows the
    writers and a new optional field adds a nullable column, when `rules` admit the writer's columns (a writer
    schema they refuse has its records dead-lettered, stage `validate`, and adds nothing).
    """

    def __init__(
        self, registry: SchemaRegistryClient, reader: AvroSchema | None, rules: ColumnRules,
        initial: AvroSchema | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        """`reader` and `initial` are schemas the caller has checked against `rules` already."""
        self._registry = registry
        self._limits = limits
        self._rules = rules
        self._reader_columns = columns_of(reader) if reader is not None else None
        self._reader_float_free = float_free_fields(reader) if reader is not None else None
        self._reader = reading_uuids_as_text(reader) if reader is not None else None  # as values are read
        base = reader if reader is not None else initial
        self._columns: dict[str, ColumnSpec] = {c.name: c for c in columns_of(base)} if base else {}
        self._writers: dict[int, _WriterSchema] = {}
        self._refused: dict[int, str] = {}  # schema id -> why: asked once, refused for every record
        self._table: frozenset[str] | None = None  # the table's columns at start, when the database answered
        # The runner decodes the next batch on the polling thread while the worker may decode another:
        # loading a new schema id (and growing the columns) happens under this lock, once per id.
        self._loading = threading.Lock()

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        if len(value) < _WIRE_HEADER or value[0] != _WIRE_MAGIC:
            raise DecodeError("not Confluent wire format (magic byte 0 and a 4-byte schema id)")
        schema_id = int.from_bytes(value[1:_WIRE_HEADER], "big")
        entry = self._writers.get(schema_id) or self._load(schema_id)
        row = convert(_read_avro(value, _WIRE_HEADER, entry.writer, self._reader, entry.guard), entry.converters)
        return row, row

    def columns(self) -> list[ColumnSpec]:
        return list(self._columns.values())

    def table_at_start(self, names: frozenset[str]) -> None:
        if self._reader is not None:
            return  # the reader schema's columns, ours
        with self._loading:
            self._table = names
            if not self._rules.adds_columns:
                self._columns = {name: column for name, column in self._columns.items() if name in names}

    def _load(self, schema_id: int) -> _WriterSchema:
        with self._loading:
            loaded = self._writers.get(schema_id)
            if loaded is not None:
                return loaded
            refused = self._refused.get(schema_id)
            if refused is not None:
                raise SchemaRejectedError(refused)
            return self._load_locked(schema_id)

    def _load_locked(self, schema_id: int) -> _WriterSchema:
        try:
            writer = _fastavro_parse(self._registry.schema(schema_id), named_schemas={})
            guard = _Guard.of(writer, self._limits)
            is_record = isinstance(writer, dict) and writer.get("type") == "record"
            writer_columns = columns_of(writer) if is_record else None
            float_free = self._reader_float_free if self._reader_float_free is not None else (
                float_free_fields(writer) if is_record else frozenset())
        except SchemaNotFound:
            raise DecodeError(f"schema id {schema_id} is not in the registry") from None
        except (SchemaParseException, ValueError, TypeError, KeyError, RecursionError) as exc:
            raise DecodeError(f"schema id {schema_id} cannot be parsed: {type(exc).__name__}: {exc}") from None
        try:
            columns = self._admitted_columns(writer_columns)
        except SchemaRejectedError as exc:
            self._refused[schema_id] = f"schema id {schema_id} refused: {exc}"
            raise SchemaRejectedError(self._refused[schema_id]) from None
        entry = _WriterSchema(reading_uuids_as_text(writer), cell_converters(columns, float_free), guard)
        self._writers[schema_id] = entry
        return entry

    def _admitted_columns(self, writer_columns: list[ColumnSpec] | None) -> list[ColumnSpec]:
        """The columns a writer's values fill; without a reader schema the table's columns grow by the
        writer's new fields, if the rules admit them all (else nothing changes)."""
        if writer_columns is None:
            raise SchemaRejectedError("the value schema is not an Avro record")
        if self._reader_columns is not None:
            return self._reader_columns
        self._columns = self._rules.admit(self._columns, writer_columns, self._table)
        return writer_columns
