"""SHUTDOWN_TIMEOUT_MS is a hard bound: a SIGTERM while the write is stuck behind a lock another session holds
ends the process with exit 1 once the timeout ran out; the write is cancelled (PostgreSQL: a server-side
cancel, so its transaction does not linger waiting on the lock after we are gone), nothing is committed, and
the next run writes every record exactly once.

The lock is the test's own: PostgreSQL's ACCESS EXCLUSIVE on the sink table from a session of the test;
SQLite's write lock from BEGIN IMMEDIATE in a separate process (opening and closing the database file in the
test's process is harmless to the service's locks, which live in its own process, but a process of its own
also shows that the lock is an ordinary other writer's).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.db import fetch, make_engine
from support.runs import (
    assert_one_row_per_key,
    rows_or_zero,
    service_env,
    setup_topic,
    valid_messages,
    wait_committed,
)
from support.service import ServiceProcess
from support.waiting import wait_until

from consumer.errors import WriteCancelledError
from consumer.records import ColumnKind, ColumnSpec, DecodedRecord, RawRecord
from consumer.sql.engine import create_sink_engine
from consumer.sql.sink import SqlSink

StartService = Callable[..., ServiceProcess]

RECORDS = 300
SHUTDOWN_TIMEOUT_MS = "3000"
# The harness's bound on the stop: generous beside the 3 s timeout, only there so a hang fails the test.
STOP_WAIT_S = 30.0


@contextmanager
def _postgres_table_lock(url: str, table: str) -> Iterator[None]:
    """ACCESS EXCLUSIVE on `table` in a session of the test until the block ends (then rolled back)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


@contextmanager
def _sqlite_write_lock(url: str) -> Iterator[None]:
    """A write transaction (BEGIN IMMEDIATE) held on the database by another process until the block ends."""
    path = sa.make_url(url).database
    program = (f"import sqlite3, sys\nc = sqlite3.connect({path!r}, isolation_level=None)\n"
               "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # end of input: the holder exits, its transaction rolled back
        holder.wait(timeout=STOP_WAIT_S)


def _postgres_lock_waiters(url: str, table: str) -> int:
    """Sessions whose statement on `table` waits for a lock (the service's INSERT behind the test's lock)."""
    return int(fetch(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND datname = current_database() AND query LIKE :pattern",
                     {"pattern": f"%{table}%"})[0].n)


def _records_seen(svc: ServiceProcess) -> float:
    return float(svc.metric_sum("consumer_lag_records"))


def test_a_sigterm_while_the_write_waits_on_a_lock_exits_1_at_the_timeout_and_the_next_run_writes_once(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    postgres = sa.make_url(sink_url).get_backend_name() == "postgresql"
    topic, writer = setup_topic(kafka_bootstrap, make_topic)
    group = unique("group")
    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table,
                      SHUTDOWN_TIMEOUT_MS=SHUTDOWN_TIMEOUT_MS, BATCH_MAX_WAIT_MS="100")
    svc = service(env)
    svc.wait_ready()  # the table exists (made at start from SCHEMA_FILE's fields)

    lock = _postgres_table_lock(sink_url, sink_table) if postgres else _sqlite_write_lock(sink_url)
    with lock:
        writer.send(valid_messages(range(RECORDS)))
        if postgres:
            wait_until(lambda: _postgres_lock_waiters(sink_url, sink_table), 60, "the service's write waits on "
                       "the test's lock", until=lambda n: n >= 1)
        else:  # SQLite shows no waiters: the service has the records, and a batch of them is in the locked
            # sink (closed after BATCH_MAX_WAIT_MS) or goes there at the stop, which flushes the open batch
            wait_until(lambda: _records_seen(svc), 60, "the service sees the records", until=lambda n: n == RECORDS)
        assert svc.terminate(timeout_s=STOP_WAIT_S) == 1
        log = svc.log_text()
        assert "shutdown timeout ran out" in log
        assert "retrying" not in log and "Traceback" not in log, svc.log_tail()
        if postgres:  # cancelled on the server: nothing of ours is left waiting behind the lock we still hold
            wait_until(lambda: _postgres_lock_waiters(sink_url, sink_table), 10, "the cancelled write gone "
                       "from pg_stat_activity", until=lambda n: n == 0)
    assert rows_or_zero(sink_url, sink_table) == 0

    again = service(env)
    wait_committed(kafka_bootstrap, group, writer, [again])
    assert_one_row_per_key(sink_url, sink_table, RECORDS)
    assert again.terminate() == 0


def test_a_cancel_ends_the_running_write_as_write_cancelled_and_the_next_write_is_unaffected(tmp_path: Path) -> None:
    """Sink.cancel from another thread: the write running (a long statement, here a trigger's busy loop)
    ends with WriteCancelledError, not a sink outage; a cancel with nothing running does nothing."""
    sink = SqlSink(create_sink_engine(f"sqlite:///{tmp_path / 'sink.db'}", None), "events", upsert=False)
    started = threading.Event()

    @sa.event.listens_for(sink._engine, "connect")
    def _started_function(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("started", 0, lambda: started.set())

    try:
        sink.prepare([ColumnSpec("n", ColumnKind.BIGINT, True)])
        sink.cancel()  # nothing running: a no-op
        with sink._engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER slow BEFORE INSERT ON events WHEN NEW.n = 1 BEGIN SELECT started(); "
                "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                "SELECT x FROM c LIMIT 10000000000); END")
        outcome: Future[object] = Future()

        def write_slowly() -> None:
            try:
                outcome.set_result(sink.write([_record(1, n=1)]))
            except BaseException as exc:  # noqa: BLE001 - handed to the test through the future
                outcome.set_exception(exc)

        threading.Thread(target=write_slowly, daemon=True).start()
        assert started.wait(STOP_WAIT_S)
        sink.cancel()
        with pytest.raises(WriteCancelledError):
            outcome.result(timeout=STOP_WAIT_S)
        assert sink.write([_record(2, n=2)]).written == {"t": 1}
    finally:
        sink.close()


def _record(offset: int, **row: Any) -> DecodedRecord:
    return DecodedRecord(RawRecord("t", 0, offset, 0, None, b"v"), f"k{offset}", row)
