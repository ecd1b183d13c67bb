"""The sink's SQLAlchemy engine from SINK_URL (and SINK_PASSWORD_FILE): psycopg 3 for PostgreSQL, with
connection parameters that turn a vanished peer into a transient failure; SQLite in WAL mode."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from consumer.errors import ConfigError

SUPPORTED_BACKENDS = ("postgresql", "sqlite")
SUPPORTED_DATABASES = "PostgreSQL (postgresql://user@host/db) and SQLite (sqlite:///<file>)"


def create_sink_engine(url: str, password_file: Path | None, ca_file: Path | None = None) -> Engine:
    """An engine for SINK_URL; `postgresql://` means psycopg 3, the driver we ship. `ca_file`
    (SINK_SSL_CA_LOCATION) becomes the URL's `sslrootcert`, verified in full unless the URL says otherwise."""
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if password_file is not None:
            parsed = parsed.set(password=_read_password(password_file))
        backend = parsed.get_backend_name()
        if backend not in SUPPORTED_BACKENDS:
            raise ConfigError(f"SINK_URL: unsupported database {backend!r}; supported: {SUPPORTED_DATABASES}")
        if backend == "sqlite":
            if ca_file is not None:
                raise ConfigError("SINK_SSL_CA_LOCATION: only a PostgreSQL SINK_URL uses TLS")
            return _sqlite_engine(parsed)
        if ca_file is not None:  # in the URL, where consumer.sql.tls reads it to explain a refused certificate
            parsed = parsed.update_query_dict(
                {"sslrootcert": str(ca_file), **({} if "sslmode" in parsed.query else {"sslmode": "verify-full"})}
            )
        connect_args = {k: v for k, v in _LIBPQ_DEFAULTS.items() if k not in parsed.query}
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=2, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"SINK_URL: {exc}") from None
    except OSError as exc:  # SQLite's folder cannot be made
        raise ConfigError(f"SINK_URL: {exc}") from None


def _read_password(password_file: Path) -> str:
    try:
        return password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"SINK_PASSWORD_FILE: {exc}") from None


# libpq connection parameters unless SINK_URL sets them: a connection attempt gives up after 10 s, and a
# connection whose peer vanished (a network partition, a dead node) fails within about a minute instead
# of hanging a write until the kernel's retransmissions give up (hours): TCP keepalives probe an idle
# connection, tcp_user_timeout bounds unacknowledged sends. The failure is then transient and retried.
_LIBPQ_DEFAULTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


@contextmanager
def _switching_journal_mode(database: Path) -> Iterator[None]:
    """Serialise the switch to WAL between connections and processes opening a new database together.

    The switch needs the database to itself and answers SQLITE_BUSY at once, without waiting out the busy
    timeout, when another connection is switching too (workers or pods starting side by side). WAL then
    stays in the file, so whoever comes next finds it set. The lock is a file of its own beside the
    database, never the database file: closing any descriptor of the database file would drop the POSIX
    locks SQLite's other connections in this process hold on it (SQLite's "how to corrupt" list, 2.2).
    """
    with database.with_name(database.name + ".lock").open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_engine(url: sa.URL) -> Engine:
    if not url.database or url.database == ":memory:":
        # One connection shared by every thread: each new connection to ":memory:" is a new, empty
        # database, so the table made at start would be missing on the sink's worker thread.
        return sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    database = Path(url.database)
    database.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets a reader (tests, operators) look while we write; FULL keeps a commit a commit.
        cursor = dbapi_connection.cursor()
        with _switching_journal_mode(database):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine
