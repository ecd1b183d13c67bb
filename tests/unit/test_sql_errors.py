"""Every SQLSTATE and SQLite result code has a decided class: one case per row of the tables in
consumer/sql/errors.py (written out here, so a changed row fails a test), and a code in neither table is
blamed on the rows and warned about once per code."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import psycopg.errors
import pytest
from sqlalchemy.exc import OperationalError

from consumer.errors import FatalError, RecordRejectedError, SinkRefusedError, SinkUnavailableError
from consumer.sql.errors import SQLITE_BLAME, SQLSTATE_BLAME, SqlErrorClassifier

# (a SQLSTATE of the row, the table key it belongs to, what it must become)
_SQLSTATE_CASES = [
    ("08006", "08", SinkUnavailableError),  # connection_failure
    ("40001", "40", SinkUnavailableError),  # serialization_failure
    ("40P01", "40", SinkUnavailableError),  # deadlock_detected
    ("53300", "53", SinkUnavailableError),  # too_many_connections
    ("57014", "57", SinkUnavailableError),  # query_canceled: statement timeouts and our own cancels
    ("57P01", "57", SinkUnavailableError),  # admin_shutdown
    ("58030", "58", SinkUnavailableError),  # io_error
    ("55P03", "55P03", SinkUnavailableError),  # lock_not_available: a lock_timeout ran out
    ("55006", "55006", SinkUnavailableError),  # object_in_use
    ("22003", "22", RecordRejectedError),  # numeric_value_out_of_range
    ("23502", "23", RecordRejectedError),  # not_null_violation
    ("54000", "54", RecordRejectedError),  # program_limit_exceeded: a key too long for its index
    ("P0001", "P0001", RecordRejectedError),  # raise_exception in a trigger
    ("P0004", "P0004", RecordRejectedError),  # assert_failure in a trigger
    ("28P01", "28", SinkRefusedError),  # invalid_password
    ("42501", "42501", SinkRefusedError),  # insufficient_privilege
    ("42P01", "42", FatalError),  # undefined_table
    ("3D000", "3D", SinkRefusedError),  # invalid_catalog_name: no such database
    ("3F000", "3F", FatalError),  # invalid_schema_name
    ("0A000", "0A", FatalError),  # feature_not_supported
    ("25006", "25006", FatalError),  # read_only_sql_transaction: a standby
    ("XX001", "XX", FatalError),  # data_corrupted
]

_SQLITE_CASES = [
    ("SQLITE_BUSY", SinkUnavailableError),
    ("SQLITE_LOCKED", SinkUnavailableError),
    ("SQLITE_IOERR", SinkUnavailableError),
    ("SQLITE_CANTOPEN", SinkUnavailableError),
    ("SQLITE_FULL", SinkUnavailableError),
    ("SQLITE_PROTOCOL", SinkUnavailableError),
    ("SQLITE_INTERRUPT", SinkUnavailableError),
    ("SQLITE_CONSTRAINT", RecordRejectedError),
    ("SQLITE_MISMATCH", RecordRejectedError),
    ("SQLITE_TOOBIG", RecordRejectedError),
    ("SQLITE_RANGE", RecordRejectedError),
    ("SQLITE_ERROR", FatalError),
    ("SQLITE_READONLY", FatalError),
    ("SQLITE_PERM", FatalError),
    ("SQLITE_AUTH", FatalError),
    ("SQLITE_CORRUPT", FatalError),
    ("SQLITE_NOTADB", FatalError),
]


def _postgres_error(sqlstate: str) -> OperationalError:
    """As SQLAlchemy hands it to the sink: the psycopg error of that SQLSTATE wrapped in a DBAPIError."""
    orig = psycopg.errors.lookup(sqlstate)("the server's message")
    return OperationalError("INSERT ...", {}, orig)


def _sqlite_error(name: str) -> OperationalError:
    orig = sqlite3.OperationalError("the library's message")
    orig.sqlite_errorname = name
    return OperationalError("INSERT ...", {}, orig)


@pytest.mark.parametrize(("sqlstate", "row", "expected"), _SQLSTATE_CASES, ids=[c[0] for c in _SQLSTATE_CASES])
def test_each_sqlstate_row_decides_its_class(sqlstate: str, row: str, expected: type[Exception]) -> None:
    error = SqlErrorClassifier()(_postgres_error(sqlstate))
    assert type(error) is expected
    assert f"SQLSTATE {sqlstate}" in str(error)
    assert row in SQLSTATE_BLAME


def test_every_sqlstate_row_has_a_case() -> None:
    assert {row for _code, row, _expected in _SQLSTATE_CASES} == set(SQLSTATE_BLAME)


def test_only_the_contracts_transient_classes_and_lock_waits_are_retried() -> None:
    transient = {row for row, blame in SQLSTATE_BLAME.items() if blame.value == "transient"}
    assert transient == {"08", "40", "53", "57", "58", "55P03", "55006"}


@pytest.mark.parametrize(("name", "expected"), _SQLITE_CASES, ids=[c[0] for c in _SQLITE_CASES])
def test_each_sqlite_row_decides_its_class(name: str, expected: type[Exception]) -> None:
    assert type(SqlErrorClassifier()(_sqlite_error(name))) is expected


def test_every_sqlite_row_has_a_case() -> None:
    assert {name for name, _expected in _SQLITE_CASES} == set(SQLITE_BLAME)


def test_an_extended_sqlite_code_follows_its_primary_code() -> None:
    assert type(SqlErrorClassifier()(_sqlite_error("SQLITE_CONSTRAINT_UNIQUE"))) is RecordRejectedError
    assert type(SqlErrorClassifier()(_sqlite_error("SQLITE_BUSY_SNAPSHOT"))) is SinkUnavailableError


def test_a_code_in_no_table_blames_the_rows_and_warns_once_per_code(caplog: pytest.LogCaptureFixture) -> None:
    classify = SqlErrorClassifier()
    with caplog.at_level(logging.WARNING, logger="consumer.sql.errors"):
        first = classify(_postgres_error("55000"))  # object_not_in_prerequisite_state: no row decides it
        classify(_postgres_error("55000"))
        classify(_postgres_error("2BP01"))  # dependent_objects_still_exist
        sqlite = classify(_sqlite_error("SQLITE_SCHEMA"))
        classify(_sqlite_error("SQLITE_SCHEMA"))
    assert type(first) is RecordRejectedError
    assert type(sqlite) is RecordRejectedError
    warned = [record.__dict__["sqlstate"] for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == ["55000", "2BP01", "SQLITE_SCHEMA"]


def test_a_value_the_driver_refuses_before_sending_is_the_rows_fault() -> None:
    assert type(SqlErrorClassifier()(psycopg.DataError("NUL byte in a string"))) is RecordRejectedError


def test_an_error_without_a_code_is_transient() -> None:
    orig = psycopg.OperationalError("connection refused")
    assert type(SqlErrorClassifier()(OperationalError("SELECT 1", {}, orig))) is SinkUnavailableError


def test_a_value_the_driver_cannot_encode_is_the_rows_fault() -> None:
    """A lone surrogate (JSON's "\\ud800") fails in the driver's encoding: dead-letter the row, never retry."""
    with pytest.raises(UnicodeEncodeError) as raised:
        "\ud800".encode()
    assert isinstance(SqlErrorClassifier()(raised.value), RecordRejectedError)


@pytest.mark.parametrize(
    ("server_said", "sqlstate"),
    [
        ('FATAL:  database "nosuch" does not exist', "3D000"),
        ('FATAL:  password authentication failed for user "writer"', "28P01"),
        ('FATAL:  role "nobody" does not exist', "28000"),
        ('FATAL:  role "locked" is not permitted to log in', "28000"),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "writer", database "db", no encryption', "28000"),
        ('FATAL:  permission denied for database "db"', "42501"),
    ],
)
def test_a_connection_refused_in_its_start_up_is_refused_by_its_sqlstate(server_said: str, sqlstate: str) -> None:
    """libpq gives no SQLSTATE for these: the server's start-up message stands in for it."""
    orig = psycopg.OperationalError(f'connection failed: connection to server at "db", port 5432 failed: {server_said}')
    error = SqlErrorClassifier()(OperationalError(None, None, orig))
    assert type(error) is SinkRefusedError
    assert f"SQLSTATE {sqlstate}" in str(error)


@pytest.mark.parametrize(
    "server_said",
    ["FATAL:  the database system is starting up", "FATAL:  sorry, too many clients already",
     "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"],
)
def test_other_connection_failures_stay_transient(server_said: str) -> None:
    orig = psycopg.OperationalError(f'connection failed: connection to server at "db", port 5432 failed: {server_said}')
    assert type(SqlErrorClassifier()(OperationalError(None, None, orig))) is SinkUnavailableError
