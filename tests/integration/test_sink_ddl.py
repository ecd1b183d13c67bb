"""The sink's table DDL when several processes of one group start at once (WORKERS, a rollout of pods).

Each racer has its own engine, as separate processes would; a barrier releases them together so their
"table missing?" looks overlap. Losing the race must never stop a process (CI once saw exit 1 with
"table ... already exists" when two services started side by side on SQLite).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from support.db import make_engine

from consumer.errors import ConsumerError, RecordRejectedError
from consumer.records import ColumnKind, ColumnSpec, DecodedRecord, RawRecord
from consumer.sql.engine import create_sink_engine
from consumer.sql.sink import SqlSink

RACERS = 6
BASE = [ColumnSpec("event_id", ColumnKind.TEXT, nullable=False), ColumnSpec("n", ColumnKind.BIGINT, True)]
EVOLVED = [*BASE, ColumnSpec("note", ColumnKind.TEXT, nullable=True)]


def _race(sink_url: str, table: str, columns: list[ColumnSpec]) -> list[BaseException]:
    """Prepare the same table from RACERS sinks at once; the errors they raised (none expected)."""
    barrier = threading.Barrier(RACERS)
    errors: list[BaseException] = []
    sinks = [SqlSink(create_sink_engine(sink_url, None), table, upsert=False) for _ in range(RACERS)]

    def prepare(sink: SqlSink) -> None:
        barrier.wait()
        try:
            sink.prepare(columns)
        except ConsumerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for sink in sinks:
        sink.close()
    return errors


def _columns(sink_url: str, table: str) -> set[str]:
    engine = make_engine(sink_url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


@pytest.mark.parametrize("step", ["create", "add column"])
def test_processes_racing_to_create_or_evolve_the_table_all_go_on(
    sink_url: str, sink_table: str, step: str
) -> None:
    race: Callable[[list[ColumnSpec]], list[BaseException]] = lambda cols: _race(sink_url, sink_table, cols)
    if step == "add column":
        assert race(BASE) == []
    assert race(EVOLVED) == []
    assert {"event_id", "n", "note", "_idempotency_key", "_kafka_offset"} <= _columns(sink_url, sink_table)


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_a_column_widened_by_an_operator_applies_to_the_next_write_without_a_restart(
    sink_url: str, sink_table: str
) -> None:
    """The fix for rows rejected as too long is to widen the column and replay them; the running service
    must take them then (its staging table follows the target's current column types)."""
    from support.db import connect

    with connect(sink_url) as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {sink_table} (event_id varchar(8), n bigint, _kafka_topic text NOT NULL, "
            "_kafka_partition integer NOT NULL, _kafka_offset bigint NOT NULL, _kafka_timestamp timestamptz, "
            "_idempotency_key text PRIMARY KEY)"
        )
    sink = SqlSink(create_sink_engine(sink_url, None), sink_table, upsert=False)
    try:
        sink.prepare(BASE)
        short_id = DecodedRecord(RawRecord("t", 0, 6, 0, None, b"v"), "k6", {"event_id": "x" * 8, "n": 1})
        assert sink.write([short_id]).written == {"t": 1}  # a committed write: the staging table existed
        long_id = DecodedRecord(RawRecord("t", 0, 7, 0, None, b"v"), "k7", {"event_id": "x" * 20, "n": 1})
        with pytest.raises(RecordRejectedError):
            sink.write([long_id])
        with connect(sink_url) as conn:
            conn.exec_driver_sql(f"ALTER TABLE {sink_table} ALTER COLUMN event_id TYPE varchar(64)")
        assert sink.write([long_id]).written == {"t": 1}
    finally:
        sink.close()


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_sink_connections_give_up_on_a_vanished_peer_unless_the_url_says_otherwise(sink_url: str) -> None:
    """TCP keepalives and tcp_user_timeout turn a partitioned connection into a transient error within about a
    minute, instead of a write that hangs invisibly to the breaker; SINK_URL's own values win."""
    dsns = []
    for url in (sink_url, f"{sink_url}?keepalives_idle=5"):
        engine = create_sink_engine(url, None)
        try:
            with engine.connect() as conn:
                driver = conn.connection.driver_connection
                assert driver is not None
                dsns.append(dict(item.split("=", 1) for item in driver.info.dsn.split()))
        finally:
            engine.dispose()
    assert {k: dsns[0][k] for k in ("keepalives", "keepalives_idle", "tcp_user_timeout")} == {
        "keepalives": "1", "keepalives_idle": "30", "tcp_user_timeout": "60000"}
    assert dsns[1]["keepalives_idle"] == "5"


def test_an_in_memory_sqlite_sink_is_one_database_for_every_thread() -> None:
    """SINK_URL=sqlite:// (the benchmark takes the database out this way): the table made at start on the
    main thread must be there for the sink's worker thread."""
    sink = SqlSink(create_sink_engine("sqlite://", None), "events", upsert=False)
    try:
        sink.prepare(BASE)
        record = DecodedRecord(RawRecord("t", 0, 1, 0, None, b"v"), "k1", {"event_id": "e1", "n": 1})
        written: list[object] = []
        worker = threading.Thread(target=lambda: written.append(sink.write([record]).written))
        worker.start()
        worker.join(timeout=30)
        assert written == [{"t": 1}]
    finally:
        sink.close()
