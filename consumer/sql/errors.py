"""Every database error as one of ours, by SQLSTATE class (or SQLite's result code), never by message text:
transient (retried behind the breaker), the row's fault (isolated and dead-lettered), or fatal."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError

from consumer.errors import ConsumerError, FatalError, RecordRejectedError, SinkUnavailableError

# SQLSTATE classes (the first two characters), per the contract's "Records, keys and order".
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_RECORD_CLASSES = frozenset({"22", "23"})
_FATAL_CLASSES = frozenset({"28", "42"})
# SQLite result codes (Python 3.11 exposes them as `sqlite_errorname`), same three-way split.
_SQLITE_RECORD = ("SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE")
_SQLITE_TRANSIENT = (
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_PROTOCOL",
    "SQLITE_INTERRUPT",
)


def classify(exc: BaseException) -> ConsumerError:
    """A driver or SQLAlchemy error as one of ours, by SQLSTATE or SQLite result code."""
    orig = getattr(exc, "orig", None) or exc
    message = f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return SinkUnavailableError(message)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if not sqlstate and isinstance(orig, (psycopg.DataError, sqlite3.DataError)):
        # The driver refused a value before sending it (PEP 249 DataError: a NUL byte in a text field for
        # psycopg): the row's fault, not the database's. Retrying it would block the partition for good.
        return RecordRejectedError(message)
    if sqlstate:
        code_class = sqlstate[:2]
        if code_class in _RECORD_CLASSES:
            return RecordRejectedError(f"{message} (SQLSTATE {sqlstate})")
        if code_class in _FATAL_CLASSES:
            return FatalError(f"{message} (SQLSTATE {sqlstate})")
        return SinkUnavailableError(f"{message} (SQLSTATE {sqlstate})")
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if sqlite_name:
        if sqlite_name.startswith(_SQLITE_RECORD):
            return RecordRejectedError(f"{message} ({sqlite_name})")
        if sqlite_name.startswith(_SQLITE_TRANSIENT):
            return SinkUnavailableError(f"{message} ({sqlite_name})")
        return FatalError(f"{message} ({sqlite_name})")
    # No code: the connection failed or broke before the server could say why.
    return SinkUnavailableError(message)
