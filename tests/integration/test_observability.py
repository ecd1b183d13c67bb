"""Observability end to end: after a real run against the broker and PostgreSQL, /metrics carries every
contract metric with its type and labels and counts that add up to what was produced; /healthz and /readyz
flip before the join (a test of its own), during the run, during a sink outage, during shutdown and while the dead-letter guard
holds; /status shows what an on-call engineer needs; logs are JSON lines with no secret in them."""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families
from support.contract import read_contract_metrics
from support.db import count_rows, via_proxy
from support.events import encode, make_event
from support.kafka import Msg, TopicWriter
from support.runs import service_env, setup_topic, valid_messages, wait_committed, wait_metric
from support.service import ServiceProcess
from support.services import TcpProxy
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]

SINK_PASSWORD = "Obs-sink-S3cret"
SASL_PASSWORD = "Obs-sasl-S3cret"
VALID, REPEATS, GARBAGE, TOMBSTONES = 1200, 60, 24, 16
LATER = 150  # produced while the sink is down


def _traffic() -> tuple[list[Msg], int]:
    """VALID distinct events, REPEATS of them again (duplicates by event id), GARBAGE undecodable values and
    TOMBSTONES, interleaved so no batch is mostly poison; returns the messages and the batch count hint."""
    valid = valid_messages(range(VALID), keyed=True)
    extra = (
        valid_messages(range(REPEATS), keyed=True)
        + [Msg(value=b"not avro at all", key=f"g{i}".encode()) for i in range(GARBAGE)]
        + [Msg(value=None, key=f"t{i}".encode()) for i in range(TOMBSTONES)]
    )
    messages: list[Msg] = []
    step = VALID // len(extra)
    for i, odd in enumerate(extra):
        messages += valid[i * step : (i + 1) * step]
        messages.append(odd)
    messages += valid[len(extra) * step :]
    return messages, len(messages)


def _families(svc: ServiceProcess) -> dict[str, Any]:
    status, body = svc.http_get("/metrics")
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(body)}


def _exposed(family: Any) -> str:
    return f"{family.name}_total" if family.type == "counter" else str(family.name)


def _label_names(family: Any) -> frozenset[str]:
    return frozenset(name for sample in family.samples for name in sample.labels if name != "le")


def _status(svc: ServiceProcess) -> dict[str, Any]:
    code, body = svc.http_get("/status")
    assert code == 200
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _probe(svc: ServiceProcess, path: str) -> tuple[int, str]:
    code, body = svc.http_get(path)
    return code, json.loads(body)["status"]


def _first_answer(svc: ServiceProcess, path: str) -> tuple[int, str]:
    """The first answer of `path` once the HTTP port opens (the service binds it before it subscribes)."""

    def answer() -> tuple[int, str] | None:
        if not svc.running:
            pytest.fail(f"service exited with {svc.process.returncode}\n{svc.log_tail()}")
        try:
            return _probe(svc, path)
        except OSError:
            return None

    result: tuple[int, str] = wait_until(answer, 60, f"{path} to answer", interval_s=0.05)
    return result


def _json_lines(svc: ServiceProcess) -> list[dict[str, Any]]:
    lines = [line for line in svc.log_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")
    return parsed


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_a_real_run_is_observable_through_metrics_probes_status_and_logs(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    contract = read_contract_metrics()
    topic, writer = setup_topic(kafka_bootstrap, make_topic)
    group = unique("group")
    messages, produced = _traffic()
    writer.send(messages)
    url = via_proxy(sink_url.replace("postgres@", f"postgres:{SINK_PASSWORD}@"), postgres_proxy.port)
    assert SINK_PASSWORD in url
    env = service_env(
        kafka_bootstrap,
        topic,
        group,
        url,
        sink_table,
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        LOG_SUMMARY_INTERVAL_S="1",
        KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        BATCH_MAX_RECORDS="200",
        BREAKER_FAILURE_THRESHOLD="2",
        RETRY_BACKOFF_INITIAL_MS="50",
        RETRY_BACKOFF_MAX_MS="200",
        BREAKER_RESET_TIMEOUT_MS="500",
        SHUTDOWN_TIMEOUT_MS="60000",
    )
    svc = service(env)

    # --- the run: everything committed, ready ------------------------------------------------------
    wait_committed(kafka_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", VALID)
    wait_metric(svc, "skipped", TOMBSTONES)
    assert _probe(svc, "/readyz") == (200, "ready")
    assert _probe(svc, "/healthz") == (200, "ok")
    wait_until(
        lambda: svc.metric_sum("consumer_lag_records"),
        30,
        "lag 0 after the commits",
        until=lambda lag: lag == 0,
    )

    families = _families(svc)
    exported = {_exposed(f): (f.type, _label_names(f)) for f in families.values()}
    for name, expected in contract.items():  # every contract metric, with its type and its labels
        assert exported.get(name) == expected, name

    sample = svc.metric
    total = svc.metric_sum
    sunk, duplicate = (
        total("consumer_records_total", outcome="sunk"),
        total("consumer_records_total", outcome="duplicate"),
    )
    dlq, skipped = (
        total("consumer_records_total", outcome="dlq"),
        total("consumer_records_total", outcome="skipped"),
    )
    assert sunk + duplicate + dlq == produced - TOMBSTONES
    assert (sunk, duplicate, dlq, skipped) == (VALID, REPEATS, GARBAGE, TOMBSTONES)
    assert sample("consumer_records_total", topic=topic, outcome="sunk") == VALID
    assert sample("consumer_dead_letters_total", stage="decode", error_class="DecodeError") == GARBAGE
    assert total("consumer_dead_letters_total") == GARBAGE
    assert count_rows(sink_url, sink_table) == VALID
    batches = sample("consumer_batches_total", outcome="committed")
    assert batches >= produced / 200
    assert sample("consumer_batch_records_count") == batches
    assert sample("consumer_batch_records_sum") == produced
    assert total("consumer_batches_closed_total") == batches
    assert sample("consumer_batch_duration_seconds_count", stage="total") == batches
    assert sample("consumer_end_to_end_latency_seconds_count") > 0
    assert sample("consumer_batches_total", outcome="retried") == 0
    for partition, end in writer.end_offsets.items():
        labels = {"topic": topic, "partition": str(partition)}
        assert sample("consumer_committed_offset", **labels) == end
        assert sample("consumer_lag_records", **labels) == 0
        assert sample("consumer_lag_seconds", **labels) == 0
    assert sample("consumer_last_commit_timestamp_seconds") > 0
    assert sample("consumer_rebalances_total", kind="assign") >= 1
    assert sample("consumer_paused_partitions") == 0
    assert sample("consumer_dlq_guard_tripped") == 0
    assert sample("consumer_circuit_breaker_state", dependency="sink") == 0
    assert total("consumer_info", group=group) == 1

    status = _status(svc)
    assert [
        (row["partition"], row["committed"], row["lag_records"], row["lag_seconds"], row["paused"])
        for row in status["assignment"]
    ] == [(p, end, 0, 0.0, False) for p, end in sorted(writer.end_offsets.items())]
    assert status["totals"]["records"] == {
        "sunk": VALID,
        "duplicate": REPEATS,
        "dlq": GARBAGE,
        "skipped": TOMBSTONES,
    }
    assert status["totals"]["batches"] == batches
    assert set(status["last_batch"]) >= {
        "records",
        "close_reason",
        "decode_seconds",
        "sink_seconds",
        "commit_seconds",
        "total_seconds",
    }
    assert status["time_to_drain_seconds"] == 0.0
    assert status["breaker"]["sink"]["state"] == "closed"
    assert status["guard"]["tripped"] is False and status["ready"] is True
    assert status["version"] and status["settings"]["KAFKA_SASL_PASSWORD"] == "***"
    assert status["settings"]["SINK_URL"] == url.replace(SINK_PASSWORD, "***")
    # readable during an incident: ISO 8601 times with their ages, the effective dead-letter topic, the broker
    for at, age in (("started_at", "uptime_seconds"), ("last_commit_at", "last_commit_age_seconds")):
        assert dt.datetime.fromisoformat(status[at]).tzinfo is not None and status[age] >= 0, (at, status)
    assert status["uptime_seconds"] >= status["last_commit_age_seconds"]
    assert status["last_batch"]["committed_at"].endswith("Z") and status["last_batch"]["committed_age_seconds"] >= 0
    assert status["breaker"]["sink"]["since"].endswith("Z") and status["breaker"]["sink"]["for_seconds"] >= 0
    assert status["dead_letter_topic"] == f"{topic}.dlq"
    assert status["broker"] == {"reachable": True} and status["missing_topics"] == []
    bodies = [json.dumps(status)]

    # --- the sink goes away: lag in records and seconds, breaker open, not ready, still live ---------
    postgres_proxy.cut()
    later = TopicWriter(kafka_bootstrap, topic)
    later.send(valid_messages(range(VALID, VALID + LATER), keyed=True))
    wait_until(
        lambda: svc.metric_sum("consumer_lag_records"),
        60,
        f"lag of {LATER} records",
        until=lambda lag: lag == LATER,
    )
    wait_until(
        lambda: _probe(svc, "/readyz"),
        60,
        "not ready while the breaker is open",
        until=lambda probe: probe == (503, "circuit breaker open"),
    )
    assert _probe(svc, "/healthz") == (200, "ok")
    assert svc.metric("consumer_circuit_breaker_state", dependency="sink") >= 1
    assert svc.metric("consumer_paused_partitions") >= 1
    assert svc.metric_sum("consumer_lag_seconds") > 0  # the oldest record in hand has an age
    # partitions are paused while the batch waits, resumed while its probe is in flight: wait for a pause
    outage = wait_until(
        lambda: _status(svc),
        30,
        "/status to show the lag and paused partitions",
        until=lambda s: (
            s["lag"]["records"] == LATER
            and s["lag"]["seconds"] > 0
            and any(row["paused"] for row in s["assignment"])
        ),
    )
    assert outage["last_error"]["class"] == "SinkUnavailableError"
    assert outage["breaker"]["sink"]["state"] in {"open", "half_open"}
    assert outage["ready"] is False and outage["not_ready_because"] == "circuit breaker open"
    bodies.append(json.dumps(outage))

    # --- shutdown while the batch in hand cannot be written: not ready, then exit 0 once it is -------
    svc.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: _probe(svc, "/readyz"),
        30,
        "not ready while shutting down",
        until=lambda probe: probe == (503, "shutting down"),
    )
    postgres_proxy.restore()
    assert svc.wait(90) == 0
    assert count_rows(sink_url, sink_table) == VALID + LATER

    # --- logs: JSON lines, a DEBUG line per committed batch, periodic summaries, no secret anywhere ---
    lines = _json_lines(svc)
    committed = [line for line in lines if line["msg"] == "batch committed"]
    assert len(committed) >= batches and all(line["level"] == "DEBUG" for line in committed)
    summaries = [line for line in lines if line["msg"] == "summary"]
    assert summaries and all(line["level"] == "INFO" for line in summaries)
    assert {"records_per_second", "records_sunk", "records_dlq", "lag_records", "lag_seconds"} <= set(
        summaries[0]
    )
    assert sum(line["records_sunk"] for line in summaries) <= VALID + LATER
    log = svc.log_text()
    for secret in (SINK_PASSWORD, SASL_PASSWORD):
        assert secret not in log
        assert all(secret not in body for body in bodies)


def test_readyz_fails_and_status_says_why_while_the_dead_letter_guard_holds(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Any,
    service: StartService,
) -> None:
    topic = make_topic(partitions=1)
    writer = TopicWriter(kafka_bootstrap, topic)
    writer.send([Msg(value=encode(make_event(i))) for i in range(100)])
    writer.send([Msg(value=b"\x00 garbage from a bad deploy") for _ in range(300)])
    env = service_env(
        kafka_bootstrap,
        topic,
        unique("group"),
        f"sqlite:///{tmp_path / 'sink.db'}",
        "events",
        BATCH_MAX_RECORDS="100",
        BATCH_MAX_WAIT_MS="60000",
        DLQ_GUARD_MIN_RECORDS="200",
        DLQ_MAX_RATIO="0.2",
    )
    svc = service(env)
    wait_until(
        lambda: svc.metric("consumer_dlq_guard_tripped"), 90, "the guard to trip", until=lambda v: v == 1
    )
    assert _probe(svc, "/readyz") == (503, "dead-letter guard tripped")
    assert _probe(svc, "/healthz") == (200, "ok")
    status = _status(svc)
    assert status["guard"] == {"max_ratio": 0.2, "min_records": 200, "tripped": True}
    assert status["last_error"]["class"] == "GuardTrippedError"
    assert status["ready"] is False
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 0
    # lag describes the incident: the refused records stay uncommitted and grow older (refreshed every second)
    held = wait_until(lambda: _status(svc)["lag"], 30, "lag while held",
                      until=lambda lag: lag["records"] > 0 and lag["seconds"] > 0)
    wait_until(lambda: _status(svc)["lag"]["seconds"], 30, "lag seconds to keep growing",
               until=lambda seconds: seconds > held["seconds"])
    wait_until(lambda: svc.metric_sum("consumer_lag_seconds"), 30, "consumer_lag_seconds while held",
               until=lambda seconds: seconds > 0)
    assert svc.terminate() == 0


def test_readyz_is_503_until_the_group_join_completes(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], tmp_path: Any,
    service: StartService,
) -> None:
    """A member that joined and then stopped polling holds the group's next rebalance for up to its
    max.poll.interval.ms: the service's JoinGroup waits that long, so "not joined" lasts for sure."""
    topic = make_topic(partitions=1)
    group = unique("group")
    holder = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "session.timeout.ms": 60_000,
                       "max.poll.interval.ms": 60_000, "log_level": 0})
    try:
        holder.subscribe([topic])

        def holder_joined() -> bool:
            holder.poll(0.2)  # runs the join; the assignment arrives inside poll
            return bool(holder.assignment())

        wait_until(holder_joined, 30, "the holder to join")
        svc = service(service_env(kafka_bootstrap, topic, group, f"sqlite:///{tmp_path / 'sink.db'}", "events"))
        assert _first_answer(svc, "/readyz") == (503, "not joined to the consumer group yet")
        assert _probe(svc, "/healthz") == (200, "ok")
    finally:
        holder.close()  # LeaveGroup: the held rebalance completes with the service alone
    wait_until(lambda: _probe(svc, "/readyz"), 60, "ready once joined", until=lambda probe: probe == (200, "ready"))
    assert svc.terminate() == 0
