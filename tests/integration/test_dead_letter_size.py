"""Dead letters can always be published (issue 14, point 2), on the real broker.

A value up to MAX_RECORD_BYTES (1 MiB) is above librdkafka's default message.max.bytes (1,000,000): the
dead-letter producer has room for it, and the dead-letter topic the service creates too. A dead-letter
topic whose max.message.bytes is small still gets every letter: letters that fit alone go out whole even
when librdkafka packed them into one batch too large for the topic, and a letter that does not fit at all
goes out without its value, with headers giving its size and digest. The service never stops on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource
from support.cli import run_cli
from support.db import count_rows
from support.kafka import Msg, TopicWriter, admin, committed_offsets, create_topic, read_all
from support.runs import service_env, valid_messages, wait_metric
from support.service import ServiceProcess
from support.waiting import wait_until

StartService = Callable[..., ServiceProcess]

# Big values need a producer of our own with room for them (librdkafka's default is 1,000,000 bytes).
BIG_PRODUCER = {"message.max.bytes": 2_000_000}


def _poison(size: int, tag: bytes) -> bytes:
    """An undecodable value of exactly `size` bytes."""
    head = b"\x00 not an event " + tag + b" "
    return head + b"x" * (size - len(head))


def _wait_all_committed(bootstrap: str, group: str, writer: TopicWriter, svc: ServiceProcess) -> None:
    wait_until(lambda: committed_offsets(bootstrap, group, writer.topic, 1), 90, "every offset committed",
               until=lambda offsets: offsets == writer.end_offsets)
    assert svc.running


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_value_near_max_record_bytes_is_dead_lettered_whole(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], sink_url: str,
    sink_table: str, service: StartService, tmp_path: Path,
) -> None:
    topic = make_topic(partitions=1)
    group = unique("group")
    writer = TopicWriter(kafka_bootstrap, topic, config=BIG_PRODUCER)
    big = _poison(1_040_000, b"big")
    writer.send([*valid_messages(range(10)), Msg(value=big), *valid_messages(range(10, 20))])

    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table)
    svc = service(env)  # it creates the DLQ topic
    _wait_all_committed(kafka_bootstrap, group, writer, svc)

    (letter,) = read_all(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert letter.value == big
    assert letter.headers["dlq.stage"] == b"decode"
    assert "dlq.value.dropped" not in letter.headers
    wait_metric(svc, "sunk", 20)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 1
    assert count_rows(sink_url, sink_table) == 20
    assert svc.http_get("/healthz")[0] == 200
    client = admin(kafka_bootstrap)  # held while the future runs: a collected client ends the request
    created = client.describe_configs([ConfigResource("topic", f"{topic}.dlq")])
    config = next(iter(created.values())).result(timeout=30)
    assert int(config["max.message.bytes"].value) >= 1_048_576 + 1024  # MAX_RECORD_BYTES and headers
    assert svc.terminate() == 0

    # and `dlq replay` has room to send it back
    target = create_topic(kafka_bootstrap, unique("replayed"), 1)
    done = run_cli(["dlq", "replay", "--to-topic", target], env, tmp_path / "replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [m.value for m in read_all(kafka_bootstrap, target, expected=1)] == [big]


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_dead_letter_too_large_for_its_topic_goes_out_without_its_value(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str], sink_url: str,
    sink_table: str, service: StartService, tmp_path: Path,
) -> None:
    topic = make_topic(partitions=1)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1, config={"max.message.bytes": "100000"})
    group = unique("group")
    writer = TopicWriter(kafka_bootstrap, topic, config=BIG_PRODUCER)
    fitting = [_poison(60_000, b"fits %d" % i) for i in range(3)]  # alone each fits; together they do not
    huge = _poison(200_000, b"huge")
    writer.send([*valid_messages(range(10)), *(Msg(value=v) for v in fitting),
                 Msg(value=huge, key=b"huge-key", headers=[("trace-id", b"t-1")]),
                 *valid_messages(range(10, 20))])

    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table, BATCH_MAX_WAIT_MS="2000")
    svc = service(env)
    _wait_all_committed(kafka_bootstrap, group, writer, svc)

    letters = read_all(kafka_bootstrap, f"{topic}.dlq", expected=4)
    assert len(letters) == 4
    by_offset = {int(m.headers["dlq.original.offset"]): m for m in letters}
    for offset, value in zip(range(10, 13), fitting, strict=True):
        assert by_offset[offset].value == value
        assert "dlq.value.dropped" not in by_offset[offset].headers
    dropped = by_offset[13]
    assert dropped.value is None
    assert dropped.key == b"huge-key"
    assert dropped.headers["trace-id"] == b"t-1"
    assert dropped.headers["dlq.value.dropped"] == b"true"
    assert dropped.headers["dlq.value.size"] == b"200000"
    assert dropped.headers["dlq.value.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert dropped.headers["dlq.stage"] == b"decode"
    assert dropped.headers["dlq.error.class"] == b"DecodeError"

    wait_metric(svc, "sunk", 20)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 4
    assert count_rows(sink_url, sink_table) == 20
    assert svc.http_get("/healthz")[0] == 200
    assert "publishing it without value" in svc.log_text()
    assert svc.terminate() == 0

    inspected = run_cli(["dlq", "inspect", "--format", "json"], env, tmp_path / "inspect")
    shown = {r["original_offset"]: r for r in json.loads(inspected.stdout)["records"]}
    assert (shown[13]["value_dropped"], shown[13]["value_preview"]) == (True, "<value dropped: 200000 bytes>")
    assert not shown[10]["value_dropped"]

    # `dlq replay` has no value to send back for it: refused, said so, the others replayed.
    target = create_topic(kafka_bootstrap, unique("replayed"), 1)
    done = run_cli(["dlq", "replay", "--to-topic", target], env, tmp_path / "replay")
    assert "1 refused" in done.stdout and "value dropped" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(m.value for m in read_all(kafka_bootstrap, target, expected=3)) == sorted(fitting)


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_value_beyond_the_producers_limit_goes_out_without_its_value(
    kafka_bootstrap: str, unique: Callable[[str], str], sink_url: str, sink_table: str, service: StartService,
) -> None:
    """A source topic that allows 3 MB: a 2,000,000-byte value is over MAX_RECORD_BYTES (stage decode) and over
    the dead-letter producer's own limit, which refuses it before the broker sees it."""
    topic = create_topic(kafka_bootstrap, unique("topic"), 1, config={"max.message.bytes": "3000000"})
    group = unique("group")
    writer = TopicWriter(kafka_bootstrap, topic, config={"message.max.bytes": 3_000_000})
    huge = _poison(2_000_000, b"over the limit")
    writer.send([*valid_messages(range(5)), Msg(value=huge), *valid_messages(range(5, 10))])

    svc = service(service_env(kafka_bootstrap, topic, group, sink_url, sink_table))
    _wait_all_committed(kafka_bootstrap, group, writer, svc)

    (letter,) = read_all(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert letter.value is None
    assert letter.headers["dlq.error.class"] == b"RecordTooLargeError"
    assert letter.headers["dlq.value.size"] == b"2000000"
    assert letter.headers["dlq.value.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    wait_metric(svc, "sunk", 10)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 1
    assert svc.terminate() == 0
