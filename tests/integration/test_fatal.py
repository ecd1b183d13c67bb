"""Fatal errors: a permission the database takes away mid-run (SQLSTATE 42501) ends the process with exit
code 1 and one clear line, and the batch it could not write stays uncommitted (the next owner replays it).
Nothing about it is retried or dead-lettered: it is not a record's fault and waiting will not mend it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from support.db import connect, count_rows
from support.kafka import TopicWriter, committed_offsets, read_all
from support.runs import service_env, valid_messages, wait_committed
from support.service import ServiceProcess


@pytest.fixture
def sink_role(postgres_url: str) -> Iterator[str]:
    """A login role that may create tables in `public`; dropped with what it owns afterwards."""
    role = f"mbc_{uuid.uuid4().hex[:8]}"
    with connect(postgres_url) as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    yield role
    with connect(postgres_url) as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {role}")
        conn.exec_driver_sql(f"DROP ROLE {role}")


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_a_permission_taken_away_mid_run_stops_with_exit_1_and_leaves_the_batch_uncommitted(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    sink_role: str,
    service: Callable[..., ServiceProcess],
) -> None:
    topic = make_topic(partitions=1)
    writer = TopicWriter(kafka_bootstrap, topic)
    group = unique("group")
    as_role = sa.make_url(sink_url).set(username=sink_role).render_as_string(hide_password=False)
    svc = service(service_env(kafka_bootstrap, topic, group, as_role, sink_table))
    writer.send(valid_messages(range(500)))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    first = writer.end_offsets

    with connect(sink_url) as conn:
        conn.exec_driver_sql(f"REVOKE INSERT ON {sink_table} FROM {sink_role}")
    writer.send(valid_messages(range(500, 800)))
    assert svc.wait(60) == 1
    log = svc.log_text()
    assert "InsufficientPrivilege" in log and "SQLSTATE 42501" in log and "error_class=SinkRefusedError" in log
    assert "Traceback" not in log
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == first
    assert count_rows(sink_url, sink_table) == 500
    assert read_all(kafka_bootstrap, f"{topic}.dlq", expected=0) == []
