"""The test infrastructure itself works: broker, database, proxy, registry and service process helpers."""

from __future__ import annotations

import json
import struct
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition
from support.db import count_rows, fetch, make_engine, table_exists, via_proxy
from support.events import decode, encode_wire, event_id, make_event, schema_json
from support.fake_registry import FakeSchemaRegistry
from support.kafka import Msg, TopicWriter, committed_offsets, read_all
from support.service import ServiceProcess
from support.services import TcpProxy
from support.waiting import wait_until


def test_produced_records_read_back_exactly_with_cumulative_end_offsets(
    kafka_bootstrap: str, topic: str
) -> None:
    writer = TopicWriter(kafka_bootstrap, topic)
    writer.send(
        [
            Msg(value=f"v{i}".encode(), key=f"k{i}".encode(), headers=[("n", str(i).encode())])
            for i in range(60)
        ]
    )
    writer.send([Msg(value=None if i == 0 else b"x", partition=i % 3) for i in range(40)])

    records = read_all(kafka_bootstrap, topic, expected=100, timeout_s=30)

    assert len(records) == 100
    assert writer.total == 100
    assert dict(Counter(r.partition for r in records)) == {p: n for p, n in writer.end_offsets.items() if n}
    first = next(r for r in records if r.key == b"k7")
    assert (first.value, first.headers, first.topic) == (b"v7", {"n": b"7"}, topic)
    assert sum(r.value is None for r in records) == 1


def test_committed_offsets_report_zero_for_an_unknown_group_and_the_commit_otherwise(
    kafka_bootstrap: str, topic: str, unique: Callable[[str], str]
) -> None:
    group = unique("group")
    assert committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 0, 1: 0, 2: 0}

    committer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committer.commit(offsets=[TopicPartition(topic, 1, 5)], asynchronous=False)
    finally:
        committer.close()

    assert committed_offsets(kafka_bootstrap, group, topic, [0, 1]) == {0: 0, 1: 5}


def test_postgres_answers(postgres_url: str) -> None:
    assert fetch(postgres_url, "SELECT :n + 1 AS answer", {"n": 41})[0].answer == 42


def test_proxy_cut_fails_new_and_open_connections_and_restore_heals(
    postgres_url: str, postgres_proxy: TcpProxy
) -> None:
    url = via_proxy(postgres_url, postgres_proxy.port)
    assert fetch(url, "SELECT 1 AS one")[0].one == 1
    engine = make_engine(url)
    try:
        with engine.connect() as open_connection:
            open_connection.execute(sa.text("SELECT 1"))
            postgres_proxy.cut()
            with pytest.raises(sa.exc.OperationalError):
                open_connection.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
    with pytest.raises(sa.exc.OperationalError):
        fetch(url, "SELECT 1")

    postgres_proxy.restore()

    assert fetch(url, "SELECT 1 AS one")[0].one == 1


def test_sink_table_is_usable_on_each_backend(sink_url: str, sink_table: str) -> None:
    assert not table_exists(sink_url, sink_table)
    engine = make_engine(sink_url)
    try:
        table = sa.Table(sink_table, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), [{"id": i} for i in range(3)])
    finally:
        engine.dispose()
    assert count_rows(sink_url, sink_table) == 3


def test_fake_registry_serves_schemas_by_id_and_latest_version(fake_schema_registry: FakeSchemaRegistry) -> None:
    schema_id = fake_schema_registry.register("orders-value", schema_json())
    assert fake_schema_registry.register("orders-value", schema_json()) == schema_id

    with urllib.request.urlopen(f"{fake_schema_registry.url}/schemas/ids/{schema_id}", timeout=5) as response:
        by_id = json.load(response)
    with urllib.request.urlopen(
        f"{fake_schema_registry.url}/subjects/orders-value/versions/latest", timeout=5
    ) as r:
        latest = json.load(r)

    assert by_id == {"schema": schema_json()}
    assert latest == {"subject": "orders-value", "version": 1, "id": schema_id, "schema": schema_json()}
    wire = encode_wire(make_event(5), schema_id)
    assert wire[:5] == b"\x00" + struct.pack(">I", schema_id)
    assert decode(wire[5:])["event_id"] == event_id(5)


def test_wait_until_fails_showing_the_last_value_or_ignored_error() -> None:
    counts = iter(range(1000))
    with pytest.raises(pytest.fail.Exception, match=r"waiting for 10000 rows; last value: [1-9]\d*$"):
        wait_until(lambda: next(counts), 0.3, "10000 rows", interval_s=0.01, until=lambda n: n == 10000)
    with pytest.raises(pytest.fail.Exception, match=r"last value: KeyError: 'rows'"):
        empty: dict[str, int] = {}
        wait_until(lambda: empty["rows"], 0.2, "rows", interval_s=0.01, ignore=(KeyError,))


# Stands in for the real service (cwd comes first on sys.path under `python -m`), so this file checks the
# process helper without depending on the service's own behaviour.
_FAKE_SERVICE = """
import os, signal, sys, threading
from prometheus_client import CollectorRegistry, Counter, start_http_server

registry = CollectorRegistry()
records = Counter("consumer_records_total", "Records.", ["topic", "outcome"], registry=registry)
records.labels("a", "sunk").inc(3)
records.labels("b", "sunk").inc(4)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1", registry=registry)
print("fake service", sys.argv[1:], os.environ["KAFKA_SESSION_TIMEOUT_MS"])
stop.wait()
print("stopped")
"""


def test_service_process_scrapes_metrics_and_stops_on_sigterm(
    service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    package = tmp_path / "service" / "consumer"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text(_FAKE_SERVICE)

    process = service({}, args=("run", "--flag"))

    wait_until(lambda: process.metric("consumer_records_total", topic="a", outcome="sunk"), 20, "metrics up")
    assert process.metric_sum("consumer_records_total", outcome="sunk") == 7
    assert process.metric("consumer_records_total", topic="c", outcome="sunk") == 0.0
    assert process.terminate(timeout_s=10) == 0
    assert "fake service ['run', '--flag'] 6000" in process.log_text()
    assert "stopped" in process.log_text()
