"""Schema-driven DDL is checked before it runs: a value schema's fields become the table's columns only when
the database can take them as they are. Names are never rewritten (one rule for every dialect: Avro's plain
identifiers, at most the database's identifier length, unique case-insensitively since SQLite compares
column names so); a schema that breaks a rule is refused whole with a `SchemaRejectedError` naming the field
and the limit, and none of its columns is merged.

The limits are plain numbers (`ColumnLimits`) chosen by consumer.sql and handed over by the service's
components: this module knows no SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from consumer.decode.schema import merge_columns
from consumer.errors import SchemaRejectedError
from consumer.records import ColumnKind, ColumnLimits, ColumnSpec

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # Avro's own name rule, and safe unquoted in any SQL


class ColumnRules:
    """Checks columns against the database's limits and SINK_SCHEMA_EVOLUTION; holds no state."""

    def __init__(self, limits: ColumnLimits, add_columns: bool = True) -> None:
        self._limits = limits
        self._add_columns = add_columns
        self._reserved = frozenset(name.casefold() for name in limits.reserved_names)

    @property
    def adds_columns(self) -> bool:
        """SINK_SCHEMA_EVOLUTION=add-columns."""
        return self._add_columns

    def check(self, columns: Sequence[ColumnSpec]) -> None:
        """One schema's columns on their own: names, decimals, count, duplicates."""
        for column in columns:
            self._check_name(column.name)
            if column.kind is ColumnKind.DECIMAL:
                self._check_decimal(column)
        self._check_together([column.name for column in columns])

    def admit(
        self, known: Mapping[str, ColumnSpec], new: Sequence[ColumnSpec], table: frozenset[str] | None = None
    ) -> dict[str, ColumnSpec]:
        """The columns after a writer schema `new` joins `known`: its new fields added as nullable columns,
        or SchemaRejectedError (and `known` unchanged). `table`, the table's columns at start when known,
        may hold columns of older schemas: a new field must not equal one of them but for case (SQLite would
        refuse the column). With evolution off, a schema with a field outside `table` is refused; without
        it (no table yet, or the database down at start), a field outside the columns known, once some are."""
        self.check(new)
        added = [column for column in new if column.name not in known]
        if not self._add_columns:
            outside = [c.name for c in added if c.name not in table] if table is not None else (
                [c.name for c in added] if known else [])
            if outside:
                raise SchemaRejectedError(
                    f"field {outside[0]!r} is not a column of the table and SINK_SCHEMA_EVOLUTION=none"
                )
        merged = merge_columns(known, added)
        if added:
            self._check_together([*merged, *self._older_value_columns(table or frozenset(), merged)])
        return merged

    def _older_value_columns(self, table: frozenset[str], merged: Mapping[str, ColumnSpec]) -> list[str]:
        """The table's value columns the known columns lack (fields of older schemas)."""
        prefix = self._limits.reserved_prefix.casefold()
        return sorted(name for name in table if name not in merged and name.casefold() not in self._reserved
                      and not name.casefold().startswith(prefix))

    def _check_name(self, name: str) -> None:
        limits = self._limits
        if not _PLAIN_NAME.fullmatch(name):
            raise SchemaRejectedError(
                f"field {name[:80]!r} is not a plain identifier (letters, digits, underscores; not a digit first)"
            )
        if len(name.encode()) > limits.max_name_bytes:
            raise SchemaRejectedError(
                f"field {name[:80]!r} is {len(name.encode())} bytes long, over the {limits.max_name_bytes}-byte "
                "limit of column names"
            )
        folded = name.casefold()
        if folded in self._reserved or folded.startswith(limits.reserved_prefix.casefold()):
            raise SchemaRejectedError(f"field {name!r} has the name of one of the sink's metadata columns")

    def _check_decimal(self, column: ColumnSpec) -> None:
        most = self._limits.max_decimal_precision
        precision, scale = column.precision, column.scale if column.scale is not None else 0
        if precision is None or not 1 <= precision <= most:
            raise SchemaRejectedError(f"field {column.name!r} is a decimal of precision {precision}, outside 1..{most}")
        if not 0 <= scale <= precision:
            raise SchemaRejectedError(
                f"field {column.name!r} is a decimal of scale {scale}, outside 0..{precision} (its precision)"
            )

    def _check_together(self, names: Sequence[str]) -> None:
        if len(names) > self._limits.max_columns:
            raise SchemaRejectedError(
                f"{len(names)} columns, over the limit of {self._limits.max_columns} (SINK_MAX_COLUMNS)"
            )
        seen: dict[str, str] = {}
        for name in names:
            folded = name.casefold()
            if folded in seen:
                raise SchemaRejectedError(
                    f"fields {seen[folded]!r} and {name!r} would be one column (names compare case-insensitively)"
                )
            seen[folded] = name
