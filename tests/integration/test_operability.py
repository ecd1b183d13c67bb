"""What an operator's first mistakes and first outages look like from outside (issue 17): a source topic
that does not exist is waited for, never created, and consumed once it appears; a lost broker is one
WARNING, a readable /status and a failing /readyz, never a line per retry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_cli
from support.db import count_rows
from support.kafka import TopicWriter, admin, create_topic
from support.runs import assert_one_row_per_key, service_env, valid_messages, wait_committed
from support.service import ServiceProcess
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]
SQLITE_ONLY = pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
N = 500
MISSING_WARNING = "topic does not exist; waiting for it to be created"


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
