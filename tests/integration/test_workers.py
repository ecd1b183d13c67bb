"""`run` with WORKERS=2: one supervisor, two real worker processes in one group, one endpoint.

Real broker, real PostgreSQL and SQLite, real processes. The supervisor is the process the `service`
fixture starts; workers are found through its /status. The second worker's join rebalances the first, so every step
waits on a condition.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from support.db import via_proxy
from support.kafka import committed_offsets
from support.runs import (
    assert_one_row_per_key,
    rows_or_zero,
    service_env,
    setup_topic,
    valid_messages,
    wait_committed,
    wait_metric,
)
from support.service import ServiceProcess
from support.services import TcpProxy
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]

PARTITIONS = 4
JOIN_TIMEOUT_S = 120.0

CONTRACT_METRICS = (
    "consumer_records_total", "consumer_batches_total", "consumer_batch_records", "consumer_batch_bytes",
    "consumer_batch_duration_seconds", "consumer_end_to_end_latency_seconds", "consumer_lag_records",
    "consumer_committed_offset", "consumer_circuit_breaker_state", "consumer_sink_retries_total",
    "consumer_rebalances_total", "consumer_paused_partitions", "consumer_last_commit_timestamp_seconds",
    "consumer_lag_seconds", "consumer_batches_closed_total", "consumer_dlq_guard_tripped",
)


def _status(svc: ServiceProcess) -> dict[str, Any]:
    code, body = svc.http_get("/status")
    assert code == 200, body
    status: dict[str, Any] = json.loads(body)
    return status


def _name(entry: dict[str, Any]) -> str:
    """`topic/partition` of a /status assignment entry (with or without a separate `topic` field)."""
    return f"{entry['topic']}/{entry['partition']}" if "topic" in entry else str(entry["partition"])


def _assignments(svc: ServiceProcess) -> dict[int, list[str]]:
    """Partitions each worker holds, from the supervisor's /status (fails at once if the supervisor died)."""
    if not svc.running:
        pytest.fail(f"supervisor exited with {svc.process.returncode}\n{svc.log_tail()}")
    return {
        worker["worker"]: [_name(entry) for entry in (worker["status"] or {}).get("assignment", [])]
        for worker in _status(svc)["workers"]
    }


def _wait_both_workers_hold_partitions(svc: ServiceProcess, topic: str) -> dict[int, list[str]]:
    """Every partition held, each by exactly one worker, and both workers holding some."""
    everything = sorted(f"{topic}/{p}" for p in range(PARTITIONS))

    def split(held: dict[int, list[str]]) -> bool:
        return (len(held) == 2 and all(held.values())
                and sorted(p for partitions in held.values() for p in partitions) == everything)

    held = wait_until(lambda: _assignments(svc), JOIN_TIMEOUT_S, "both workers holding partitions",
                      interval_s=0.25, ignore=(OSError,), until=split)
    svc.wait_ready(JOIN_TIMEOUT_S)
    return held


def _names(svc: ServiceProcess) -> set[str]:
    return {name for name, _labels in svc.metrics()}


def test_two_workers_drain_a_topic_exactly_and_stop_cleanly(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 4000
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=PARTITIONS)
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, sink_url, sink_table, WORKERS="2",
                              BATCH_MAX_RECORDS="500"))
    held = _wait_both_workers_hold_partitions(svc, topic)
    pids = {worker["pid"] for worker in _status(svc)["workers"]}
    assert len(pids) == 2 and svc.pid not in pids

    writer.send(valid_messages(range(n), keyed=True))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", n)

    assert_one_row_per_key(sink_url, sink_table, n)
    names = _names(svc)
    missing = [m for m in CONTRACT_METRICS if not any(name == m or name.startswith(f"{m}_") for name in names)]
    assert not missing, f"aggregated /metrics lacks {missing}"
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 0
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 0
    assert svc.metric("consumer_worker_restarts_total", worker="0") == 0
    assert svc.metric("consumer_workers_running") == 2
    # a worker sets its gauge when the broker's answer to its commit is served by its next poll, just after
    # the broker shows the commit
    ends = {str(p): float(end) for p, end in writer.end_offsets.items()}
    wait_until(lambda: {dict(labels)["partition"]: value for (name, labels), value in svc.metrics().items()
                        if name == "consumer_committed_offset"}, 30, "committed-offset gauges at the end offsets",
               until=lambda gauges: gauges == ends)
    # each worker held its own share, and the supervisor's /status shows the union, all committed
    union = _status(svc)["assignment"]
    assert sorted((e["worker"], _name(e)) for e in union) == sorted(
        (w, p) for w, partitions in _assignments(svc).items() for p in partitions)
    assert sorted((_name(e), e["committed"]) for e in union) == sorted(
        (f"{topic}/{p}", end) for p, end in writer.end_offsets.items())
    assert all(held.values())
    assert svc.http_get("/healthz")[0] == 200

    assert svc.terminate(timeout_s=90) == 0
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == writer.end_offsets
    assert_one_row_per_key(sink_url, sink_table, n)
    assert "every worker stopped cleanly" in svc.log_text()


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_sigterm_to_the_supervisor_mid_drain_commits_what_was_written_and_exits_0(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    n = 6000
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=PARTITIONS)
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, via_proxy(sink_url, postgres_proxy.port), sink_table,
                              WORKERS="2", BATCH_MAX_RECORDS="100"))
    _wait_both_workers_hold_partitions(svc, topic)
    postgres_proxy.set_latency(0.02)  # slow the sink so the stop lands mid-drain
    writer.send(valid_messages(range(n), keyed=True))
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 60, "first rows", until=lambda rows: rows > 0)

    assert svc.terminate(timeout_s=90) == 0

    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    done = sum(committed.values())
    assert 0 < done < n, f"the stop should land mid-drain: {done} of {n} committed"
    # a graceful stop commits every batch it wrote: rows are exactly the committed records
    assert_one_row_per_key(sink_url, sink_table, done)


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_a_killed_worker_is_restarted_and_rows_stay_exact(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    n = 6000
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=PARTITIONS)
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, via_proxy(sink_url, postgres_proxy.port), sink_table,
                              WORKERS="2", BATCH_MAX_RECORDS="100"))
    _wait_both_workers_hold_partitions(svc, topic)
    postgres_proxy.set_latency(0.02)
    writer.send(valid_messages(range(n), keyed=True))
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 60, "first rows", until=lambda rows: rows > 0)

    victim = _status(svc)["workers"][1]
    sunk_before = svc.metric_sum("consumer_records_total", outcome="sunk")
    os.kill(victim["pid"], signal.SIGKILL)
    partial = rows_or_zero(sink_url, sink_table)
    assert partial < n, "the kill should land mid-drain"
    # a dead worker fails the probes until its replacement is back (the restart waits at least 1 s)
    health = wait_until(lambda: svc.http_get("/healthz"), 30, "/healthz 503", interval_s=0.05,
                        until=lambda got: got[0] == 503)
    assert "worker 1: not running" in health[1]
    wait_until(lambda: svc.http_get("/readyz")[0], 30, "/readyz 503", interval_s=0.05, until=lambda c: c == 503)

    def restarted() -> dict[str, Any]:
        assert svc.running, svc.log_tail()
        worker: dict[str, Any] = _status(svc)["workers"][1]
        return worker

    again = wait_until(restarted, 60, "worker 1 restarted with a new pid",
                       until=lambda w: w["alive"] and w["pid"] != victim["pid"] and w["restarts"] == 1)
    assert again["last_exit_code"] == -signal.SIGKILL
    assert svc.metric("consumer_worker_restarts_total", worker="1") == 1
    assert svc.metric("consumer_worker_restarts_total", worker="0") == 0
    svc.wait_ready(JOIN_TIMEOUT_S)
    assert svc.http_get("/healthz")[0] == 200
    postgres_proxy.set_latency(0)

    wait_committed(kafka_bootstrap, group, writer, [svc], timeout_s=180)
    assert_one_row_per_key(sink_url, sink_table, n)
    # the dead worker's counters are carried over: the merged counter never goes backwards
    assert svc.metric_sum("consumer_records_total", outcome="sunk") >= sunk_before
    log = svc.log_text()
    assert "worker exited unexpectedly; restarting" in log and "worker restarted" in log
    assert svc.terminate(timeout_s=90) == 0
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == writer.end_offsets


@pytest.mark.parametrize("workers", ["0", "abc"])
def test_invalid_workers_exits_2_naming_it_before_anything_starts(
    kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Any, service: StartService, workers: str,
) -> None:
    svc = service(service_env(kafka_bootstrap, unique("topic"), unique("group"),
                              f"sqlite:///{tmp_path / 'sink.db'}", "events", WORKERS=workers))
    assert svc.wait(30) == 2
    lines = svc.log_text().strip().splitlines()
    assert len(lines) == 1 and "WORKERS" in lines[0], lines
    assert not (tmp_path / "sink.db").exists()


def test_a_worker_configuration_error_stops_the_supervisor_with_exit_2(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], tmp_path: Any,
    service: StartService,
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    svc = service(service_env(kafka_bootstrap, topic, unique("group"), f"sqlite:///{tmp_path / 'sink.db'}",
                              "events", WORKERS="2", KAFKA_EXTRA__NO_SUCH_PROPERTY="1"))
    assert svc.wait(60) == 2
    log = svc.log_text()
    assert "worker failed; stopping every worker" in log
    assert "restarting" not in log


def test_workers_1_is_the_single_process_without_a_supervisor(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], tmp_path: Any,
    service: StartService,
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    svc = service(service_env(kafka_bootstrap, topic, unique("group"), f"sqlite:///{tmp_path / 'sink.db'}",
                              "events", WORKERS="1"))
    svc.wait_ready(JOIN_TIMEOUT_S)
    assert psutil.Process(svc.pid).children() == []
    assert "workers" not in _status(svc)
    assert svc.terminate() == 0


def test_a_killed_supervisor_leaves_no_worker_running(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Any,
    service: StartService,
) -> None:
    n = 1000
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=PARTITIONS)
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, f"sqlite:///{tmp_path / 'sink.db'}", "events",
                              WORKERS="2"))
    _wait_both_workers_hold_partitions(svc, topic)
    writer.send(valid_messages(range(n), keyed=True))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    workers = [psutil.Process(worker["pid"]) for worker in _status(svc)["workers"]]

    svc.kill()

    def still_running() -> list[int]:
        return [p.pid for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(still_running, 60, "both workers gone", ignore=(psutil.NoSuchProcess,), until=lambda pids: not pids)
    log = svc.log_text()
    assert log.count("supervisor gone; stopping") == 2, log[-3000:]
    assert log.count("stopped cleanly") == 2, log[-3000:]
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == writer.end_offsets


def test_a_worker_failing_again_and_again_stops_the_supervisor_with_exit_1(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], tmp_path: Any,
    service: StartService,
) -> None:
    sink = tmp_path / "sink.db"
    with sqlite3.connect(sink) as db:  # a table without the metadata columns: fatal (exit 1) at every start
        db.execute("CREATE TABLE events (x INTEGER)")
    topic = make_topic(partitions=PARTITIONS)
    svc = service(service_env(kafka_bootstrap, topic, unique("group"), f"sqlite:///{sink}", "events",
                              WORKERS="2"))
    assert svc.wait(120) == 1
    log = svc.log_text()
    assert "worker failed; stopping every worker" in log and "failures_in_a_row=5" in log, log[-3000:]
    assert log.count("worker restarted") >= 4


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_a_worker_that_cannot_commit_in_time_makes_the_supervisor_exit_1(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=PARTITIONS)
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, via_proxy(sink_url, postgres_proxy.port), sink_table,
                              WORKERS="2", SHUTDOWN_TIMEOUT_MS="3000", BATCH_MAX_WAIT_MS="100"))
    _wait_both_workers_hold_partitions(svc, topic)
    postgres_proxy.cut("reset")  # the database is gone: no batch in hand can be written before the timeout
    writer.send(valid_messages(range(400), keyed=True))
    wait_until(lambda: svc.metric_sum("consumer_batches_total", outcome="retried"), 60, "a retried batch",
               until=lambda retried: retried > 0)

    assert svc.terminate(timeout_s=90) == 1
    assert "not every worker stopped cleanly" in svc.log_text()
    assert sum(committed_offsets(kafka_bootstrap, group, topic, PARTITIONS).values()) == 0
