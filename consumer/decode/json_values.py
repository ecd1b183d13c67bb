"""JSON values: with SCHEMA_FILE one column per field, without it one `value` JSON column."""

from __future__ import annotations

import json
from typing import Any

from consumer.decode.decoder import convert
from consumer.decode.keys import Fields
from consumer.decode.limits import DEFAULT_LIMITS, DecodeLimits
from consumer.decode.schema import (
    AvroSchema,
    cell_converters,
    columns_of,
    field_names,
    to_json_text,
)
from consumer.errors import DecodeError, DecodeLimitError
from consumer.records import ColumnKind, ColumnSpec


class JsonDecoder:
    """JSON objects; with SCHEMA_FILE one column per field, without it one `value` JSON column."""

    def __init__(self, schema: AvroSchema | None, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self._max_depth = limits.max_depth
        self._columns = columns_of(schema) if schema is not None else [ColumnSpec("value", ColumnKind.JSON, True)]
        self._names = field_names(schema) if schema is not None else None
        self._converters = cell_converters(self._columns)

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        # Python's json parses (and the JSON cell encoder writes) by recursion: bound the nesting. Fewer
        # brackets than the limit cannot nest deeper, so an ordinary value costs two byte counts.
        if value.count(b"[") + value.count(b"{") > self._max_depth and _deeper_than(obj, self._max_depth):
            raise DecodeLimitError(f"JSON value nested deeper than DECODE_MAX_DEPTH={self._max_depth}")
        if not isinstance(obj, dict):
            raise DecodeError(f"JSON value is a {type(obj).__name__}, not an object")
        if self._names is None:
            return obj, {"value": to_json_text(obj)}
        row = convert({name: obj.get(name) for name in self._names}, self._converters)
        return row, row  # keys from the converted row: a uuid key is canonical, like its cell

    def columns(self) -> list[ColumnSpec]:
        return self._columns

    def table_at_start(self, names: frozenset[str]) -> None:
        """The columns are SCHEMA_FILE's (or the one `value` column): nothing to keep to."""


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels, walked with an explicit stack (no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False
