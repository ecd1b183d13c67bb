"""Values at the sink's edge: binary COPY (Avro values) writes exactly what text COPY writes, and a value the
database cannot take is the row's fault (dead-lettered by the pipeline), never a silent change and never an
outage that blocks the partition.

The sink is driven directly, on the run's PostgreSQL (the only database with a COPY path) and, where the
rule holds for both, on SQLite too.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from support.db import connect, drop_table, fetch
from support.events import SCHEMA_PATH, encode, make_event

from consumer.decode.avro import SchemalessAvroDecoder
from consumer.decode.schema import columns_of, load_schema_file
from consumer.errors import RecordRejectedError
from consumer.records import ColumnKind, ColumnSpec, DecodedRecord, RawRecord
from consumer.sql.engine import create_sink_engine
from consumer.sql.sink import SqlSink

FALLBACK = "not writable as binary COPY"
POSTGRES = pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)


def _record(offset: int, row: Mapping[str, Any], topic: str = "t") -> DecodedRecord:
    return DecodedRecord(RawRecord(topic, offset % 3, offset, 1_700_000_000_000 + offset, None, b"v"), f"k{offset}",
                         dict(row))


@pytest.fixture
def sinks(sink_url: str, sink_table: str) -> Iterator[tuple[SqlSink, SqlSink, str]]:
    """(binary-COPY sink on `sink_table`, text-COPY sink on a second table, that table's name)."""
    text_table = f"{sink_table}_text"
    binary = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=True)
    text = SqlSink(create_sink_engine(sink_url, None), text_table, upsert=False, typed_values=False)
    try:
        yield binary, text, text_table
    finally:
        binary.close()
        text.close()
        drop_table(sink_url, text_table)


def _rows(sink_url: str, table: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in fetch(sink_url, f"SELECT * FROM {table} ORDER BY _idempotency_key")]


@POSTGRES
def test_binary_copy_writes_exactly_what_text_copy_writes(
    sink_url: str, sink_table: str, sinks: tuple[SqlSink, SqlSink, str], caplog: pytest.LogCaptureFixture
) -> None:
    binary, text, text_table = sinks
    schema = load_schema_file(SCHEMA_PATH)
    decoder = SchemalessAvroDecoder(schema)
    events = [make_event(i) for i in range(200)]
    events[7]["attributes"] = {"quote": 'a "b" \\ c', "unicode": "é ✓ \u2028", "empty": ""}
    events[8]["page_url"] = "tab\there, newline\nthere, backslash \\ end"
    records = [_record(i, decoder.decode(encode(event))[1]) for i, event in enumerate(events)]
    for sink in (binary, text):
        sink.prepare(columns_of(schema))
        with caplog.at_level(logging.INFO, logger="consumer.sql.sink"):
            assert sink.write(records).written == {"t": 200}
    assert FALLBACK not in caplog.text  # every value went as binary
    written = _rows(sink_url, sink_table)
    assert len(written) == 200
    assert written == _rows(sink_url, text_table)


@POSTGRES
def test_numbers_out_of_range_of_an_operators_narrow_columns_are_rejected_not_wrapped(
    sink_url: str, sink_table: str
) -> None:
    """psycopg's binary dumpers pack 2**40 into an int4 as 0 and 1e300 into a real as infinity; staged wide,
    the INSERT's cast refuses them (SQLSTATE 22003) like text COPY would."""
    with connect(sink_url) as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {sink_table} (small smallint, n integer, r real, _kafka_topic text NOT NULL, "
            "_kafka_partition integer NOT NULL, _kafka_offset bigint NOT NULL, _kafka_timestamp timestamptz, "
            "_idempotency_key text PRIMARY KEY)"
        )
    columns = [ColumnSpec("small", ColumnKind.BIGINT, True), ColumnSpec("n", ColumnKind.BIGINT, True),
               ColumnSpec("r", ColumnKind.DOUBLE, True)]
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=True)
    try:
        sink.prepare(columns)
        good = {"small": -32768, "n": 2**31 - 1, "r": 1.5}
        assert sink.write([_record(1, good)]).written == {"t": 1}
        for bad in ({"n": 2**40}, {"n": -(2**31) - 1}, {"small": 70_000}, {"r": 1e300}):
            with pytest.raises(RecordRejectedError, match="22003"):
                sink.write([_record(2, {**good, **bad})])
        assert fetch(sink_url, f"SELECT small, n, r, _kafka_offset FROM {sink_table}") == [(-32768, 2**31 - 1, 1.5, 1)]
    finally:
        sink.close()


@pytest.mark.parametrize("typed", [True, False], ids=["binary", "text"])
@pytest.mark.parametrize("sink_url", ["sqlite", "postgresql"], indirect=True)
def test_a_nul_character_in_text_is_the_rows_fault_and_the_rest_is_written(
    sink_url: str, sink_table: str, typed: bool
) -> None:
    """PostgreSQL text cannot hold U+0000 (psycopg refuses it before sending in text COPY, the server in
    binary): RecordRejectedError, so the pipeline dead-letters that row; it used to be retried for ever."""
    columns = [ColumnSpec("name", ColumnKind.TEXT, True)]
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=typed)
    try:
        sink.prepare(columns)
        nul = _record(1, {"name": "a\x00b"})
        if sink_url.startswith("sqlite"):
            assert sink.write([nul]).written == {"t": 1}  # SQLite stores it as it is
            return
        with pytest.raises(RecordRejectedError):
            sink.write([_record(0, {"name": "fine"}), nul])
        assert sink.write([_record(0, {"name": "fine"})]).written == {"t": 1}
    finally:
        sink.close()


@POSTGRES
def test_naive_datetimes_fall_back_to_text_copy_and_are_written(
    sink_url: str, sink_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """local-timestamp-* values are naive datetimes, which psycopg's binary timestamptz refuses: the batch is
    written again with text COPY (PostgreSQL reads them in the session's time zone, as it always did)."""
    columns = [ColumnSpec("at", ColumnKind.TIMESTAMP, True), ColumnSpec("u", ColumnKind.UUID, True)]
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=True)
    try:
        sink.prepare(columns)
        naive = dt.datetime(2024, 5, 6, 7, 8, 9, 123000)
        ident = str(uuid.UUID(int=42))
        with caplog.at_level(logging.INFO, logger="consumer.sql.sink"):
            assert sink.write([_record(i, {"at": naive, "u": ident}) for i in range(3)]).written == {"t": 3}
        assert caplog.text.count(FALLBACK) == 1
        assert sink.write([_record(9, {"at": naive, "u": ident})]).written == {"t": 1}  # text from now on
        zone = fetch(sink_url, "SELECT current_setting('TimeZone')")[0][0]
        assert zone.upper() in ("UTC", "ETC/UTC", "GMT")
        stored = fetch(sink_url, f"SELECT at, u::text FROM {sink_table} ORDER BY _kafka_offset")
        assert stored == [(naive.replace(tzinfo=dt.UTC), ident)] * 4
    finally:
        sink.close()


@POSTGRES
def test_a_column_type_outside_the_binary_set_is_written_with_text_copy(sink_url: str, sink_table: str) -> None:
    """An operator's table may use types binary COPY does not cover here (a domain, say): text COPY, per write."""
    domain = f"{sink_table}_label"
    with connect(sink_url) as conn:
        conn.exec_driver_sql(f"CREATE DOMAIN {domain} AS text CHECK (VALUE <> 'forbidden')")
        conn.exec_driver_sql(
            f"CREATE TABLE {sink_table} (label {domain}, n bigint, _kafka_topic text NOT NULL, "
            "_kafka_partition integer NOT NULL, _kafka_offset bigint NOT NULL, _kafka_timestamp timestamptz, "
            "_idempotency_key text PRIMARY KEY)"
        )
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=True)
    try:
        sink.prepare([ColumnSpec("label", ColumnKind.TEXT, True), ColumnSpec("n", ColumnKind.BIGINT, True)])
        assert sink.write([_record(1, {"label": "ok", "n": 1})]).written == {"t": 1}
        with pytest.raises(RecordRejectedError, match="23514"):
            sink.write([_record(2, {"label": "forbidden", "n": 2})])
        assert fetch(sink_url, f"SELECT label, n FROM {sink_table}") == [("ok", 1)]
    finally:
        sink.close()
        with connect(sink_url) as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {sink_table}")
            conn.exec_driver_sql(f"DROP DOMAIN IF EXISTS {domain}")


@POSTGRES
@pytest.mark.parametrize("typed", [True, False], ids=["binary", "text"])
def test_a_row_without_a_newer_column_writes_null_there(sink_url: str, sink_table: str, typed: bool) -> None:
    """Without a reader schema, records of an older writer schema lack the columns a newer one added."""
    columns = [ColumnSpec("name", ColumnKind.TEXT, True), ColumnSpec("added", ColumnKind.BIGINT, True)]
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False, typed_values=typed)
    try:
        sink.prepare(columns)
        rows = [{"name": "new", "added": 7}, {"name": "old"}]
        assert sink.write([_record(i, row) for i, row in enumerate(rows)]).written == {"t": 2}
        assert fetch(sink_url, f"SELECT name, added FROM {sink_table} ORDER BY _kafka_offset") == [("new", 7), ("old", None)]
    finally:
        sink.close()
