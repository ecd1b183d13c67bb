"""PostgreSQL helpers: URLs for psycopg, and the CPU the server spent on one client's connections.

Each connection gets its own backend process, born with it; naming the connections (`application_name`)
lets the benchmark find those backends in pg_stat_activity and read their CPU with psutil, so other
sessions' queries on a shared server are not counted.
"""

from __future__ import annotations

import psutil
import psycopg
import sqlalchemy as sa


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as the libpq URI psycopg.connect takes."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def named(url: str, application_name: str) -> str:
    """`url` whose connections show as `application_name` on the server (SQLAlchemy form kept)."""
    parsed = sa.make_url(url)
    return parsed.update_query_dict({"application_name": application_name}).render_as_string(hide_password=False)


def backend_cpu_seconds(url: str) -> float | None:
    """CPU seconds (user + system) of the live backends of connections named as in `url`, or None where the
    server's processes are not visible from here (a remote database) or `url` names none."""
    name = sa.make_url(url).query.get("application_name")
    if not isinstance(name, str):
        return None
    with psycopg.connect(libpq_url(sa.make_url(url).difference_update_query(["application_name"])
                                   .render_as_string(hide_password=False)), autocommit=True) as conn:
        pids = [int(row[0]) for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,))]
    total, seen = 0.0, False
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
        seen = True
    return total if seen else None
