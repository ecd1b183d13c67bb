"""End-to-end tests of `python -m consumer run` against a real broker and SQLite / PostgreSQL sinks.

Every test waits on conditions (committed offsets == the writer's end offsets, row counts, metrics), never on
sleeps. Each runs once per sink backend through the parametrized `sink_url` fixture.
"""

from __future__ import annotations

from collections.abc import Callable

from support.db import count_rows, fetch
from support.events import encode, make_event
from support.kafka import Msg, committed_offsets, read_all
from support.runs import assert_one_row_per_key as _assert_one_row_per_key
from support.runs import rows_or_zero as _rows
from support.runs import service_env as _env
from support.runs import setup_topic as _setup
from support.runs import valid_messages as _valid
from support.runs import wait_committed as _wait_committed
from support.runs import wait_metric as _wait_metric
from support.service import ServiceProcess
from support.waiting import wait_until

DLQ_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.original.timestamp",
    "dlq.stage",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.consumer.group",
    "dlq.failed.at",
    "dlq.attempts",
)

StartService = Callable[..., ServiceProcess]


# --- 1. happy path -----------------------------------------------------------------------------------


def test_happy_path_sinks_every_event_once_and_stops_cleanly(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 3000
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    writer.send(_valid(range(n), keyed=True))

    svc = service(_env(kafka_bootstrap, topic, group, sink_url, sink_table))
    _wait_committed(kafka_bootstrap, group, writer, [svc])
    _wait_metric(svc, "sunk", n)

    _assert_one_row_per_key(sink_url, sink_table, n)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 0
    assert svc.terminate() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 3) == writer.end_offsets


# --- 2. poison records -------------------------------------------------------------------------------


def test_poison_records_are_dead_lettered_with_headers_and_tombstones_skipped(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 2000
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    valid = _valid(range(n), keyed=True)
    garbage = [Msg(value=b"garbage", key=f"g{i}".encode()) for i in range(4)]
    empty = [Msg(value=b"", key=f"e{i}".encode()) for i in range(3)]
    keyless = [Msg(value=encode(make_event(100_000 + i))) for i in range(4)]
    empty_key = [Msg(value=encode(make_event(200_000 + i)), key=b"") for i in range(2)]
    tombstones = [Msg(value=None, key=f"t{i}".encode()) for i in range(5)]
    poison = garbage + empty + keyless + empty_key + tombstones
    messages: list[Msg] = []
    step = n // len(poison)
    for i, bad in enumerate(poison):  # interleave so no batch is mostly poison (dead-letter guard)
        messages += valid[i * step : (i + 1) * step]
        messages.append(bad)
    messages += valid[len(poison) * step :]
    assert len(messages) == n + len(poison)
    writer.send(messages)

    svc = service(_env(kafka_bootstrap, topic, group, sink_url, sink_table, key="key"))
    _wait_committed(kafka_bootstrap, group, writer, [svc])

    n_decode = len(garbage) + len(empty)
    n_validate = len(keyless) + len(empty_key)
    n_dlq = n_decode + n_validate
    _wait_metric(svc, "sunk", n)
    _wait_metric(svc, "dlq", n_dlq)
    _wait_metric(svc, "skipped", len(tombstones))
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 0
    total = sum(
        svc.metric_sum("consumer_records_total", outcome=o) for o in ("sunk", "dlq", "skipped", "duplicate")
    )
    assert total == writer.total
    assert svc.metric("consumer_records_total", topic=topic, outcome="dlq") == n_dlq

    assert count_rows(sink_url, sink_table) == n

    letters = read_all(kafka_bootstrap, f"{topic}.dlq", expected=n_dlq)
    assert len(letters) == n_dlq
    for letter in letters:
        missing = [h for h in DLQ_HEADERS if h not in letter.headers]
        assert not missing, f"dead letter {letter} lacks {missing}"
        assert letter.headers["dlq.original.topic"] == topic.encode()
        assert letter.headers["dlq.consumer.group"] == group.encode()
        assert int(letter.headers["dlq.original.partition"]) in range(3)
        assert int(letter.headers["dlq.original.offset"]) >= 0
        assert int(letter.headers["dlq.original.timestamp"]) > 0
        assert letter.headers["dlq.attempts"] == b"1"
        assert letter.headers["dlq.error.class"]
        assert letter.headers["dlq.failed.at"]
    by_stage = sorted(letter.headers["dlq.stage"] for letter in letters)
    assert by_stage == sorted([b"decode"] * n_decode + [b"validate"] * n_validate)
    for letter in letters:
        if letter.value in (b"garbage", b""):
            assert letter.headers["dlq.stage"] == b"decode", letter
        else:
            assert letter.headers["dlq.stage"] == b"validate", letter
            assert not letter.key, letter
    # the dead letter keeps the original value: the garbage and empty payloads come back as they were
    assert sorted(v for v in (letter.value for letter in letters) if v in (b"garbage", b"")) == sorted(
        [b""] * len(empty) + [b"garbage"] * len(garbage)
    )
    # coordinates point at the original records
    originals = {(r.partition, r.offset): r for r in read_all(kafka_bootstrap, topic, expected=writer.total)}
    for letter in letters:
        original = originals[
            (int(letter.headers["dlq.original.partition"]), int(letter.headers["dlq.original.offset"]))
        ]
        assert original.value == letter.value
        assert int(letter.headers["dlq.original.timestamp"]) == original.timestamp

    assert svc.terminate() == 0


# --- 3. restart resumes ------------------------------------------------------------------------------


def test_restart_resumes_from_committed_offsets_without_reprocessing(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    first, second = 2000, 1500
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table)
    writer.send(_valid(range(first), keyed=True))

    svc1 = service(env)
    _wait_committed(kafka_bootstrap, group, writer, [svc1])
    assert svc1.terminate() == 0
    assert count_rows(sink_url, sink_table) == first

    writer.send(_valid(range(first, first + second), keyed=True))
    svc2 = service(env)
    _wait_committed(kafka_bootstrap, group, writer, [svc2])
    _wait_metric(svc2, "sunk", second)
    assert svc2.metric_sum("consumer_records_total", outcome="duplicate") == 0
    assert count_rows(sink_url, sink_table) == first + second
    assert svc2.terminate() == 0


# --- 4. SIGKILL mid-run ------------------------------------------------------------------------------


def test_sigkill_mid_run_then_restart_yields_exactly_one_row_per_key(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 20_000
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, BATCH_MAX_RECORDS="500")
    writer.send(_valid(range(n), keyed=True))

    svc1 = service(env)
    wait_until(lambda: _rows(sink_url, sink_table), 60, "some rows", until=lambda c: c > 0)
    svc1.kill()
    partial = _rows(sink_url, sink_table)
    assert 0 < partial <= n
    print(f"sigkill: {partial} of {n} rows before the kill")

    svc2 = service(env)
    _wait_committed(kafka_bootstrap, group, writer, [svc2])
    _assert_one_row_per_key(sink_url, sink_table, n)
    assert svc2.terminate() == 0


# --- 5. duplicates -----------------------------------------------------------------------------------


def test_same_event_produced_twice_is_one_row_and_counted_duplicate(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n, dups = 2000, 300
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    writer.send(_valid(range(n), keyed=True))
    # the same events again, at later offsets (same key, so the same partition)
    writer.send(_valid(range(dups), keyed=True))
    # and some duplicates on another partition than the original (explicit partition)
    cross = [Msg(value=encode(make_event(i)), partition=(i + 1) % 3) for i in range(dups, 2 * dups)]
    writer.send(cross)

    svc = service(_env(kafka_bootstrap, topic, group, sink_url, sink_table))
    _wait_committed(kafka_bootstrap, group, writer, [svc])
    _wait_metric(svc, "duplicate", 2 * dups)
    _wait_metric(svc, "sunk", n)
    assert count_rows(sink_url, sink_table) == n
    assert svc.terminate() == 0


# --- 6. two processes in one group -------------------------------------------------------------------


def test_two_processes_in_one_group_one_terminated_mid_run(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 5000
    topic, writer = _setup(kafka_bootstrap, make_topic, partitions=4)
    group = unique("group")
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, BATCH_MAX_RECORDS="200")
    a = service(env)
    b = service(env)
    a.wait_ready()
    b.wait_ready()
    writer.send(_valid(range(n), keyed=True))

    wait_until(lambda: _rows(sink_url, sink_table), 60, "some rows", until=lambda c: c > 0)
    assert a.terminate() == 0
    print(f"two processes: {_rows(sink_url, sink_table)} of {n} rows when the first stopped")

    _wait_committed(kafka_bootstrap, group, writer, [b])
    _assert_one_row_per_key(sink_url, sink_table, n)
    assert b.terminate() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 4) == writer.end_offsets


# --- 7. SIGTERM under load ---------------------------------------------------------------------------


def test_sigterm_under_load_commits_exactly_what_was_written(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n = 20_000
    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    env = _env(
        kafka_bootstrap, topic, group, sink_url, sink_table, key="coordinates", BATCH_MAX_RECORDS="1000"
    )
    writer.send(_valid(range(n), keyed=True))

    svc = service(env)
    wait_until(lambda: _rows(sink_url, sink_table), 60, "some rows", until=lambda c: c > 0)
    assert svc.terminate() == 0

    committed = committed_offsets(kafka_bootstrap, group, topic, 3)
    rows = fetch(
        sink_url,
        f"SELECT _kafka_partition AS p, COUNT(*) AS c, MAX(_kafka_offset) AS m FROM {sink_table} GROUP BY _kafka_partition",
    )
    per_partition = {int(r.p): int(r.c) for r in rows}
    max_offset = {int(r.p): int(r.m) for r in rows}
    assert {p: per_partition.get(p, 0) for p in range(3)} == committed
    for p, m in max_offset.items():
        assert m == committed[p] - 1
    print(f"sigterm under load: committed {sum(committed.values())} of {n}")


# --- 8. upsert: the highest offset of a partition wins --------------------------------------------------


def test_upsert_keeps_the_highest_offset_and_replays_write_nothing(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    topic, writer = _setup(kafka_bootstrap, make_topic, partitions=1)
    group = unique("group")
    writer.send([Msg(encode(make_event(i, user_id=1))) for i in range(500)])
    writer.send([Msg(encode(make_event(i, user_id=2))) for i in range(500)])
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, SINK_WRITE_MODE="upsert")

    svc = service(env)
    _wait_committed(kafka_bootstrap, group, writer, [svc])
    assert count_rows(sink_url, sink_table) == 500
    assert fetch(sink_url, f"SELECT COUNT(*) AS c FROM {sink_table} WHERE user_id = 2")[0].c == 500
    assert svc.terminate() == 0

    # A replay of the whole topic by a new group rewrites nothing: every row already holds that offset.
    replay_group = unique("group")
    replay = service({**env, "CONSUMER_GROUP_ID": replay_group})
    _wait_committed(kafka_bootstrap, replay_group, writer, [replay])
    assert replay.metric_sum("consumer_records_total", outcome="sunk") == 0
    assert replay.metric_sum("consumer_records_total", outcome="duplicate") == 1000
    assert fetch(sink_url, f"SELECT COUNT(*) AS c FROM {sink_table} WHERE user_id = 2")[0].c == 500
    assert replay.terminate() == 0


# --- 9. JSON values --------------------------------------------------------------------------------------


def test_json_values_land_in_a_value_column_and_bad_json_is_dead_lettered(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    import json

    topic, writer = _setup(kafka_bootstrap, make_topic)
    group = unique("group")
    good = [Msg(json.dumps({"id": i, "name": f"n{i}"}).encode()) for i in range(400)]
    bad = [Msg(b"{not json"), Msg(b"[1, 2]"), Msg(json.dumps({"name": "no id"}).encode())]
    writer.send(good[:200] + bad + good[200:] + good[:50])  # the last 50 repeat earlier ids
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, key="field:id", VALUE_FORMAT="json")
    env.pop("SCHEMA_FILE")

    svc = service(env)
    _wait_committed(kafka_bootstrap, group, writer, [svc])
    _wait_metric(svc, "dlq", 3)
    assert count_rows(sink_url, sink_table) == 400
    assert svc.metric_sum("consumer_records_total", outcome="sunk") == 400
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 50
    stages = sorted(m.headers["dlq.stage"].decode() for m in read_all(kafka_bootstrap, f"{topic}.dlq", 3))
    assert stages == ["decode", "decode", "validate"]
    assert svc.terminate() == 0
