"""What an operator's first mistakes and first outages look like from outside (issue 17): a source topic
that does not exist is waited for, never created, and consumed once it appears; a lost broker is one
WARNING, a readable /status and a failing /readyz, never a line per retry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.db import count_rows
from support.kafka import TopicWriter, admin, create_topic
from support.runs import assert_one_row_per_key, service_env, valid_messages, wait_committed
from support.service import ServiceProcess
from support.services import TcpProxy, local_kafka
from support.waiting import hold, wait_until

from ops.testbed.net import free_port

StartService = Callable[..., ServiceProcess]
SQLITE_ONLY = pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
N = 500
MISSING_WARNING = "topic does not exist; waiting for it to be created"
OUTAGE_S = 15.0  # long enough for librdkafka to retry some hundred times
# What the service may say during a whole outage: the loss, the group's own view of it (coordinator lost,
# heartbeats failing: librdkafka lines of other facilities), never a line per connection attempt.
MAX_LINES_DURING_OUTAGE = 12


def _readyz(svc: ServiceProcess) -> tuple[int, str] | None:
    try:
        code, body = svc.http_get("/readyz")
    except OSError:
        return None  # the port is not open yet
    return code, str(json.loads(body)["status"])


def _topics(bootstrap: str) -> set[str]:
    return set(admin(bootstrap).list_topics(timeout=10).topics)


@SQLITE_ONLY
def test_a_missing_topic_is_not_created_and_is_consumed_once_it_appears(
    kafka_bootstrap: str, unique: Callable[[str], str], sink_url: str, sink_table: str, service: StartService
) -> None:
    topic, group = unique("not-yet"), unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, sink_url, sink_table, LOG_LEVEL="DEBUG"))

    wait_until(lambda: MISSING_WARNING in svc.log_text(), 60, "the missing-topic WARNING")
    wait_until(lambda: _readyz(svc), 60, "/readyz naming the missing topic",
               until=lambda answer: answer == (503, f"topic {topic} does not exist"))
    # The subscription's own metadata request named the topic (and came back "unknown"), as the watch's did.
    wait_until(lambda: "subscribed topic not available" in svc.log_text(), 60, "the subscription polled")
    assert not {topic, f"{topic}.dlq"} & _topics(kafka_bootstrap), "a topic we only read was created"

    create_topic(kafka_bootstrap, topic, 3)
    writer = TopicWriter(kafka_bootstrap, topic)
    writer.send(valid_messages(range(N)))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    assert_one_row_per_key(sink_url, sink_table, N)
    wait_until(lambda: _readyz(svc), 60, "/readyz ready", until=lambda answer: answer == (200, "ready"))
    assert f"{topic}.dlq" in _topics(kafka_bootstrap), "the dead-letter topic follows its source topic"
    assert svc.log_text().count(MISSING_WARNING) == 1, svc.log_tail()
    assert svc.terminate() == 0
    assert count_rows(sink_url, sink_table) == N


@SQLITE_ONLY
def test_check_fails_naming_a_missing_topic_and_creates_nothing(
    kafka_bootstrap: str, unique: Callable[[str], str], sink_url: str, sink_table: str, tmp_path: Path
) -> None:
    topic = unique("misspelt")
    checked = run_cli(["check"], service_env(kafka_bootstrap, topic, unique("group"), sink_url, sink_table), tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"FAIL  topic {topic}: the topic does not exist" in checked.stdout
    assert not {topic, f"{topic}.dlq"} & _topics(kafka_bootstrap)


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    """A dedicated Apache Kafka that advertises a TcpProxy in front of it: every client connection goes through it."""
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy, local_kafka(tmp_path / "kafka", port, proxy.port) as broker:
        yield broker.bootstrap, proxy


def _status(svc: ServiceProcess) -> dict[str, Any]:
    code, body = svc.http_get("/status")
    assert code == 200, body
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a LOG_FORMAT=json log parsed; a line that is not a JSON object fails the test."""
    lines = []
    for line in text.splitlines():
        parsed = json.loads(line)
        assert isinstance(parsed, dict), line
        lines.append(parsed)
    return lines


@SQLITE_ONLY
@pytest.mark.timeout(300)
def test_a_lost_broker_is_one_warning_a_failing_readyz_and_a_status_then_it_recovers_with_exact_counts(
    proxied_broker: tuple[str, TcpProxy], unique: Callable[[str], str], sink_url: str, sink_table: str,
    service: StartService,
) -> None:
    bootstrap, proxy = proxied_broker
    topic, group = create_topic(bootstrap, unique("topic"), 3), unique("group")
    writer = TopicWriter(bootstrap, topic)
    writer.send(valid_messages(range(N)))
    svc = service(service_env(bootstrap, topic, group, sink_url, sink_table, LOG_FORMAT="json"))
    wait_committed(bootstrap, group, writer, [svc])
    svc.wait_ready()
    assert _status(svc)["broker"] == {"reachable": True}

    before_cut = len(svc.log_text())
    proxy.cut("reset")
    wait_until(lambda: _readyz(svc), 60, "/readyz: broker unreachable",
               until=lambda answer: answer == (503, "broker unreachable"))
    broker = _status(svc)["broker"]
    assert broker["reachable"] is False and broker["for_seconds"] >= 0 and broker["last_error"], broker
    assert broker["since"].endswith("Z"), broker

    def alive() -> None:
        assert svc.running, svc.log_tail()

    hold(OUTAGE_S, alive, "the broker outage to last its time")
    during = _json_lines(svc.log_text()[before_cut:])
    proxy.restore()

    messages = [line["msg"] for line in during]
    assert messages.count("broker unreachable; retrying (no line per retry)") == 1, messages
    assert len(during) <= MAX_LINES_DURING_OUTAGE, messages
    wait_until(lambda: _status(svc)["broker"], 120, "the broker reachable again", until=lambda b: b["reachable"])
    writer.send(valid_messages(range(N, 2 * N)))
    wait_committed(bootstrap, group, writer, [svc], timeout_s=180)
    assert_one_row_per_key(sink_url, sink_table, 2 * N)
    svc.wait_ready()
    everything = [line["msg"] for line in _json_lines(svc.log_text())]
    assert everything.count("broker reachable again") == 1, everything
    assert everything.count("broker unreachable; retrying (no line per retry)") == 1, everything
    assert svc.terminate() == 0
