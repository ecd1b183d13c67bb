"""The private PostgreSQL cluster of ops/testbed/postgres.py: fault tests stop and start it, the run uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from support.db import can_connect, connect, count_rows, make_engine
from support.services import private_postgres_cluster


def test_stopped_cluster_starts_again_on_its_port_with_its_data(tmp_path: Path) -> None:
    with private_postgres_cluster(tmp_path) as cluster:
        port = cluster.port
        with connect(cluster.url) as conn:
            conn.execute(sa.text("CREATE TABLE kept (id integer PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO kept SELECT generate_series(1, 3)"))
        engine = make_engine(cluster.url)
        try:
            with engine.connect() as open_connection:
                open_connection.execute(sa.text("SELECT 1"))

                cluster.stop()

                with pytest.raises(sa.exc.OperationalError):  # a fast shutdown cuts open connections
                    open_connection.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
        assert cluster.process is None
        assert not can_connect(cluster.url)

        cluster.start()

        assert cluster.port == port
        assert count_rows(cluster.url, "kept") == 3


def test_cluster_runs_unprivileged_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with private_postgres_cluster(tmp_path) as cluster:
        process = cluster.process
        assert process is not None
        assert can_connect(cluster.url)
        server_uid = _real_uid(process.pid)
        folder = cluster.folder

    assert server_uid != 0
    assert process.poll() is not None
    assert not folder.exists()
    assert not can_connect(cluster.url)
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()


def _real_uid(pid: int) -> int:
    """The real user id of a process, from /proc (`Uid:` line: real, effective, saved, filesystem)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line in /proc/{pid}/status")

