"""Helpers for tests that run the service end to end: its environment, sample traffic, and exact-count waits.

Shared by the integration suites (core guarantees, fault tests) so each asserts "exactly once" the same way:
committed offsets == the writer's end offsets, one row per idempotency key, outcome counters as expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from .db import count_rows, fetch
from .events import encode, event_id, make_event
from .kafka import Msg, TopicWriter, committed_offsets, create_topic
from .service import ServiceProcess
from .waiting import wait_until

SCHEMA_FILE = str(Path(__file__).resolve().parents[2] / "schemas" / "event.avsc")
COMMIT_TIMEOUT_S = 120.0


def service_env(
    bootstrap: str,
    topic: str,
    group: str,
    sink_url: str,
    sink_table: str,
    key: str = "field:event_id",
    **extra: str,
) -> dict[str, str]:
    """The service's environment for one topic of `schemas/event.avsc` events; `extra` adds settings."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CONSUMER_TOPICS": topic,
        "CONSUMER_GROUP_ID": group,
        "DLQ_TOPIC": f"{topic}.dlq",
        "SCHEMA_FILE": SCHEMA_FILE,
        "SINK_URL": sink_url,
        "SINK_TABLE": sink_table,
        "IDEMPOTENCY_KEY": key,
        **extra,
    }


def valid_messages(indices: range | list[int], keyed: bool = False) -> list[Msg]:
    """Events `indices` encoded, optionally keyed by their event id (so one event always hits one partition)."""
    return [Msg(value=encode(make_event(i)), key=event_id(i).encode() if keyed else None) for i in indices]


def rows_or_zero(url: str, table: str) -> int:
    """Rows in `table`, 0 while the service has not created it."""
    try:
        return count_rows(url, table)
    except DBAPIError:
        return 0


def setup_topic(
    bootstrap: str, make_topic: Callable[..., str], partitions: int = 3
) -> tuple[str, TopicWriter]:
    """A fresh topic, its dead-letter topic (`<topic>.dlq`, one partition) and a writer for it."""
    topic = make_topic(partitions=partitions)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    return topic, TopicWriter(bootstrap, topic)


def wait_committed(
    bootstrap: str,
    group: str,
    writer: TopicWriter,
    services: list[ServiceProcess],
    timeout_s: float = COMMIT_TIMEOUT_S,
) -> None:
    """Wait until the group's committed offsets equal the writer's end offsets; fail at once if a service died."""
    expected = writer.end_offsets

    def committed() -> Mapping[int, int]:
        for svc in services:
            if not svc.running:
                pytest.fail(f"service pid {svc.pid} exited with {svc.process.returncode}\n{svc.log_tail()}")
        return committed_offsets(bootstrap, group, writer.topic, len(expected))

    wait_until(
        committed,
        timeout_s,
        f"committed offsets == {expected}",
        interval_s=0.25,
        until=lambda got: got == expected,
    )


def assert_one_row_per_key(url: str, table: str, n: int) -> None:
    """Exactly `n` rows and `n` distinct idempotency keys: nothing lost, nothing doubled."""
    assert count_rows(url, table) == n
    assert fetch(url, f"SELECT COUNT(DISTINCT _idempotency_key) AS c FROM {table}")[0].c == n


def wait_metric(svc: ServiceProcess, outcome: str, expected: int, timeout_s: float = 30.0) -> None:
    """Wait until consumer_records_total{outcome=...} summed over topics equals `expected`."""
    wait_until(
        lambda: svc.metric_sum("consumer_records_total", outcome=outcome),
        timeout_s,
        f"consumer_records_total{{outcome={outcome}}} == {expected}",
        until=lambda v: v == expected,
    )
