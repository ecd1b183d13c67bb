"""Hostile writer schemas from the real registry (issue 14): a 64-byte field name, a decimal of precision 2000,
a metadata column's name, a name equal to another but for case, more columns than SINK_MAX_COLUMNS. Each is a
dead letter for its records (stage `validate`, `SchemaRejectedError`), never a crash or a retry loop; the
good records around them land exactly once, a later good schema still adds its column, the service stays
ready, a restart with a hostile latest schema starts, and SINK_SCHEMA_EVOLUTION=none adds no column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fastavro
import pytest
import sqlalchemy as sa
from support.db import connect, count_rows, make_engine
from support.events import encode_wire, event_id, make_event, schema_json
from support.kafka import Msg, read_all
from support.real_registry import RegistryUnderTest
from support.runs import service_env, setup_topic, wait_committed
from support.service import ServiceProcess

StartService = Callable[..., ServiceProcess]
OPTIONAL_STRING: Any = ["null", "string"]


def _with(*fields: dict[str, Any]) -> dict[str, Any]:
    schema = json.loads(schema_json())
    schema["fields"].extend({"default": None, **field} for field in fields)
    return schema


HOSTILE = {
    "long name": _with({"name": "n" * 64, "type": OPTIONAL_STRING}),
    "precision": _with({"name": "big", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                                          "precision": 2000, "scale": 2}]}),
    "metadata": _with({"name": "_kafka_offset", "type": ["null", "long"]}),
    "case": _with({"name": "Event_ID", "type": OPTIONAL_STRING}),
    "wide": _with(*({"name": f"extra_{i}", "type": OPTIONAL_STRING} for i in range(15))),
}
V2 = _with({"name": "referrer", "type": OPTIONAL_STRING})
V3 = _with({"name": "referrer", "type": OPTIONAL_STRING}, {"name": "campaign", "type": OPTIONAL_STRING})


def _messages(registry: RegistryUnderTest, subject: str, schema: dict[str, Any], indices: range) -> list[Msg]:
    schema_id = registry.register(subject, json.dumps(schema))
    parsed = fastavro.parse_schema(schema)
    return [Msg(encode_wire(make_event(i), schema_id, parsed), key=event_id(i).encode()) for i in indices]


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_hostile_writer_schemas_dead_letter_their_records_and_the_service_goes_on(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    schema_registry: RegistryUnderTest,
    service: StartService,
) -> None:
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    subject = f"{topic}-value"
    group = unique("group")
    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table, SCHEMA_REGISTRY_URL=schema_registry.url,
                      SINK_MAX_COLUMNS="20")
    env.pop("SCHEMA_FILE")
    svc = service(env)
    svc.wait_ready()  # before any schema is registered: the table's columns come from the records

    v1 = json.loads(schema_json())
    hostile = [msg for n, schema in enumerate(HOSTILE.values())
               for msg in _messages(schema_registry, subject, schema, range(1000 + 2 * n, 1002 + 2 * n))]
    writer.send(_messages(schema_registry, subject, v1, range(100)) + hostile
                + _messages(schema_registry, subject, v1, range(100, 200))
                + _messages(schema_registry, subject, V2, range(200, 250)))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    assert svc.http_get("/readyz")[0] == 200
    assert count_rows(sink_url, sink_table) == 250
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == len(hostile)
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", len(hostile))
    assert {(m.headers["dlq.stage"], m.headers["dlq.error.class"]) for m in letters} == {
        (b"validate", b"SchemaRejectedError")}
    assert any(b"64 bytes long, over the 63-byte limit" in m.headers["dlq.error.message"] for m in letters)
    columns = _columns(sink_url, sink_table)
    assert "referrer" in columns  # the good schema after the refused ones still added its column
    assert not {"n" * 63, "big", "Event_ID", "extra_0"} & columns
    assert svc.terminate() == 0

    # SINK_SCHEMA_EVOLUTION=none: a schema with a field the table lacks is refused, its records dead-lettered,
    # no column, even when it is the subject's latest schema at start.
    writer.send(_messages(schema_registry, subject, V3, range(300, 310)))
    none_group = unique("group")
    frozen = service({**env, "CONSUMER_GROUP_ID": none_group, "SINK_SCHEMA_EVOLUTION": "none"})
    wait_committed(kafka_bootstrap, none_group, writer, [frozen])
    assert frozen.metric_sum("consumer_records_total", outcome="sunk") == 0
    assert frozen.metric_sum("consumer_records_total", outcome="duplicate") == 250
    assert frozen.metric_sum("consumer_records_total", outcome="dlq") == len(hostile) + 10
    assert "campaign" not in _columns(sink_url, sink_table)
    assert frozen.terminate() == 0

    # A hostile latest schema at start does not stop a restart; the refused schemas stay refused, and the
    # good v3 now adds its column (add-columns again).
    schema_registry.register(subject, json.dumps(HOSTILE["long name"] | {"name": "Latest"}))
    again_group = unique("group")
    again = service({**env, "CONSUMER_GROUP_ID": again_group})
    wait_committed(kafka_bootstrap, again_group, writer, [again])
    assert again.metric_sum("consumer_records_total", outcome="sunk") == 10
    assert again.metric_sum("consumer_records_total", outcome="dlq") == len(hostile)
    assert count_rows(sink_url, sink_table) == 260
    assert "campaign" in _columns(sink_url, sink_table)
    assert "latest registry schema not usable" in again.log_text()
    assert again.terminate() == 0


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_new_field_equal_but_for_case_to_an_older_column_is_a_dead_letter_not_a_failed_alter(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    schema_registry: RegistryUnderTest,
    service: StartService,
) -> None:
    """SQLite compares column names case-insensitively: a table with an older column `Old_Field` (a field no
    current schema has) cannot take `old_field`; the ALTER used to fail as fatal, on every start."""
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    subject = f"{topic}-value"
    v1 = json.loads(schema_json())
    good = _messages(schema_registry, subject, v1, range(20))  # v1 is the latest at start
    group = unique("group")
    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table, SCHEMA_REGISTRY_URL=schema_registry.url)
    env.pop("SCHEMA_FILE")
    svc = service(env)
    svc.wait_ready()  # the table made from v1
    with connect(sink_url) as conn:
        conn.exec_driver_sql(f'ALTER TABLE {sink_table} ADD COLUMN "Old_Field" TEXT')
    assert svc.terminate() == 0

    clash = _messages(schema_registry, f"{topic}-other", _with({"name": "old_field", "type": OPTIONAL_STRING}),
                      range(20, 22))
    writer.send(good[:10] + clash + good[10:])
    again = service(env)
    wait_committed(kafka_bootstrap, group, writer, [again])
    assert count_rows(sink_url, sink_table) == 20
    [letter, _] = read_all(kafka_bootstrap, f"{topic}.dlq", 2)
    assert letter.headers["dlq.error.class"] == b"SchemaRejectedError"
    assert b"'old_field' and 'Old_Field' would be one column" in letter.headers["dlq.error.message"]
    assert again.terminate() == 0
