"""Schema to columns: the sink table's SQL types from the decoders' column specs, plus the metadata columns
of the contract's "Sink table"."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from consumer.records import ColumnKind, ColumnLimits, ColumnSpec

KEY_COLUMN = "_idempotency_key"
META_COLUMNS = ("_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp", KEY_COLUMN)
META_PREFIX = "_kafka_"
# PostgreSQL's limits, applied to every dialect so a schema that fits one fits all: identifiers of at most
# NAMEDATALEN - 1 bytes (longer ones are silently truncated), numeric precision up to 1000, and at most 1600
# columns in a table, our metadata columns included (SINK_MAX_COLUMNS stays below it).
MAX_IDENTIFIER_BYTES = 63
MAX_DECIMAL_PRECISION = 1000
MAX_TABLE_COLUMNS = 1600
MAX_VALUE_COLUMNS = MAX_TABLE_COLUMNS - len(META_COLUMNS)


def column_limits(max_value_columns: int) -> ColumnLimits:
    """What a value schema may ask of the table (checked by consumer.decode.column_rules)."""
    return ColumnLimits(
        max_name_bytes=MAX_IDENTIFIER_BYTES,
        max_decimal_precision=MAX_DECIMAL_PRECISION,
        max_columns=min(max_value_columns, MAX_VALUE_COLUMNS),
        reserved_names=frozenset(META_COLUMNS),
        reserved_prefix=META_PREFIX,
    )


def column_type(column: ColumnSpec) -> sa.types.TypeEngine[Any]:
    kind = column.kind
    if kind is ColumnKind.DECIMAL:
        return sa.Numeric(column.precision, column.scale)
    if kind is ColumnKind.UUID:
        return sa.Text().with_variant(postgresql.UUID(as_uuid=False), "postgresql")
    if kind is ColumnKind.JSON:
        return sa.Text().with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    return _SIMPLE_TYPES[kind]


_SIMPLE_TYPES: dict[ColumnKind, sa.types.TypeEngine[Any]] = {
    ColumnKind.INTEGER: sa.Integer(),
    ColumnKind.BIGINT: sa.BigInteger(),
    ColumnKind.FLOAT: sa.Float(precision=24),
    ColumnKind.DOUBLE: sa.Double(),
    ColumnKind.BOOLEAN: sa.Boolean(),
    ColumnKind.TEXT: sa.Text(),
    ColumnKind.BINARY: sa.LargeBinary(),
    ColumnKind.TIMESTAMP: sa.DateTime(timezone=True),
    ColumnKind.DATE: sa.Date(),
    ColumnKind.TIME: sa.Time(),
}


def meta_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("_kafka_topic", sa.Text(), nullable=False),
        sa.Column("_kafka_partition", sa.Integer(), nullable=False),
        sa.Column("_kafka_offset", sa.BigInteger(), nullable=False),
        sa.Column("_kafka_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column(KEY_COLUMN, sa.Text(), primary_key=True),
    ]
