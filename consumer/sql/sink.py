"""The SQL sink (SQLAlchemy Core): create or evolve the table, then write each batch in one transaction.

Writes are idempotent by `_idempotency_key`: `insert` keeps the first write (a replay is a no-op),
`upsert` keeps the highest offset of a partition (an older replay never overwrites a newer row).
PostgreSQL gets COPY (binary when the values are typed) into a session staging table plus one
set-based INSERT ... SELECT ... ON CONFLICT; SQLite gets a multi-row INSERT ... ON CONFLICT. Every driver error
leaves this module classified by consumer.sql.errors: transient, record-level, or fatal.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from consumer.errors import (
    ConfigError,
    ConsumerError,
    FatalError,
    RecordRejectedError,
    SinkRefusedError,
    SinkUnavailableError,
    WriteCancelledError,
)
from consumer.records import ColumnSpec, DecodedRecord, WriteResult
from consumer.sql.columns import KEY_COLUMN, META_COLUMNS, column_type, meta_columns
from consumer.sql.errors import SqlErrorClassifier, is_cancellation
from consumer.sql.postgres import (
    BINARY_COPYABLE,
    DUMP_ERRORS,
    STAGED_WIDE,
    JsonbTextBinaryDumper,
    JsonTextBinaryDumper,
    NotBinaryCopyable,
    UuidTextBinaryDumper,
)
from consumer.sql.tls import tls_refusal

log = logging.getLogger(__name__)

# How long `cancel` waits for PostgreSQL to take a cancel request (it opens a connection of its own); a
# server that does not answer in time is not waited for: the stop is bounded, the write left behind.
_CANCEL_TIMEOUT_S = 2.0


def _timestamp(ms: int) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC) if ms >= 0 else None


def _cells_getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A row's cells in column order, as a tuple: operator.itemgetter does it in C (a third of the list
    comprehension's time for the benchmark's eleven columns); raises KeyError for a missing column."""
    if len(names) == 1:
        only = names[0]
        return lambda row: (row[only],)
    if not names:
        return lambda row: ()
    return operator.itemgetter(*names)


class _Timestamps(dict[int, "dt.datetime | None"]):
    """`_timestamp` memoised for one batch: records produced together share their millisecond (a backlog
    holds about a hundred per millisecond), and a lookup costs a tenth of building the datetime."""

    def __missing__(self, ms: int) -> dt.datetime | None:
        stamp = self[ms] = _timestamp(ms)
        return stamp


class SqlSink:
    """SQLAlchemy Core sink for PostgreSQL and SQLite (the dialects we test)."""

    def __init__(self, engine: Engine, table_name: str, upsert: bool, typed_values: bool = False) -> None:
        """`typed_values`: cells have their column's Python type (decoded Avro), so PostgreSQL is written with
        binary COPY (about half the client and server CPU of text); JSON values keep text COPY, which lets
        PostgreSQL parse what the JSON gave."""
        self._engine = engine
        self._table_name = table_name
        self._upsert = upsert
        self._postgres = engine.dialect.name == "postgresql"
        self._binary_copy = typed_values and self._postgres
        self._table: sa.Table | None = None
        self._value_names: list[str] = []
        self._prepared: frozenset[ColumnSpec] | None = None
        self._statement: Any = None
        self._classify = SqlErrorClassifier()
        # The driver connection of the transaction running now, for `cancel` on another thread.
        self._running_lock = threading.Lock()
        self._running: Any = None
        self._cancel_requested = False

    # --- schema --------------------------------------------------------------------------------------
    def prepare(self, columns: Sequence[ColumnSpec]) -> None:
        wanted = frozenset(columns)
        if wanted == self._prepared:
            return
        table = self._create_or_evolve_racing(list(columns))
        self._table = table
        self._value_names = [c.name for c in columns if c.name in table.c and c.name not in META_COLUMNS]
        self._statement = self._build_statement(table)
        self._prepared = wanted

    def _create_or_evolve_racing(self, columns: list[ColumnSpec]) -> sa.Table:
        """Several processes of a group start together (WORKERS, pods of a rollout) and may each find the
        table or a column missing: PostgreSQL serialises their DDL with a transaction-scoped advisory lock;
        elsewhere (SQLite) a DDL that lost the race fails, and one fresh look settles it."""
        try:
            with self._translated(), self._engine.begin() as conn:
                return self._create_or_evolve(conn, columns)
        except (FatalError, RecordRejectedError) as lost_race:
            log.info("sink table changed under us; looking again", extra={"error": str(lost_race)})
            with self._translated(), self._engine.begin() as conn:
                return self._create_or_evolve(conn, columns)

    def _create_or_evolve(self, conn: Connection, columns: list[ColumnSpec]) -> sa.Table:
        if self._postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": self._table_name})
        inspector = sa.inspect(conn)
        if not inspector.has_table(self._table_name):
            table = sa.Table(
                self._table_name, sa.MetaData(),
                *[sa.Column(c.name, column_type(c), nullable=c.nullable) for c in columns
                  if c.name not in META_COLUMNS],
                *meta_columns(),
            )
            table.create(conn, checkfirst=True)
            log.info("created sink table", extra={"table": self._table_name, "columns": len(table.c)})
            return table
        existing = {column["name"] for column in inspector.get_columns(self._table_name)}
        missing = [c for c in columns if c.name not in existing and c.name not in META_COLUMNS]
        for column in missing:
            self._add_column(conn, column)
        absent_meta = [name for name in META_COLUMNS if name not in existing]
        if absent_meta:
            raise FatalError(f"table {self._table_name!r} lacks the columns {absent_meta}")
        return sa.Table(self._table_name, sa.MetaData(), autoload_with=conn)

    def _add_column(self, conn: Connection, column: ColumnSpec) -> None:
        preparer = conn.dialect.identifier_preparer
        type_sql = column_type(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(self._table_name)} ADD COLUMN {preparer.quote(column.name)} {type_sql}"
        )
        log.info("added sink column", extra={"table": self._table_name, "column": column.name})

    def _build_statement(self, table: sa.Table) -> Any:
        names = [*self._value_names, *META_COLUMNS]
        if self._postgres:
            stage = sa.Table(self._stage_name(), sa.MetaData(), *[sa.Column(n, table.c[n].type) for n in names])
            staged = sa.select(*[stage.c[n] for n in names]).where(stage.c._kafka_topic == sa.bindparam("topic"))
            insert: Any = postgresql.insert(table).from_select(names, staged)
            # Compiled once to SQL text: an Insert construct's CursorResult reports rowcount -1 on psycopg 3,
            # while the same SQL through exec_driver_sql counts the rows written, which we need.
        else:
            insert = sqlite.insert(table)
        statement = self._conflict_clause(table, insert, names)
        return str(statement.compile(dialect=self._engine.dialect)) if self._postgres else statement

    def _conflict_clause(self, table: sa.Table, insert: Any, names: list[str]) -> Any:
        if not self._upsert:
            return insert.on_conflict_do_nothing(index_elements=[KEY_COLUMN])
        excluded = insert.excluded
        replay_or_older = sa.and_(
            table.c._kafka_topic == excluded._kafka_topic,
            table.c._kafka_partition == excluded._kafka_partition,
            table.c._kafka_offset >= excluded._kafka_offset,
        )
        return insert.on_conflict_do_update(
            index_elements=[KEY_COLUMN],
            set_={name: excluded[name] for name in names if name != KEY_COLUMN},
            where=sa.not_(replay_or_older),
        )

    def _stage_name(self) -> str:
        return "_mbc_stage"

    # --- writing -------------------------------------------------------------------------------------
    def write(self, records: Sequence[DecodedRecord]) -> WriteResult:
        if self._table is None:
            raise FatalError("sink written before prepare()")
        by_topic: dict[str, list[DecodedRecord]] = {}
        for record in records:
            by_topic.setdefault(record.raw.topic, []).append(record)
        try:
            written = self._write_once(records, by_topic)
        except NotBinaryCopyable as exc:
            # Values of a type the binary form does not take (local-timestamp-* gives naive datetimes): the
            # transaction rolled back before anything was written; text COPY from now on, as it always did.
            self._binary_copy = False
            log.info("sink values not writable as binary COPY; using text COPY", extra={"reason": str(exc)})
            written = self._write_once(records, by_topic)
        return WriteResult(attempted={t: len(g) for t, g in by_topic.items()}, written=written)

    def _write_once(self, records: Sequence[DecodedRecord], by_topic: dict[str, list[DecodedRecord]]) -> dict[str, int]:
        with self._translated(), self._engine.begin() as conn, self._cancellable(conn):
            if self._postgres:
                return self._write_postgres(conn, records, list(by_topic))
            return {topic: self._write_sqlite(conn, group) for topic, group in by_topic.items()}

    def _write_sqlite(self, conn: Connection, records: Sequence[DecodedRecord]) -> int:
        names = self._value_names
        rows = []
        for record in records:
            raw, row = record.raw, record.row
            values = {name: row.get(name) for name in names}
            values["_kafka_topic"] = raw.topic
            values["_kafka_partition"] = raw.partition
            values["_kafka_offset"] = raw.offset
            values["_kafka_timestamp"] = _timestamp(raw.timestamp_ms)
            values[KEY_COLUMN] = record.key
            rows.append(values)
        return int(conn.execute(self._statement, rows).rowcount)

    def _write_postgres(self, conn: Connection, records: Sequence[DecodedRecord], topics: list[str]) -> dict[str, int]:
        """COPY the batch into the staging table, then one INSERT ... SELECT per topic (so the rows written
        are counted per topic), all in the caller's transaction."""
        preparer = conn.dialect.identifier_preparer
        names = [*self._value_names, *META_COLUMNS]
        stage = preparer.quote(self._stage_name())
        quoted = ", ".join(preparer.quote(name) for name in names)
        oids = self._ensure_stage(conn, names)
        binary = self._binary_copy and all(oid in BINARY_COPYABLE for oid in oids)
        value_names = self._value_names
        cells_of = _cells_getter(value_names)
        stamps = _Timestamps()
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            if binary:
                for dumper in (UuidTextBinaryDumper, JsonTextBinaryDumper, JsonbTextBinaryDumper):
                    cursor.adapters.register_dumper(None, dumper)  # by OID, for this cursor only
            try:
                with cursor.copy(f"COPY {stage} ({quoted}) FROM STDIN{' (FORMAT BINARY)' if binary else ''}") as copy:
                    if binary:
                        copy.set_types(oids)
                    for record in records:
                        raw, row = record.raw, record.row
                        try:
                            values = cells_of(row)
                        except KeyError:  # a row of an older writer schema, without a newer column
                            values = tuple(row.get(name) for name in value_names)
                        copy.write_row((*values, raw.topic, raw.partition, raw.offset, stamps[raw.timestamp_ms],
                                        record.key))
            except DUMP_ERRORS as exc:
                if not binary or getattr(exc, "sqlstate", None) or isinstance(exc, UnicodeEncodeError):
                    raise  # the server's answer, text COPY's own refusal or a value's: classified by _translated
                raise NotBinaryCopyable(f"{type(exc).__name__}: {exc}") from exc
        return {topic: int(conn.exec_driver_sql(self._statement, {"topic": topic}).rowcount) for topic in topics}

    def _ensure_stage(self, conn: Connection, names: list[str]) -> list[int]:
        """The staging table of this session, with the target's column types as they are now (narrow numbers
        staged wide, see STAGED_WIDE); returns the staged columns' type OIDs, in order.

        It lives as long as the connection and is emptied at every commit (ON COMMIT DELETE ROWS). Each
        transaction reads the target's and the stage's columns from the catalog in one round trip and makes
        the stage anew only when they differ: an operator who widens a column sees replayed rows fit at once,
        without restarting us, and a batch costs no DDL (a table made and dropped per batch cost PostgreSQL
        CPU on every batch and kept its catalog churning)."""
        preparer = conn.dialect.identifier_preparer
        stage = f"pg_temp.{preparer.quote(self._stage_name())}"
        target: dict[str, tuple[int, str]] = {}
        staged_now: list[tuple[str, str]] = []
        for is_target, name, oid, type_sql in conn.exec_driver_sql(
            "SELECT attrelid = %(table)s::regclass, attname, atttypid, format_type(atttypid, atttypmod) "
            "FROM pg_attribute WHERE attrelid IN (%(table)s::regclass, to_regclass(%(stage)s)) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
            {"table": preparer.quote(self._table_name), "stage": stage},
        ):
            if is_target:
                target[name] = (int(oid), type_sql)
            else:
                staged_now.append((name, type_sql))
        missing = [name for name in names if name not in target]
        if missing:
            raise FatalError(f"table {self._table_name!r} lacks the columns {missing}")
        wanted = [STAGED_WIDE.get(target[name][0], target[name]) for name in names]
        wanted_columns = [(name, type_sql) for name, (_oid, type_sql) in zip(names, wanted, strict=True)]
        if staged_now != wanted_columns:
            columns = ", ".join(f"{preparer.quote(name)} {type_sql}" for name, type_sql in wanted_columns)
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {stage}")
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {preparer.quote(self._stage_name())} ({columns}) "
                                 "ON COMMIT DELETE ROWS")
        return [oid for oid, _type_sql in wanted]

    def verify(self, columns: Sequence[ColumnSpec]) -> str:
        """What `prepare` would do with the table, changing nothing: it exists and has our columns (those of
        `columns` it lacks would be added), or it is missing and may be created. Raises FatalError for a
        table without our meta columns, SinkRefusedError when we may not create the missing table."""
        with self._translated(), self._engine.connect() as conn:
            inspector = sa.inspect(conn)
            if inspector.has_table(self._table_name):
                existing = {column["name"] for column in inspector.get_columns(self._table_name)}
                absent_meta = [name for name in META_COLUMNS if name not in existing]
                if absent_meta:
                    raise FatalError(f"table {self._table_name!r} lacks the columns {absent_meta}")
                added = [c.name for c in columns if c.name not in existing and c.name not in META_COLUMNS]
                return f"table {self._table_name} exists ({len(existing)} columns)" + (
                    f"; adds {', '.join(added)}" if added else "")
            if self._postgres:
                self._require_create_privilege(conn)
            return f"table {self._table_name} missing; created at start"

    def _require_create_privilege(self, conn: Connection) -> None:
        schema, may_create = conn.execute(sa.text(
            "SELECT current_schema(), has_schema_privilege(current_user, current_schema(), 'CREATE')"
        )).one()
        if schema is None:
            raise SinkRefusedError("no schema of the search_path exists to create the table in")
        if not may_create:
            raise SinkRefusedError(f"table {self._table_name!r} does not exist and the user may not create it: "
                                   f"no CREATE privilege on schema {schema!r} (SQLSTATE 42501)")

    def column_names(self) -> frozenset[str] | None:
        with self._translated(), self._engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self._table_name):
                return None
            return frozenset(column["name"] for column in inspector.get_columns(self._table_name))

    def ping(self) -> None:
        """One round trip (at start and by `check`). A database whose certificate SINK_URL's CA does not verify
        is a configuration error (exit 2 naming SINK_URL), not an outage to wait out."""
        try:
            with self._translated(), self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SinkUnavailableError:
            refusal = tls_refusal(self._engine.url) if self._postgres else None
            if refusal is not None:
                raise ConfigError(f"SINK_URL: {refusal}") from None
            raise

    def cancel(self) -> None:
        with self._running_lock:
            driver = self._running
            if driver is None:
                return
            self._cancel_requested = True
        log.warning("cancelling the write in progress")
        if not self._postgres:
            # Stops a running statement. SQLite's wait for another writer's lock (the 30 s busy timeout) does not
            # see it: that write is left on the sink's daemon thread, and nothing of it was written.
            driver.interrupt()
            return
        try:
            driver.cancel_safe(timeout=_CANCEL_TIMEOUT_S)  # a server-side cancel: 57014 on the write's connection
        except psycopg.Error as exc:  # the server is unreachable too: the write is left behind, bounded anyway
            log.warning("could not cancel the write in progress", extra={"error": f"{type(exc).__name__}: {exc}"})

    @contextmanager
    def _cancellable(self, conn: Connection) -> Iterator[None]:
        """Let `cancel` reach this transaction's connection while it runs."""
        with self._running_lock:
            self._running = conn.connection.driver_connection
            self._cancel_requested = False
        try:
            yield
        finally:
            with self._running_lock:
                self._running = None

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Every database error leaves as one of ours."""
        try:
            yield
        except ConsumerError:
            raise
        except (SQLAlchemyError, OSError, UnicodeEncodeError) as exc:  # the last: psycopg's COPY encoding a value
            raise self._ours(exc) from exc
        except Exception as exc:  # the driver's own errors (psycopg.Error from COPY), classified
            if type(exc).__module__.split(".")[0] in ("psycopg", "sqlite3"):
                raise self._ours(exc) from exc
            raise

    def _ours(self, exc: BaseException) -> ConsumerError:
        """A cancellation we asked for is not the database's failure nor the rows'; anything else is classified."""
        if self._cancel_requested and is_cancellation(exc):
            return WriteCancelledError(f"write cancelled by the stop: {type(exc).__name__}")
        return self._classify(exc)
