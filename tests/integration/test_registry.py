"""Confluent wire format through a schema registry, and a schema version that adds an optional field.

The registry is a fake (no real Confluent-compatible registry can run here); broker and databases are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable

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
