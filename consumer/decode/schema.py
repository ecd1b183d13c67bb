"""Avro schemas as the sink sees them: one column per top-level field, and how to turn values into cells.

The type mapping follows a Kafka Connect JDBC sink (see the contract's "Sink table"). Complex values
(record, array, map, multi-branch unions) become JSON text in which decimals and timestamps are strings
and bytes are base64, so the same row fits PostgreSQL (JSONB) and SQLite (TEXT).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import SchemaParseException

from consumer.errors import ConfigError, TransformError
from consumer.records import ColumnKind, ColumnSpec

AvroSchema = Any  # a parsed fastavro schema: dicts, lists and strings all the way down


Converter = Callable[[Any], Any]


def load_schema_file(path: Path) -> AvroSchema:
    """Parse an .avsc file; a broken one is a configuration error naming SCHEMA_FILE."""
    try:
        return parse_schema(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, SchemaParseException, RecursionError) as exc:
        raise ConfigError(f"SCHEMA_FILE: cannot read Avro schema {str(path)!r}: {exc}") from None


def parse_schema(schema: Any) -> AvroSchema:
    """A record schema parsed; ValueError for anything else (fastavro's own errors included)."""
    try:
        parsed = fastavro.parse_schema(schema)
    except (SchemaParseException, TypeError, AttributeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise ValueError("the value schema must be an Avro record")
    return parsed


def columns_of(schema: AvroSchema) -> list[ColumnSpec]:
    named = schema.get("__named_schemas", {})  # fastavro keeps a named type's later uses as its full name
    return [_column(field["name"], field["type"], named) for field in schema["fields"]]


def field_names(schema: AvroSchema) -> list[str]:
    return [field["name"] for field in schema["fields"]]


def _column(name: str, avro_type: Any, named: Mapping[str, Any]) -> ColumnSpec:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    non_null = [branch for branch in branches if branch != "null"]
    nullable = len(non_null) < len(branches)
    if len(non_null) != 1:
        return ColumnSpec(name, ColumnKind.JSON, nullable)
    kind, precision, scale = _kind(named.get(non_null[0], non_null[0]) if isinstance(non_null[0], str) else non_null[0])
    return ColumnSpec(name, kind, nullable, precision, scale)


def _kind(avro_type: Any) -> tuple[ColumnKind, int | None, int | None]:
    if isinstance(avro_type, str):
        return _PRIMITIVES.get(avro_type, ColumnKind.JSON), None, None
    logical = avro_type.get("logicalType")
    base = avro_type.get("type")
    if logical in ("timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"):
        return ColumnKind.TIMESTAMP, None, None
    if logical == "date":
        return ColumnKind.DATE, None, None
    if logical in ("time-millis", "time-micros"):
        return ColumnKind.TIME, None, None
    if logical == "decimal":
        return ColumnKind.DECIMAL, int(avro_type.get("precision", 38)), int(avro_type.get("scale", 0))
    if logical == "uuid":
        return ColumnKind.UUID, None, None
    if base == "enum":
        return ColumnKind.TEXT, None, None
    if base == "fixed":
        return ColumnKind.BINARY, None, None
    if isinstance(base, str) and base in _PRIMITIVES:
        return _PRIMITIVES[base], None, None
    return ColumnKind.JSON, None, None


_PRIMITIVES = {
    "int": ColumnKind.INTEGER,
    "long": ColumnKind.BIGINT,
    "float": ColumnKind.FLOAT,
    "double": ColumnKind.DOUBLE,
    "boolean": ColumnKind.BOOLEAN,
    "string": ColumnKind.TEXT,
    "bytes": ColumnKind.BINARY,
}


def cell_converters(columns: list[ColumnSpec], float_free: Collection[str] = ()) -> dict[str, Converter]:
    """Converters for the columns whose decoded Python value is not already a cell; others pass as is.
    JSON columns named in `float_free` (values checked against a schema without float or double, see
    `float_free_fields`) take the fast encoder."""
    converters: dict[str, Converter] = {}
    for column in columns:
        if column.kind is ColumnKind.JSON:
            converters[column.name] = fast_json_text if column.name in float_free else to_json_text
        elif column.kind is ColumnKind.UUID:
            converters[column.name] = _uuid_text
    return converters


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uuid_text(value: Any) -> Any:
    """A uuid cell in canonical lower-case form; a string that is no uuid cannot be made into the cell: poison
    of stage transform (the value itself decoded)."""
    if value is None:
        return None
    if isinstance(value, str):
        if _CANONICAL_UUID.fullmatch(value):
            return value.lower()
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise TransformError(f"not a uuid: {value[:60]!r}") from None
    return str(value)


def reading_uuids_as_text(schema: AvroSchema) -> AvroSchema:
    """The record schema with its top-level uuid fields read as plain strings: fastavro would build a
    uuid.UUID per value (1.2 us) only for us to print it again; `_uuid_text` checks and canonicalises
    the text instead (0.3 us). Nested uuids stay as they are: they end up in JSON text either way."""

    def plain(branch: Any) -> Any:
        is_uuid = isinstance(branch, dict) and branch.get("logicalType") == "uuid" and branch.get("type") == "string"
        return "string" if is_uuid else branch

    fields = []
    for field in schema["fields"]:
        avro_type = field["type"]
        read_as = [plain(b) for b in avro_type] if isinstance(avro_type, list) else plain(avro_type)
        fields.append({**field, "type": read_as})
    return {**schema, "fields": fields}


def float_free_fields(schema: AvroSchema) -> frozenset[str]:
    """Top-level fields whose type cannot hold a float or double anywhere inside (so no NaN or infinity)."""
    named = schema.get("__named_schemas", {})
    return frozenset(field["name"] for field in schema["fields"] if _float_free(field["type"], named, set()))


def _float_free(avro_type: Any, named: Mapping[str, Any], seen: set[str]) -> bool:
    if isinstance(avro_type, list):
        return all(_float_free(branch, named, seen) for branch in avro_type)
    if isinstance(avro_type, str):
        if avro_type in ("float", "double"):
            return False
        if avro_type in named and avro_type not in seen:  # a named type used again by name (or recursively)
            seen.add(avro_type)
            return _float_free(named[avro_type], named, seen)
        return True
    if not isinstance(avro_type, dict):
        return False
    base = avro_type.get("type")
    if isinstance(avro_type.get("name"), str):
        seen.add(avro_type["name"])
    if base == "record":
        return all(_float_free(field["type"], named, seen) for field in avro_type["fields"])
    if base == "array":
        return _float_free(avro_type["items"], named, seen)
    if base == "map":
        return _float_free(avro_type["values"], named, seen)
    return _float_free(base, named, seen)


def fast_json_text(value: Any) -> str | None:
    """`to_json_text` for values that hold no float (orjson writes NaN as null, where the standard encoder
    writes NaN, which PostgreSQL refuses: a row to dead-letter, not to change). Same text otherwise: dates
    and times go through the same `default`; 0.3 us a small map instead of 1.7 us."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except orjson.JSONEncodeError:  # deeper than orjson nests, or a type it refuses: the standard way decides
        return to_json_text(value)


def to_json_text(value: Any) -> str | None:
    if value is None:
        return None
    return _JSON_CELL.encode(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder for every JSON cell: json.dumps with options builds a JSONEncoder per call, which cost
# 0.7 of the 1.7 us a small map took (the benchmark's event has one per record). It holds no state.
_JSON_CELL = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def merge_columns(known: Mapping[str, ColumnSpec], new: list[ColumnSpec]) -> dict[str, ColumnSpec]:
    """Columns after a later schema version: fields it adds are nullable (older rows lack them)."""
    merged = dict(known)
    for column in new:
        if column.name not in merged:
            merged[column.name] = ColumnSpec(column.name, column.kind, True, column.precision, column.scale)
    return merged
