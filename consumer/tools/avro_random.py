"""Random valid values for any Avro schema, and poison that is certain not to decode.

Every Avro type is covered (null, boolean, int, long, float, double, bytes, string, record, enum, array,
map, fixed, unions, named-type references, recursion) and every logical type fastavro writes (decimal on
bytes and fixed, uuid, date, time-millis/-micros, timestamp-millis/-micros, local-timestamp-millis/-micros).
Values are chosen to survive a database round trip exactly: floats are float32-representable, no NUL in
strings, times at the logical type's precision, dates and timestamps between 1970 and 2100.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import random
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro

from consumer.decode.schema import AvroSchema

_MAX_DEPTH = 4  # nesting beyond which arrays and maps are empty and unions prefer null (recursive schemas)
_MAX_ITEMS = 3
_STRING_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:/éüß中文✓"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SPAN_S = 130 * 365 * 86400  # 1970 .. ~2100
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")


def named_types(schema: AvroSchema) -> dict[str, Any]:
    """Every named type (record, enum, fixed) by full name and short name, for resolving references."""
    found: dict[str, Any] = {}
    for node in _walk(schema):
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed", "error") and "name" in node:
            name = str(node["name"])
            found[name] = node
            found[name.rsplit(".", 1)[-1]] = node
    return found


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, list):
        for branch in node:
            yield from _walk(branch)
    elif isinstance(node, dict):
        for key in ("type", "items", "values"):
            if isinstance(node.get(key), (dict, list)):
                yield from _walk(node[key])
        for child in node.get("fields", ()):
            yield from _walk(child["type"])


class RandomValues:
    """`record()` returns a random valid value of a parsed record schema; deterministic for a given rng."""

    def __init__(self, schema: AvroSchema, rng: random.Random) -> None:
        self._schema = schema
        self._rng = rng
        self._names = named_types(schema)

    def record(self) -> dict[str, Any]:
        value = self.value(self._schema, 0)
        assert isinstance(value, dict)
        return value

    def value(self, schema: Any, depth: int) -> Any:
        if isinstance(schema, list):
            return self._union(schema, depth)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self._primitive(schema)
            return self.value(self._names[schema], depth + 1)
        logical = schema.get("logicalType")
        if logical is not None:
            made = self._logical(schema, logical)
            if made is not _NOT_LOGICAL:
                return made
        kind = schema["type"]
        if kind in ("record", "error"):
            return {f["name"]: self.value(f["type"], depth + 1) for f in schema["fields"]}
        if kind == "enum":
            return self._rng.choice(schema["symbols"])
        if kind == "fixed":
            return self._rng.randbytes(int(schema["size"]))
        if kind == "array":
            return [self.value(schema["items"], depth + 1) for _ in range(self._items(depth))]
        if kind == "map":
            return {self._string(1, 8) + str(i): self.value(schema["values"], depth + 1)
                    for i in range(self._items(depth))}
        return self.value(kind, depth)

    def _items(self, depth: int) -> int:
        return 0 if depth >= _MAX_DEPTH else self._rng.randint(0, _MAX_ITEMS)

    def _union(self, branches: list[Any], depth: int) -> Any:
        if depth >= _MAX_DEPTH and "null" in branches:
            return None
        return self.value(self._rng.choice(branches), depth)

    def _primitive(self, kind: str) -> Any:
        rng = self._rng
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "int":
            return rng.randint(-(2**31), 2**31 - 1)
        if kind == "long":
            return rng.randint(-(2**63), 2**63 - 1)
        if kind == "float":  # representable in 32 bits, so a REAL column gives back the same number
            return float(struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0])
        if kind == "double":
            return rng.uniform(-1e9, 1e9)
        if kind == "bytes":
            return rng.randbytes(rng.randint(0, 16))
        return self._string(0, 16)

    def _string(self, shortest: int, longest: int) -> str:
        return "".join(self._rng.choice(_STRING_CHARS) for _ in range(self._rng.randint(shortest, longest)))

    def _logical(self, schema: dict[str, Any], logical: str) -> Any:
        rng = self._rng
        base = schema["type"]
        if logical == "decimal" and base in ("bytes", "fixed"):
            return self._decimal(schema)
        if logical == "uuid" and base == "string":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if logical == "date" and base == "int":
            return (_EPOCH + dt.timedelta(days=rng.randint(0, _SPAN_S // 86400))).date()
        if logical in ("time-millis", "time-micros"):
            micros = rng.randint(0, 86_400_000_000 - 1)
            if logical == "time-millis":
                micros -= micros % 1000
            return (dt.datetime.min + dt.timedelta(microseconds=micros)).time()
        if logical in ("timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"):
            micros = rng.randint(0, _SPAN_S * 1_000_000)
            if logical.endswith("millis"):
                micros -= micros % 1000
            moment = _EPOCH + dt.timedelta(microseconds=micros)
            return moment.replace(tzinfo=None) if logical.startswith("local") else moment
        return _NOT_LOGICAL

    def _decimal(self, schema: dict[str, Any]) -> decimal.Decimal:
        precision = int(schema.get("precision", 10))
        scale = int(schema.get("scale", 0))
        if schema["type"] == "fixed":  # the unscaled value must fit the fixed size, signed
            precision = min(precision, len(str(2 ** (8 * int(schema["size"]) - 1) - 1)) - 1)
        bound = 10**precision - 1
        return decimal.Decimal(self._rng.randint(-bound, bound)).scaleb(-scale)


_NOT_LOGICAL = object()


def encode(schema: AvroSchema, value: dict[str, Any]) -> bytes:
    """Schemaless Avro (what SCHEMA_FILE decoding reads)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, value)
    return buffer.getvalue()


def parse(schema_json: Any) -> AvroSchema:
    return fastavro.parse_schema(schema_json)


def poison(valid: bytes, rng: random.Random) -> bytes:
    """Bytes that cannot decode with the schema `valid` was written with: Avro binary is prefix-free, so a
    proper prefix of a value fails with end-of-data, and a value with bytes after it fails the decoder's
    trailing-bytes check."""
    if valid and rng.random() < 0.5:
        return valid[: rng.randint(0, len(valid) - 1)]
    return valid + rng.randbytes(rng.randint(1, 4))
