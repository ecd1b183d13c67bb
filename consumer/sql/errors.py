"""Every database error as one of ours, by SQLSTATE (or SQLite's result code), never by message text:
transient (retried behind the breaker), the row's fault (isolated and dead-lettered), or fatal.

One table per database decides. A full code is looked up before its class (the first two characters), so a
single code can leave its class. A code in neither is blamed on the rows (the batch is bisected down to the
rows that fail, each dead-lettered with stage `sink`, and the dead-letter guard stops a flood) and logged
once per code as a WARNING, so that an operator sees it and the table can learn it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from enum import Enum

import psycopg
from sqlalchemy.exc import DBAPIError

from consumer.errors import (
    ConsumerError,
    FatalError,
    RecordRejectedError,
    SinkRefusedError,
    SinkUnavailableError,
)

log = logging.getLogger(__name__)


class Blame(Enum):
    TRANSIENT = "transient"  # the database, for now: retry the same batch, never dead-letter
    RECORD = "record"  # the row: bisect the batch, dead-letter the row with stage `sink`
    FATAL = "fatal"  # our configuration or the database's: stop (exit 1)
    REFUSED = "refused"  # fatal, and it names SINK_URL: exit 2 at start (a configuration error), exit 1 mid-run


# SQLSTATE (PostgreSQL appendix A): a class (two characters) or a full code (five). The transient classes
# are the contract's plus two lock waits, and the only ones retried forever.
SQLSTATE_BLAME: dict[str, Blame] = {
    "08": Blame.TRANSIENT,  # connection exception
    "40": Blame.TRANSIENT,  # transaction rollback: serialization failure, deadlock
    "53": Blame.TRANSIENT,  # insufficient resources: disk full, out of memory, too many connections
    "57": Blame.TRANSIENT,  # operator intervention: admin shutdown, query_canceled (57014: timeouts, our cancels)
    "58": Blame.TRANSIENT,  # system error: I/O error
    # A lock another session holds (a `lock_timeout` set on our role ran out, a table in use): it passes, and
    # blaming rows for it would dead-letter good records by the batch.
    "55P03": Blame.TRANSIENT,  # lock_not_available
    "55006": Blame.TRANSIENT,  # object_in_use
    "22": Blame.RECORD,  # data exception: a value out of range, a bad date, a NUL byte
    "23": Blame.RECORD,  # integrity constraint violation: NOT NULL, CHECK, foreign key
    "54": Blame.RECORD,  # program limit exceeded: a key too long for its index, a row too wide
    "P0001": Blame.RECORD,  # raise_exception: a trigger refused the row
    "P0004": Blame.RECORD,  # assert_failure: a trigger's ASSERT refused the row
    "28": Blame.REFUSED,  # invalid authorization specification: authentication failed, no such role
    "42501": Blame.REFUSED,  # insufficient_privilege: permission denied
    "42": Blame.FATAL,  # syntax error or access rule violation: a missing table or column
    "3D": Blame.REFUSED,  # invalid catalog name: the database does not exist
    "3F": Blame.FATAL,  # invalid schema name: the schema of the search path does not exist
    "0A": Blame.FATAL,  # feature not supported
    "25006": Blame.FATAL,  # read_only_sql_transaction: we reached a standby; a restart reconnects to the primary
    "XX": Blame.FATAL,  # internal error: data or index corrupted
}

# SQLite primary result codes (extended ones, SQLITE_CONSTRAINT_UNIQUE, fall back to their primary code).
SQLITE_BLAME: dict[str, Blame] = {
    "SQLITE_BUSY": Blame.TRANSIENT,  # another connection holds the lock past the busy timeout
    "SQLITE_LOCKED": Blame.TRANSIENT,
    "SQLITE_IOERR": Blame.TRANSIENT,
    "SQLITE_CANTOPEN": Blame.TRANSIENT,
    "SQLITE_FULL": Blame.TRANSIENT,  # disk full
    "SQLITE_PROTOCOL": Blame.TRANSIENT,
    "SQLITE_INTERRUPT": Blame.TRANSIENT,  # our own interrupt (a stop)
    "SQLITE_CONSTRAINT": Blame.RECORD,
    "SQLITE_MISMATCH": Blame.RECORD,
    "SQLITE_TOOBIG": Blame.RECORD,
    "SQLITE_RANGE": Blame.RECORD,
    "SQLITE_ERROR": Blame.FATAL,  # SQL error: a missing table or column
    "SQLITE_READONLY": Blame.FATAL,
    "SQLITE_PERM": Blame.FATAL,
    "SQLITE_AUTH": Blame.FATAL,
    "SQLITE_CORRUPT": Blame.FATAL,
    "SQLITE_NOTADB": Blame.FATAL,  # SINK_URL names a file that is not a database
}

_ERROR_OF = {
    Blame.TRANSIENT: SinkUnavailableError,
    Blame.RECORD: RecordRejectedError,
    Blame.FATAL: FatalError,
    Blame.REFUSED: SinkRefusedError,
}

# libpq reports a connection the server refused during its start-up without the SQLSTATE (the server's
# ErrorResponse carries one; libpq keeps only the text, and psycopg has no code to give). So for those
# alone, the server's message stands in for its code: the refusals that name our configuration. A server
# whose lc_messages is not English is not recognised; its refusals stay transient (retried), as before.
_STARTUP_REFUSALS = (
    (re.compile(r'FATAL:\s+database ".*" does not exist'), "3D000"),
    (re.compile(r"FATAL:\s+password authentication failed"), "28P01"),
    (re.compile(r"FATAL:\s+\w+ authentication failed"), "28000"),  # peer, ident, cert, ...
    (re.compile(r'FATAL:\s+role ".*" (does not exist|is not permitted to log in)'), "28000"),
    (re.compile(r"FATAL:\s+no pg_hba\.conf entry"), "28000"),
    (re.compile(r"FATAL:\s+permission denied for database"), "42501"),
)


def startup_refusal_sqlstate(orig: BaseException) -> str | None:
    """The SQLSTATE of a connection refused in its start-up, read from libpq's message; None otherwise."""
    if not isinstance(orig, psycopg.OperationalError):
        return None
    text = str(orig)
    return next((code for pattern, code in _STARTUP_REFUSALS if pattern.search(text)), None)


def sqlstate_blame(sqlstate: str) -> Blame | None:
    """The table's answer for a SQLSTATE: its full code first, then its class; None when in neither."""
    return SQLSTATE_BLAME.get(sqlstate) or SQLSTATE_BLAME.get(sqlstate[:2])


def sqlite_blame(name: str) -> Blame | None:
    """The table's answer for a SQLite result code name, extended codes by their primary code."""
    return SQLITE_BLAME.get(name) or SQLITE_BLAME.get("_".join(name.split("_")[:2]))


def error_code(exc: BaseException) -> str | None:
    """The SQLSTATE (PostgreSQL) or result code name (SQLite) of a driver or SQLAlchemy error, if any."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None)
    return str(code) if code else None


class SqlErrorClassifier:
    """Classifies database errors for one sink; remembers which codes outside the tables it has warned about."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._lock = threading.Lock()  # the sink thread and the start-up thread both classify

    def __call__(self, exc: BaseException) -> ConsumerError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip()
        message = f"{type(orig).__name__}: {text.splitlines()[0] if text else ''}"
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return SinkUnavailableError(message)
        if isinstance(orig, UnicodeEncodeError):
            # A value the driver cannot encode (a lone surrogate from JSON's "\ud800"): the row's fault, raised
            # before anything reached the database. Retrying it would block the partition for good.
            return RecordRejectedError(message)
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or startup_refusal_sqlstate(orig)
        if sqlstate:
            return self._by_table(sqlstate_blame(sqlstate), sqlstate, f"{message} (SQLSTATE {sqlstate})")
        if isinstance(orig, (psycopg.DataError, sqlite3.DataError)):
            # The driver refused a value before sending it (PEP 249 DataError: a NUL byte in a text field for
            # psycopg): the row's fault, not the database's. Retrying it would block the partition for good.
            return RecordRejectedError(message)
        sqlite_name = getattr(orig, "sqlite_errorname", None)
        if sqlite_name:
            return self._by_table(sqlite_blame(sqlite_name), sqlite_name, f"{message} ({sqlite_name})")
        # No code: the connection failed or broke before the server could say why.
        return SinkUnavailableError(message)

    def _by_table(self, blame: Blame | None, code: str, message: str) -> ConsumerError:
        if blame is None:
            self._warn_once(code, message)
            blame = Blame.RECORD
        return _ERROR_OF[blame](message)

    def _warn_once(self, code: str, message: str) -> None:
        with self._lock:
            if code in self._warned:
                return
            self._warned.add(code)
        log.warning("database error code with no decided class: blaming the rows (bisected, dead-lettered "
                    "with stage sink)", extra={"sqlstate": code, "error": message})


def is_cancellation(exc: BaseException) -> bool:
    """Whether the statement ended because it was cancelled (SQLSTATE 57014 query_canceled, SQLite's
    SQLITE_INTERRUPT): ours when the sink had asked for it, else someone else's (statement_timeout, an
    operator's pg_cancel_backend), which stays transient like the rest of class 57."""
    return error_code(exc) in ("57014", "SQLITE_INTERRUPT")
