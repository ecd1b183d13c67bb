"""`produce` end to end: random events of a schema using every Avro type and logical type go through the
real service into SQLite and PostgreSQL and come back out of the table as they went in; the produced mix
(valid, duplicate, poison, tombstone) and end offsets it reports are exactly what the service then sees.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
import sqlalchemy as sa
from support.cli import run_cli, run_json
from support.db import make_engine
from support.fake_registry import FakeSchemaRegistry
from support.kafka import committed_offsets, create_topic, read_all
from support.runs import assert_one_row_per_key, wait_metric
from support.service import ServiceProcess
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]
ALL_TYPES = Path(__file__).resolve().parents[2] / "schemas" / "all_types.avsc"
JSON_COLUMNS = ("f_null", "f_record", "f_array", "f_map", "f_union", "f_nested")
_WIRE_HEADER = 5


def _parsed_schema() -> Any:
    return fastavro.parse_schema(json.loads(ALL_TYPES.read_text()))


def _contract_json(value: Any) -> Any:
    """A value as the contract says it sits inside a JSON column: decimals, times and uuids as strings,
    bytes as base64 (computed here independently of the service's own converter)."""

    def default(item: Any) -> Any:
        if isinstance(item, decimal.Decimal):
            return str(item)
        if isinstance(item, (dt.datetime, dt.date, dt.time)):
            return item.isoformat()
        if isinstance(item, bytes):
            return base64.b64encode(item).decode()
        if isinstance(item, uuid.UUID):
            return str(item)
        raise TypeError(type(item))

    return json.loads(json.dumps(value, default=default))


def _instant(value: Any) -> Any:
    """Timestamps compared as UTC instants: SQLite hands them back naive (in UTC), PostgreSQL aware. A naive
    local-timestamp lands in a timestamptz column read as the session's zone, UTC on the test database."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    return value


def _float32(value: float) -> float:
    """A REAL column holds 32 bits; psycopg reads float4 back through its shortest text, so compare as float32."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _expected_cell(name: str, value: Any) -> Any:
    if name == "f_float":
        return _float32(value)
    if name in JSON_COLUMNS:
        return _contract_json(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return _instant(value)


def _stored_cell(name: str, cell: Any, sqlite: bool) -> Any:
    if name == "f_float":
        return _float32(cell)
    if name in JSON_COLUMNS:
        return json.loads(cell) if sqlite and cell is not None else cell  # SQLite keeps JSON text; JSONB parsed
    if isinstance(cell, memoryview):
        return bytes(cell)
    if isinstance(cell, uuid.UUID):
        return str(cell)
    return _instant(cell)


def _decoded_valid(messages: list[Any], wire: bool) -> dict[str, dict[str, Any]]:
    """The produced values that decode, by id (duplicates collapse onto their original)."""
    schema, found = _parsed_schema(), {}
    for message in messages:
        if message.value is None:
            continue
        buffer = io.BytesIO(message.value[_WIRE_HEADER:] if wire else message.value)
        try:
            value = fastavro.schemaless_reader(buffer, schema)
        except (EOFError, ValueError, IndexError, TypeError):
            continue
        if buffer.tell() != len(buffer.getvalue()) or not isinstance(value, dict):
            continue
        found[str(value["id"])] = value
    return found


def _typed_rows(url: str, table: str) -> dict[str, dict[str, Any]]:
    """Rows by key through the reflected table, so SQLite's stored text and numbers get their column types."""
    engine = make_engine(url)
    try:
        reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            return {str(row._mapping["_idempotency_key"]): dict(row._mapping)
                    for row in conn.execute(sa.select(reflected))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("wire", [False, True], ids=["schemaless", "wire-format"])
def test_every_avro_type_round_trips_through_the_service_into_the_table(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
    schema_registry: FakeSchemaRegistry,
    tmp_path: Path,
    wire: bool,
) -> None:
    topic = make_topic(partitions=3)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    group = unique("group")
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CONSUMER_TOPICS": topic, "CONSUMER_GROUP_ID": group,
           "SINK_URL": sink_url, "SINK_TABLE": sink_table, "IDEMPOTENCY_KEY": "field:id"}
    if wire:
        schema_registry.register(f"{topic}-value", ALL_TYPES.read_text())
        env["SCHEMA_REGISTRY_URL"] = schema_registry.url
        args = ["produce", "--wire-format"]  # the latest <topic>-value schema and its id, from the registry
    else:
        env["SCHEMA_FILE"] = str(ALL_TYPES)
        args = ["produce"]
    report = run_json([*args, "--count", "240", "--seed", "17", "--poison-ratio", "0.05",
                       "--duplicate-ratio", "0.1", "--tombstone-ratio", "0.05"], env, tmp_path)
    mix = {kind: report[kind] for kind in ("valid", "duplicate", "poison", "tombstone")}
    assert sum(mix.values()) == report["total"] == 240 and all(mix.values()), mix

    svc = service(env)
    ends = {int(p): o for p, o in report["end_offsets"].items()}
    assert sum(ends.values()) == 240
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, 3), 120, f"committed == {ends}",
               until=lambda got: got == {p: ends.get(p, 0) for p in range(3)})
    wait_metric(svc, "sunk", mix["valid"])
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == mix["duplicate"]
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == mix["poison"]
    assert svc.metric_sum("consumer_records_total", outcome="skipped") == mix["tombstone"]
    assert_one_row_per_key(sink_url, sink_table, mix["valid"])

    sent = _decoded_valid(read_all(kafka_bootstrap, topic, 240), wire)
    assert len(sent) == mix["valid"]
    names = [field["name"] for field in json.loads(ALL_TYPES.read_text())["fields"]]
    rows = _typed_rows(sink_url, sink_table)
    assert set(rows) == set(sent)
    sqlite = sink_url.startswith("sqlite")
    for key, value in sent.items():
        for name in names:
            assert _stored_cell(name, rows[key][name], sqlite) == _expected_cell(name, value[name]), (name, key)
    assert svc.terminate() == 0


def test_produce_summary_text_and_bad_options(kafka_bootstrap: str, make_topic: Callable[..., str],
                                              tmp_path: Path) -> None:
    topic = make_topic(partitions=2)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CONSUMER_TOPICS": topic, "SCHEMA_FILE": str(ALL_TYPES)}
    done = run_cli(["produce", "--count", "20", "--tombstone-ratio", "1"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"produced 20 records to {topic}" in done.stdout and "tombstone 20" in done.stdout

    fresh = make_topic(partitions=2)  # end offsets are offsets: compare them with a count on an empty topic
    timed = run_json(["produce", "--topic", fresh, "--duration", "0.5", "--rate", "40"], env, tmp_path)
    assert timed["total"] >= 1 and timed["total"] == timed["valid"] == sum(timed["end_offsets"].values())

    too_much = run_cli(["produce", "--poison-ratio", "0.7", "--duplicate-ratio", "0.7"], env, tmp_path)
    assert too_much.returncode == 2
    assert too_much.stderr.strip().startswith("configuration error: --poison-ratio:")
    no_schema = run_cli(["produce", "--count", "1"], {**env, "SCHEMA_FILE": "", "VALUE_FORMAT": "json"}, tmp_path)
    assert no_schema.returncode == 2 and "SCHEMA_FILE" in no_schema.stderr
    assert "Traceback" not in too_much.stderr + no_schema.stderr
