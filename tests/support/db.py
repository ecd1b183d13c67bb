"""Reading and cleaning sink tables from tests, through SQLAlchemy so SQLite and PostgreSQL look alike.

Every helper opens a fresh engine with NullPool and disposes of it: a test must never keep a connection that
would hold a lock against the service under test, nor one that a proxy fault test cut earlier.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.pool import NullPool

# A connection attempt must fail fast so a wait_until around it can try again (and a dead database shows).
_CONNECT_TIMEOUT_S = 5
# DROP TABLE waits for every open transaction on the table; a wedged one must fail the teardown, not hang it.
_DROP_LOCK_TIMEOUT = "10s"


def make_engine(url: str) -> sa.Engine:
    """An engine without a pool and with a short connect timeout where the driver supports one."""
    connect_args: dict[str, Any] = {}
    backend = sa.make_url(url).get_backend_name()
    if backend == "postgresql":
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    elif backend == "sqlite":
        connect_args["timeout"] = _CONNECT_TIMEOUT_S
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """One connection in one transaction (committed on success), then the engine is gone."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def can_connect(url: str) -> bool:
    """Whether the database answers a trivial query; used to pick a PostgreSQL for the run."""
    try:
        with connect(url) as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return False
    return True


def table_exists(url: str, table: str) -> bool:
    """Whether the service has created `table` yet."""
    engine = make_engine(url)
    try:
        return sa.inspect(engine).has_table(table)
    finally:
        engine.dispose()


def count_rows(url: str, table: str) -> int:
    """Rows in `table`; raises sqlalchemy.exc.DBAPIError subclasses while the table does not exist."""
    with connect(url) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one())


def fetch(url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
    """All rows of a raw SQL query (bind parameters as `:name`); quote identifiers yourself."""
    with connect(url) as conn:
        return list(conn.execute(sa.text(sql), dict(params or {})))


def via_proxy(url: str, port: int, host: str = "127.0.0.1") -> str:
    """`url` pointed at a TcpProxy instead of the database itself (password kept, for the service's env)."""
    return sa.make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


def drop_table(url: str, table: str) -> None:
    """Drop `table` if it exists; the name is quoted by SQLAlchemy, so generated names are safe."""
    with connect(url) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'"))
        sa.Table(table, sa.MetaData()).drop(conn, checkfirst=True)
