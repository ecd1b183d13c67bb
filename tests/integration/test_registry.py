"""Confluent wire format through a schema registry, and a schema version that adds an optional field.

The registry is a fake (no real Confluent-compatible registry can run here); broker and databases are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from support.db import count_rows, fetch
from support.events import encode_wire, make_event, schema_json
from support.fake_registry import FakeSchemaRegistry
from support.kafka import Msg, TopicWriter, committed_offsets, create_topic
from support.service import ServiceProcess
from support.waiting import wait_until


def _v2_schema() -> str:
    schema = json.loads(schema_json())
    schema["fields"].append({"name": "referrer", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


def test_wire_format_with_registry_evolves_table_with_new_optional_field(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    schema_registry: FakeSchemaRegistry,
    service: Callable[..., ServiceProcess],
) -> None:
    topic = make_topic(partitions=2)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    subject = f"{topic}-value"
    v1 = schema_registry.register(subject, schema_json())
    writer = TopicWriter(kafka_bootstrap, topic)
    writer.send([Msg(encode_wire(make_event(i), v1)) for i in range(300)] + [Msg(b"\x00\x00\x00\x03\xe7xx")])

    group = unique("group")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CONSUMER_TOPICS": topic, "CONSUMER_GROUP_ID": group,
        "SCHEMA_REGISTRY_URL": schema_registry.url, "SINK_URL": sink_url, "SINK_TABLE": sink_table,
        "IDEMPOTENCY_KEY": "field:event_id",
    }
    svc = service(env)
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, 2), 90, "v1 committed",
               until=lambda got: got == writer.end_offsets)
    assert count_rows(sink_url, sink_table) == 300

    v2_text = _v2_schema()
    v2 = schema_registry.register(subject, v2_text)
    v2_schema = json.loads(v2_text)
    events = [make_event(i, referrer=f"ref-{i}") for i in range(300, 500)]
    writer.send([Msg(encode_wire(event, v2, v2_schema)) for event in events])
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, 2), 90, "v2 committed",
               until=lambda got: got == writer.end_offsets)

    assert count_rows(sink_url, sink_table) == 500
    referrers = fetch(sink_url, f"SELECT COUNT(referrer) AS c FROM {sink_table}")[0].c
    assert referrers == 200  # the new nullable column holds v2's values; v1 rows are NULL
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 1  # the unknown schema id
    assert svc.terminate() == 0


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_registry_outage_holds_records_behind_its_own_breaker_and_dead_letters_nothing(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    schema_registry: FakeSchemaRegistry,
    service: Callable[..., ServiceProcess],
) -> None:
    """The registry is a dependency like the database: while it answers 503 the batch waits (retried behind
    the schema_registry breaker, partitions paused), nothing is dead-lettered, and all lands once it is back."""
    topic = make_topic(partitions=2)
    subject = f"{topic}-value"
    v1 = schema_registry.register(subject, schema_json())
    writer = TopicWriter(kafka_bootstrap, topic)
    group = unique("group")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CONSUMER_TOPICS": topic, "CONSUMER_GROUP_ID": group,
        "SCHEMA_REGISTRY_URL": schema_registry.url, "SINK_URL": sink_url, "SINK_TABLE": sink_table,
        "IDEMPOTENCY_KEY": "field:event_id", "BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_RESET_TIMEOUT_MS": "500",
        "RETRY_BACKOFF_INITIAL_MS": "50", "RETRY_BACKOFF_MAX_MS": "200",
    }
    svc = service(env)
    svc.wait_ready()
    schema_registry.set_available(False)  # before the first record: schema id v1 is not cached yet
    writer.send([Msg(encode_wire(make_event(i), v1)) for i in range(400)])

    def breaker(dependency: str) -> float:
        return svc.metric("consumer_circuit_breaker_state", dependency=dependency)

    wait_until(lambda: breaker("schema_registry"), 60, "the schema_registry breaker open", until=lambda v: v == 2)
    assert breaker("sink") == 0
    assert svc.http_get("/readyz")[0] == 503
    assert svc.metric("consumer_sink_retries_total", error_class="RegistryUnavailableError") >= 2
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 2) == {0: 0, 1: 0}

    schema_registry.set_available(True)
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, 2), 60, "all committed",
               until=lambda got: got == writer.end_offsets)
    assert count_rows(sink_url, sink_table) == 400
    assert breaker("schema_registry") == 0
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 0
    assert svc.terminate() == 0
