"""`dlq inspect` and `dlq replay` against a real broker, and replay into real SQLite and PostgreSQL sinks.

The inspect tests write dead-letter records with the contract's headers directly (through the service's
own `dead_letter_headers`), so the mix is known exactly. The replay test makes its dead letters the way
production does: the service rejects rows the table cannot hold (stage `sink`), then the table is fixed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.cli import run_cli, run_json
from support.db import connect, fetch, table_exists
from support.events import decode, encode, event_id, make_event
from support.kafka import Msg, ReadMsg, TopicWriter, committed_offsets, create_topic, read_all
from support.runs import SCHEMA_FILE, assert_one_row_per_key, service_env, valid_messages, wait_metric
from support.service import BASE_ENV, ServiceProcess
from support.services import TcpProxy, local_kafka
from support.waiting import wait_until

from consumer.kafka.dead_letters import dead_letter_headers
from consumer.records import DeadLetter, RawRecord, Stage
from ops.testbed.net import free_port

StartService = Callable[..., ServiceProcess]
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _letter_msg(
    topic: str, partition: int, offset: int, stage: Stage, error_class: str, failed_at: dt.datetime,
    value: bytes, attempts: int = 1,
) -> Msg:
    raw = RawRecord(topic, partition, offset, 1_700_000_000_000 + offset, f"k{offset}".encode(), value,
                    (("trace-id", f"t{offset}".encode()),))
    headers = dead_letter_headers(DeadLetter(raw, stage, error_class, f"{error_class} at {offset}", attempts),
                                  "orders-group", failed_at)
    return Msg(value=value, key=raw.key, headers=[(n, v if isinstance(v, bytes) else (v or "").encode())
                                                  for n, v in headers])


def _known_mix(source_a: str, source_b: str) -> tuple[list[Msg], dict[tuple[str, int, int], str]]:
    """10 dead letters (3 decode, 2 validate, 5 sink; 6 from A, 4 from B, one per day per stage group) and
    the stage of each by original coordinates."""
    letters = []
    for i in range(3):
        letters.append(_letter_msg(source_a, 0, i, Stage.DECODE, "DecodeError", BASE + dt.timedelta(hours=i),
                                   b"\x00not avro"))
    for i in range(2):
        letters.append(_letter_msg(source_a, 1, 10 + i, Stage.VALIDATE, "MissingKeyError",
                                   BASE + dt.timedelta(days=1, hours=i), encode(make_event(i))))
    for i in range(4):
        letters.append(_letter_msg(source_b, 2, 20 + i, Stage.SINK, "RecordRejectedError",
                                   BASE + dt.timedelta(days=2, hours=i), encode(make_event(10 + i))))
    letters.append(_letter_msg(source_a, 2, 30, Stage.SINK, "RecordRejectedError", BASE + dt.timedelta(days=3),
                               encode(make_event(30))))
    stages = {}
    for msg in letters:
        headers = dict(msg.headers or [])
        coordinates = (headers["dlq.original.topic"].decode(), int(headers["dlq.original.partition"]),
                       int(headers["dlq.original.offset"]))
        stages[coordinates] = headers["dlq.stage"].decode()
    return letters, stages


def _coordinates(records: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(r["original_topic"], r["original_partition"], r["original_offset"]) for r in records}


@pytest.fixture
def known_dlq(kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str]) -> dict[str, Any]:
    source_a, source_b = unique("orders"), unique("payments")
    dlq = make_topic(partitions=2, prefix="dlq")
    letters, stages = _known_mix(source_a, source_b)
    foreign = [Msg(value=b"written by hand", partition=0),
               Msg(value=b"half a letter", headers=[("dlq.stage", b"sink")], partition=1)]
    TopicWriter(kafka_bootstrap, dlq).send(letters[:5] + foreign[:1] + letters[5:] + foreign[1:])
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CONSUMER_TOPICS": source_a, "DLQ_TOPIC": dlq,
           "SCHEMA_FILE": SCHEMA_FILE, "CONSUMER_GROUP_ID": unique("group")}
    return {"env": env, "dlq": dlq, "a": source_a, "b": source_b, "stages": stages}


def test_inspect_counts_every_stage_and_error_class_and_reports_foreign_records(
    known_dlq: dict[str, Any], tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = run_json(["dlq", "inspect"], known_dlq["env"], tmp_path)

    summary = out["summary"]
    assert (summary["scanned"], summary["matched"], summary["shown"], summary["foreign"]) == (12, 10, 10, 2)
    assert summary["by_stage"] == {"decode": 3, "sink": 5, "validate": 2}
    assert summary["by_error_class"] == {"DecodeError": 3, "MissingKeyError": 2, "RecordRejectedError": 5}
    assert summary["by_topic"] == {known_dlq["a"]: 6, known_dlq["b"]: 4}
    assert summary["failed_at"] == {"first": "2024-01-01T00:00:00.000Z", "last": "2024-01-04T00:00:00.000Z"}
    assert _coordinates(out["records"]) == set(known_dlq["stages"])
    assert {r["stage"] for r in out["records"] if r["error_class"] == "DecodeError"} == {"decode"}
    first = next(r for r in out["records"] if r["original_offset"] == 20)
    assert (first["attempts"], first["consumer_group"], first["key"]) == (1, "orders-group", "k20")
    assert first["value_preview"].startswith('{"event_id":"' + event_id(10)[:8])
    assert sorted(len(f["missing_headers"]) for f in out["foreign"]) == [4, 5]
    # reading joined no group and committed nothing
    group = f"{known_dlq['env']['CONSUMER_GROUP_ID']}.dlq-inspect"
    assert committed_offsets(kafka_bootstrap, group, known_dlq["dlq"], 2) == {0: 0, 1: 0}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--stage", "sink"], {"sink": 5}),
        (["--stage", "sink,validate"], {"sink": 5, "validate": 2}),
        (["--error-class", "DecodeError"], {"decode": 3}),
        (["--topic", "B"], {"sink": 4}),
        (["--topic", "A", "--stage", "sink"], {"sink": 1}),
        (["--since", "2024-01-02", "--until", "2024-01-04"], {"validate": 2, "sink": 4}),
        (["--since", "2024-01-04T00:00:00Z"], {"sink": 1}),
    ],
)
def test_inspect_filters_select_exactly_the_matching_records(
    known_dlq: dict[str, Any], tmp_path: Path, filters: list[str], expected: dict[str, int]
) -> None:
    args = [known_dlq["a"] if f == "A" else known_dlq["b"] if f == "B" else f for f in filters]
    out = run_json(["dlq", "inspect", *args], known_dlq["env"], tmp_path)

    assert out["summary"]["by_stage"] == expected
    want = {c for c, stage in known_dlq["stages"].items() if stage in expected}
    if "--topic" in filters:
        want = {c for c in want if c[0] == args[args.index("--topic") + 1]}
    if "--since" in filters:
        got_days = {r["failed_at"][:10] for r in out["records"]}
        assert got_days <= {"2024-01-02", "2024-01-03", "2024-01-04"}
    assert len(out["records"]) == sum(expected.values())
    assert _coordinates(out["records"]) <= want
    assert out["summary"]["foreign"] == 2  # foreign records are reported whatever the filter


def test_inspect_limit_lists_n_records_but_counts_all(known_dlq: dict[str, Any], tmp_path: Path) -> None:
    out = run_json(["dlq", "inspect", "--limit", "3"], known_dlq["env"], tmp_path)
    assert (out["summary"]["matched"], out["summary"]["shown"], len(out["records"])) == (10, 3, 3)


def test_inspect_text_shows_summary_table_and_foreign_records(known_dlq: dict[str, Any], tmp_path: Path) -> None:
    done = run_cli(["dlq", "inspect"], known_dlq["env"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "10 match, 2 foreign" in done.stdout
    assert "RecordRejectedError  5" in done.stdout
    assert "foreign records: 2 without dead-letter headers" in done.stdout
    assert f"{known_dlq['b']}/2/20" in done.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--stage", "parse"], "--stage"), (["--since", "yesterday-ish"], "--since"), (["--limit", "0"], "--limit")],
)
def test_inspect_bad_option_exits_2_naming_it(
    known_dlq: dict[str, Any], tmp_path: Path, args: list[str], named: str
) -> None:
    done = run_cli(["dlq", "inspect", *args], known_dlq["env"], tmp_path)
    assert done.returncode == 2
    assert named in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_inspect_missing_topic_exits_2(known_dlq: dict[str, Any], tmp_path: Path) -> None:
    done = run_cli(["dlq", "inspect", "--dlq-topic", "no-such-topic-here"], known_dlq["env"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "configuration error: DLQ_TOPIC: topic 'no-such-topic-here' does not exist"


# --- replay ------------------------------------------------------------------------------------------

_NARROW = 40  # page_url characters the broken table holds; the long events have 80


def _long_event(i: int) -> Msg:
    return Msg(value=encode(make_event(i, page_url="https://example.com/" + "x" * 60)))


def _narrow_column(url: str, table: str) -> None:
    """Break the table so long page_urls are rejected row by row (stage `sink`): a too-short varchar on
    PostgreSQL; SQLite ignores varchar lengths, so a trigger plays the same part there."""
    with connect(url) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN page_url TYPE varchar({_NARROW})"))
        else:
            conn.execute(sa.text(
                f"CREATE TRIGGER narrow_{table} BEFORE INSERT ON {table} WHEN length(NEW.page_url) > {_NARROW} "
                "BEGIN SELECT RAISE(ABORT, 'page_url too long'); END"
            ))


def _widen_column(url: str, table: str) -> None:
    with connect(url) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN page_url TYPE text"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER narrow_{table}"))


def _merged(*ends: dict[int, int]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for one in ends:
        for partition, offset in one.items():
            merged[partition] = max(merged.get(partition, 0), offset)
    return merged


def _replayed_ends(report: dict[str, Any], topic: str) -> dict[int, int]:
    return {int(p): o for p, o in report["end_offsets"].get(topic, {}).items()}


def _wait_committed_to(bootstrap: str, group: str, topic: str, expected: dict[int, int], svc: ServiceProcess) -> None:
    def committed() -> dict[int, int]:
        if not svc.running:
            pytest.fail(f"service exited with {svc.process.returncode}\n{svc.log_tail()}")
        return committed_offsets(bootstrap, group, topic, len(expected))

    wait_until(committed, 120, f"committed offsets == {expected}", interval_s=0.25, until=lambda got: got == expected)


def _event_ids(messages: list[ReadMsg]) -> Counter[str]:
    return Counter(decode(m.value)["event_id"] for m in messages if m.value is not None)


def test_replay_after_fixing_the_cause_lands_every_record_once_and_resumes(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
    tmp_path: Path,
) -> None:
    n, k = 30, 6
    topic = make_topic(partitions=3)
    dlq = create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(kafka_bootstrap, topic)
    group = unique("group")
    env = service_env(kafka_bootstrap, topic, group, sink_url, sink_table)
    svc = service(env)
    svc.wait_ready()
    wait_until(lambda: table_exists(sink_url, sink_table), 30, f"table {sink_table} created")
    _narrow_column(sink_url, sink_table)

    # 1. n fit, k are rejected by the table and dead-lettered with stage sink
    writer.send(valid_messages(range(n)) + [_long_event(i) for i in range(n, n + k)])
    _wait_committed_to(kafka_bootstrap, group, topic, writer.end_offsets, svc)
    wait_metric(svc, "sunk", n)
    wait_metric(svc, "dlq", k)
    summary = run_json(["dlq", "inspect"], env, tmp_path)["summary"]
    assert (summary["by_stage"], summary["by_error_class"]) == ({"sink": k}, {"RecordRejectedError": k})

    # 2. an interrupted replay (--limit) before the fix: those 2 fail again, with dlq.attempts + 1
    first = run_json(["dlq", "replay", "--stage", "sink", "--limit", "2"], env, tmp_path)
    assert (first["matched"], first["replayed"]) == (k, 2)
    ends = _merged(writer.end_offsets, _replayed_ends(first, topic))
    _wait_committed_to(kafka_bootstrap, group, topic, ends, svc)
    wait_metric(svc, "dlq", k + 2)
    letters = read_all(kafka_bootstrap, dlq, k + 2)
    assert [m.headers["dlq.attempts"] for m in letters] == [b"1"] * k + [b"2"] * 2
    assert _event_ids(letters[k:]) == _event_ids(letters[:2])  # the two replayed ones came back

    # 3. fix the cause while the service runs (no restart: its staging table follows the widened column),
    # replay: it resumes after the first two and takes the two that came back
    _widen_column(sink_url, sink_table)
    second = run_json(["dlq", "replay", "--stage", "sink"], env, tmp_path)
    assert (second["matched"], second["replayed"]) == (k, k)
    ends = _merged(ends, _replayed_ends(second, topic))
    _wait_committed_to(kafka_bootstrap, group, topic, ends, svc)
    wait_metric(svc, "sunk", n + k)
    assert_one_row_per_key(sink_url, sink_table, n + k)
    long_rows = fetch(sink_url, f"SELECT COUNT(*) AS c FROM {sink_table} WHERE length(page_url) > {_NARROW}")
    assert long_rows[0].c == k
    replayed = [m for m in read_all(kafka_bootstrap, topic, sum(ends.values())) if "dlq.replay.count" in m.headers]
    copies = _event_ids(replayed)  # each of the k sent once, the first two twice (before and after the fix)
    assert sorted(copies.values()) == [1] * (k - 2) + [2] * 2
    # the two that failed again kept their count through the dead-letter topic: their second replay is 2
    assert sorted(m.headers["dlq.replay.count"] for m in replayed) == [b"1"] * k + [b"2"] * 2
    assert all("dlq.stage" not in m.headers for m in replayed)

    # 4. the same replay again has nothing left to send
    third = run_json(["dlq", "replay", "--stage", "sink"], env, tmp_path)
    assert (third["matched"], third["replayed"]) == (0, 0)

    # 5. sending everything again on purpose writes nothing twice: the idempotency key travels along
    again = run_json(["dlq", "replay", "--stage", "sink", "--from-beginning"], env, tmp_path)
    assert again["replayed"] == k + 2
    _wait_committed_to(kafka_bootstrap, group, topic, _merged(ends, _replayed_ends(again, topic)), svc)
    wait_metric(svc, "duplicate", k + 2)
    assert_one_row_per_key(sink_url, sink_table, n + k)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == k + 2  # none since the fix
    assert svc.terminate() == 0


def test_replay_dry_run_sends_nothing_and_moves_no_position(
    known_dlq: dict[str, Any], tmp_path: Path, kafka_bootstrap: str
) -> None:
    both = ["--allow-topic", known_dlq["b"]]  # four of the sink letters came from B, which is not consumed
    out = run_json(["dlq", "replay", "--dry-run", "--stage", "sink", *both], known_dlq["env"], tmp_path)
    assert (out["matched"], out["replayed"], out["committed"], out["dry_run"]) == (5, 0, {}, True)
    assert committed_offsets(kafka_bootstrap, out["group"], known_dlq["dlq"], 2) == {0: 0, 1: 0}
    text = run_cli(["dlq", "replay", "--dry-run", "--stage", "sink", *both], known_dlq["env"], tmp_path)
    assert "dry run: would replay 5 records" in text.stdout


def test_replay_sends_only_to_consumed_topics_unless_a_topic_is_allowed(
    known_dlq: dict[str, Any], tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A header names the destination, and anyone who writes to the DLQ writes headers: only CONSUMER_TOPICS
    (A) is a destination by default; B's letters are refused, counted, and sent once B is allowed."""
    a, b, env = known_dlq["a"], known_dlq["b"], known_dlq["env"]
    create_topic(kafka_bootstrap, a, 3)
    create_topic(kafka_bootstrap, b, 3)

    preview = run_cli(["dlq", "replay", "--dry-run", "--stage", "sink"], env, tmp_path)
    assert preview.returncode == 1, preview.stdout + preview.stderr
    assert "dry run: would replay 1 records" in preview.stdout
    assert f"4 would be refused, topic not allowed ({b} 4)" in preview.stdout

    refused = run_cli(["dlq", "replay", "--stage", "sink", "--format", "json"], env, tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = json.loads(refused.stdout)
    assert (out["replayed"], out["to_topics"], out["refused"]) == (1, {a: 1}, 4)
    assert out["refused_by_reason"] == {"topic not allowed": {b: 4}}
    assert len(read_all(kafka_bootstrap, a, expected=1)) == 1
    assert read_all(kafka_bootstrap, b, expected=0) == []

    allowed = run_json(["dlq", "replay", "--stage", "sink", "--topic", b, "--allow-topic", b], env, tmp_path)
    assert (allowed["replayed"], allowed["to_topics"], allowed["refused"]) == (4, {b: 4}, 0)
    assert len(read_all(kafka_bootstrap, b, expected=4)) == 4
    assert len(read_all(kafka_bootstrap, a, expected=1)) == 1  # nothing of A twice


def test_a_killed_replay_resumes_repeating_at_most_the_unacknowledged_chunk(
    tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A broker slowed by a proxy makes the replay take seconds, so it can be SIGKILLed mid-way for sure."""
    n, chunk = 300, 5
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy, local_kafka(tmp_path, port, proxy.port) as broker:
        bootstrap = broker.bootstrap
        source = create_topic(bootstrap, unique("orders"), 1)
        dlq = create_topic(bootstrap, f"{source}.dlq", 1)
        TopicWriter(bootstrap, dlq).send(
            _letter_msg(source, 0, i, Stage.SINK, "RecordRejectedError", BASE, encode(make_event(i)))
            for i in range(n)
        )
        group = unique("replay")
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CONSUMER_TOPICS": source, "DLQ_TOPIC": dlq,
               "SCHEMA_FILE": SCHEMA_FILE, "IDEMPOTENCY_KEY": "field:event_id"}
        proxy.set_latency(0.02)  # every chunk now waits for a slowed produce and a slowed commit
        args = ["dlq", "replay", "--group", group, "--chunk", str(chunk), "--format", "json"]
        with (tmp_path / "replay.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "consumer", *args], cwd=tmp_path,
                                       env={**os.environ, **BASE_ENV, **env}, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: committed_offsets(bootstrap, group, dlq, 1)[0], 60, "a first committed chunk",
                           until=lambda offset: offset >= 50)
                process.kill()
                process.wait(timeout=10)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        position = committed_offsets(bootstrap, group, dlq, 1)[0]
        assert 50 <= position < n and position % chunk == 0  # killed mid-way, between chunks

        proxy.set_latency(0)
        resumed = run_json(args[:-2], env, tmp_path)
        assert (resumed["matched"], resumed["replayed"]) == (n - position, n - position)
        assert committed_offsets(bootstrap, group, dlq, 1) == {0: n}
        sent = read_all(bootstrap, source, n)
        ids = _event_ids(sent)
        assert set(ids) == {event_id(i) for i in range(n)}
        assert len(sent) - n <= chunk  # at most the chunk in flight at the kill went out twice
        assert all(count <= 2 for count in ids.values())


def test_replay_to_another_topic_keeps_key_value_headers_and_optionally_the_timestamp(
    known_dlq: dict[str, Any], tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    target = make_topic(partitions=1, prefix="fixed")
    out = run_json(["dlq", "replay", "--stage", "sink", "--to-topic", target, "--keep-timestamp"],
                   known_dlq["env"], tmp_path)
    assert (out["replayed"], out["to_topics"]) == (5, {target: 5})

    replayed = read_all(kafka_bootstrap, target, 5)
    assert len(replayed) == 5
    by_offset = {int(m.key.decode()[1:]): m for m in replayed if m.key}
    assert sorted(by_offset) == [20, 21, 22, 23, 30]
    for original, message in by_offset.items():
        assert message.timestamp == 1_700_000_000_000 + original
        assert message.headers == {"trace-id": f"t{original}".encode(), "dlq.attempts": b"1",
                                   "dlq.replay.count": b"1"}
    assert {decode(m.value)["event_id"] for m in replayed if m.value} == {event_id(i) for i in (10, 11, 12, 13, 30)}
