"""Hostile keys and values through the real service (issue 14): a key longer than PostgreSQL's index row limit,
a binary key that reads like a text key, a JSON string with a lone surrogate. Each is one record's fate, never
the partition's: the records around them land exactly once, the service stays ready, a restart passes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from support.db import count_rows, fetch
from support.kafka import Msg, read_all
from support.runs import service_env, setup_topic, wait_committed
from support.service import ServiceProcess

from consumer.decode.keys import MAX_KEY_BYTES

StartService = Callable[..., ServiceProcess]
LONG_A = b"a" * 10_240  # 10 KB: PostgreSQL's btree refuses index rows over about 2.7 KB
LONG_B = b"a" * 10_239 + b"b"


def _value(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


def test_long_binary_and_hex_looking_keys_each_land_once_and_a_lone_surrogate_is_the_records_failure(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    group = unique("group")
    plain = [Msg(_value(i), key=f"k{i}".encode()) for i in range(100)]
    hostile = [
        Msg(_value(1000), key=LONG_A),
        Msg(_value(1001), key=LONG_B),
        Msg(_value(1002), key=LONG_A),  # the same long key again: a duplicate, one row
        Msg(_value(1003), key=b"\xff"),  # binary, stored as the contract's hex "ff"
        Msg(_value(1004), key=b"ff"),  # text "ff": its own row, no longer a duplicate of 0xff
        Msg(b'{"n": 1005, "s": "\\ud800"}', key=b"surrogate"),  # the driver cannot encode it
    ]
    writer.send(plain[:50] + hostile + plain[50:])
    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table, key="key", VALUE_FORMAT="json")
    env.pop("SCHEMA_FILE")

    svc = service(env)
    wait_committed(kafka_bootstrap, group, writer, [svc])
    assert svc.http_get("/readyz")[0] == 200
    assert count_rows(sink_url, sink_table) == 100 + 4
    keys = {row.k for row in fetch(sink_url, f"SELECT _idempotency_key AS k FROM {sink_table}")}
    assert {"ff", "~ff"} <= keys
    digests = sorted(k for k in keys if k.startswith("~sha256:"))
    assert len(digests) == 2
    assert all(len(k.encode()) <= MAX_KEY_BYTES for k in keys)
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 1
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 1
    [letter] = read_all(kafka_bootstrap, f"{topic}.dlq", 1)
    assert letter.headers["dlq.stage"] == b"sink"
    assert letter.headers["dlq.error.class"] == b"RecordRejectedError"
    assert letter.key == b"surrogate"
    assert svc.terminate() == 0

    # A restart from the beginning (a new group) passes every one of them again: nothing new, nothing stuck.
    replay_group = unique("group")
    replay = service({**env, "CONSUMER_GROUP_ID": replay_group})
    wait_committed(kafka_bootstrap, replay_group, writer, [replay])
    assert replay.metric_sum("consumer_records_total", outcome="sunk") == 0
    assert replay.metric_sum("consumer_records_total", outcome="duplicate") == 100 + 5
    assert count_rows(sink_url, sink_table) == 100 + 4
    assert replay.terminate() == 0
