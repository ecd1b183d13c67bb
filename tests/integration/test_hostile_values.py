"""Hostile values through the real service on the real broker (issue 14, point 1): a deeply recursive value
(which crashed the interpreter in fastavro's C reader: exit 139, no log line) and an array of items that take
zero bytes announcing 2**60 of them in 11 bytes (which spun holding the GIL, or allocated gigabytes) are
dead-lettered with stage `decode`; the service stays live and ready throughout, the good records around them
land exactly once, a fresh group reading everything again does not stop on them either, and SIGTERM exits 0.

The writer schema is the test's own, recursive with an `array<null>` field: a SCHEMA_FILE, or registered in the
schema registry (the run's real one when there is one) with the values in wire format.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from support.avro_bytes import long_bytes
from support.db import count_rows
from support.kafka import Msg, committed_offsets, read_all
from support.runs import service_env, setup_topic
from support.service import ServiceProcess
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]

HOSTILE_SCHEMA = {
    "type": "record", "name": "Hostile", "namespace": "test.security",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "next", "type": ["null", "Hostile"]},
        {"name": "flags", "type": {"type": "array", "items": "null"}},
    ],
}
GOOD_BEFORE, GOOD_AFTER = 100, 100
DEEP_LEVELS = 50_000  # fastavro's C reader overflowed the C stack from about 10,000


def _text(value: str) -> bytes:
    data = value.encode()
    return long_bytes(len(data)) + data


def deep_value(levels: int) -> bytes:
    """`levels` records each holding the next: (id, branch 1) per level, then the last's null and empty
    flags, then each enclosing record's empty flags."""
    return (_text("deep") + long_bytes(1) + (_text("") + long_bytes(1)) * (levels - 1) + _text("") + long_bytes(0) + long_bytes(0)
            + long_bytes(0) * levels)


def zero_byte_items_value() -> bytes:
    """id, next null, then one block announcing 2**60 nulls (zero bytes each) and the end block."""
    return _text("zero") + long_bytes(0) + long_bytes(2**60) + long_bytes(0)


def good_value(schema: Any, i: int) -> bytes:
    nested = {"id": f"inner-{i}", "next": None, "flags": []} if i % 2 else None
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, {"id": f"good-{i}", "next": nested, "flags": [None] * (i % 3)})
    return buffer.getvalue()


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("schema_from", ["schema_file", "registry"])
def test_hostile_values_are_dead_lettered_while_the_service_stays_live_and_ready(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    schema_from: str,
) -> None:
    """The writer schema as SCHEMA_FILE (schemaless values), or registered (wire format, analysed when the
    service loads its id)."""
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    settings = {"BATCH_MAX_RECORDS": "50"}
    if schema_from == "registry":
        registry = request.getfixturevalue("schema_registry")
        header = b"\x00" + registry.register(f"{topic}-value", json.dumps(HOSTILE_SCHEMA)).to_bytes(4, "big")
        settings["SCHEMA_REGISTRY_URL"] = registry.url
    else:
        header = b""
        settings["SCHEMA_FILE"] = str(tmp_path / "hostile.avsc")
        Path(settings["SCHEMA_FILE"]).write_text(json.dumps(HOSTILE_SCHEMA), encoding="utf-8")
    schema = fastavro.parse_schema(HOSTILE_SCHEMA)
    hostile = [header + deep_value(DEEP_LEVELS), header + zero_byte_items_value()]
    writer.send([Msg(value=header + good_value(schema, i)) for i in range(GOOD_BEFORE)])
    writer.send([Msg(value=value) for value in hostile])
    writer.send([Msg(value=header + good_value(schema, i)) for i in range(GOOD_BEFORE, GOOD_BEFORE + GOOD_AFTER)])

    def run_until_everything_is_committed(group: str) -> ServiceProcess:
        env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table, key="field:id")
        del env["SCHEMA_FILE"]  # the event schema: here the writer schema is the test's own
        running = service({**env, **settings})
        running.wait_ready()

        def committed_while_live_and_ready() -> dict[int, int]:
            assert running.running, running.log_tail()
            assert running.http_get("/healthz")[0] == 200, running.log_tail()
            assert running.http_get("/readyz")[0] == 200, running.log_tail()
            return dict(committed_offsets(kafka_bootstrap, group, topic, 1))

        wait_until(committed_while_live_and_ready, 120, f"committed offsets == {writer.end_offsets}",
                   interval_s=0.25, until=lambda got: got == writer.end_offsets)
        return running

    first = run_until_everything_is_committed(unique("group"))
    assert count_rows(sink_url, sink_table) == GOOD_BEFORE + GOOD_AFTER
    assert first.metric_sum("consumer_records_total", outcome="dlq") == len(hostile)
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", expected=len(hostile))
    assert [letter.value for letter in letters] == hostile
    for letter in letters:
        assert letter.headers["dlq.stage"] == b"decode"
        assert letter.headers["dlq.error.class"] == b"DecodeLimitError"
    assert b"DECODE_MAX_DEPTH=64" in letters[0].headers["dlq.error.message"]
    assert b"DECODE_MAX_ITEMS=1048576" in letters[1].headers["dlq.error.message"]
    assert first.terminate() == 0

    # A new group reads everything again: the hostile records stop nothing this time either, and the good
    # records are not written twice.
    again = run_until_everything_is_committed(unique("group"))
    assert count_rows(sink_url, sink_table) == GOOD_BEFORE + GOOD_AFTER
    assert len(read_all(kafka_bootstrap, f"{topic}.dlq", expected=2 * len(hostile))) == 2 * len(hostile)
    assert again.terminate() == 0
