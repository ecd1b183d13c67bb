"""Rebalance guarantees under both consumer group protocols, on Apache Kafka's own group coordinator.

`classic` is the JoinGroup/SyncGroup protocol with cooperative-sticky assignment; `consumer` is KIP-848's
(the broker assigns, heartbeats carry the assignment; GA in Kafka 4). Under each: a member that joins, leaves
or is killed mid-run hands partitions over with nothing lost or doubled (revoke: the batch in hand is written
and committed first; a killed member's uncommitted batch is replayed and absorbed by the idempotency key),
and a member cut off from the broker past its session loses its partitions and rejoins by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kafka import TopicWriter, committed_offsets, create_topic
from support.runs import (
    assert_one_row_per_key,
    rows_or_zero,
    service_env,
    setup_topic,
    valid_messages,
    wait_committed,
)
from support.service import ServiceProcess
from support.services import TcpProxy, local_kafka
from support.waiting import hold, wait_until

from ops.testbed.net import free_port

StartService = Callable[..., ServiceProcess]

PROTOCOLS = pytest.mark.parametrize("protocol", ["classic", "consumer"])
POSTGRES_ONLY = pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
PARTITIONS = 4
RECORDS = 20_000
JOIN_TIMEOUT_S = 60.0
# The session: classic from BASE_ENV, `consumer` from the test broker's group.consumer.session.timeout.ms.
SESSION_S = 6.0


def _env(bootstrap: str, topic: str, group: str, sink_url: str, sink_table: str, protocol: str) -> dict[str, str]:
    # Small batches: the run lasts long enough for the group to change under it, many commits on the way.
    return service_env(bootstrap, topic, group, sink_url, sink_table,
                       KAFKA_GROUP_PROTOCOL=protocol, BATCH_MAX_RECORDS="200")


def _held(svc: ServiceProcess) -> set[int]:
    """Partitions the service holds, from its /status (fails at once if it died)."""
    if not svc.running:
        pytest.fail(f"service pid {svc.pid} exited with {svc.process.returncode}\n{svc.log_tail()}")
    try:
        code, body = svc.http_get("/status")
    except OSError:  # the HTTP port is not open yet
        return set()
    assert code == 200, body
    status: dict[str, Any] = json.loads(body)
    return {entry["partition"] for entry in status["assignment"]}


def _wait_split(a: ServiceProcess, b: ServiceProcess) -> None:
    """Until both hold partitions and together hold every one, each exactly once."""
    def split(held: tuple[set[int], set[int]]) -> bool:
        return bool(held[0]) and bool(held[1]) and not held[0] & held[1] and held[0] | held[1] == set(
            range(PARTITIONS))

    wait_until(lambda: (_held(a), _held(b)), JOIN_TIMEOUT_S, "both members holding partitions", until=split)


def _two_members_under_way(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService, protocol: str,
) -> tuple[str, TopicWriter, str, ServiceProcess, ServiceProcess]:
    """Two members holding the partitions between them, RECORDS produced and the first rows written."""
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    group = unique("group")
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, protocol)
    a, b = service(env), service(env)
    _wait_split(a, b)
    writer.send(valid_messages(range(RECORDS), keyed=True))
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 60, "the run under way", until=lambda n: n > 0)
    return topic, writer, group, a, b


def _wait_holds_every_partition(svc: ServiceProcess) -> None:
    wait_until(lambda: _held(svc), JOIN_TIMEOUT_S, "the survivor holding every partition",
               until=lambda held: held == set(range(PARTITIONS)))


def _rebalances(svc: ServiceProcess, kind: str) -> float:
    return svc.metric("consumer_rebalances_total", kind=kind)


@PROTOCOLS
@POSTGRES_ONLY
def test_a_member_joining_mid_run_takes_partitions_and_nothing_is_lost_or_doubled(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService, protocol: str,
) -> None:
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    group = unique("group")
    env = _env(kafka_bootstrap, topic, group, sink_url, sink_table, protocol)
    writer.send(valid_messages(range(RECORDS), keyed=True))
    a = service(env)
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 60, "the run under way", until=lambda n: n > 0)

    b = service(env)
    _wait_split(a, b)
    assert _rebalances(a, "revoke") >= 1  # a gave partitions up (after committing what it had in hand)

    wait_committed(kafka_bootstrap, group, writer, [a, b])
    assert_one_row_per_key(sink_url, sink_table, RECORDS)
    assert a.terminate() == 0 and b.terminate() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == writer.end_offsets


@PROTOCOLS
@POSTGRES_ONLY
def test_a_member_leaving_mid_run_commits_its_batch_and_hands_its_partitions_over(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService, protocol: str,
) -> None:
    _topic, writer, group, a, b = _two_members_under_way(kafka_bootstrap, make_topic, unique, sink_url, sink_table,
                                                        service, protocol)

    assert a.terminate() == 0
    _wait_holds_every_partition(b)
    wait_committed(kafka_bootstrap, group, writer, [b])
    assert_one_row_per_key(sink_url, sink_table, RECORDS)
    assert b.metric_sum("consumer_records_total", outcome="duplicate") == 0, "a handed-over batch was written twice"
    assert b.terminate() == 0


@PROTOCOLS
@POSTGRES_ONLY
def test_a_killed_members_partitions_move_to_the_survivor_and_its_replayed_batch_is_absorbed(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService, protocol: str,
) -> None:
    topic, writer, group, a, b = _two_members_under_way(kafka_bootstrap, make_topic, unique, sink_url, sink_table,
                                                        service, protocol)

    a.kill()  # no LeaveGroup: the coordinator notices only when the session runs out
    _wait_holds_every_partition(b)
    wait_committed(kafka_bootstrap, group, writer, [b])
    assert_one_row_per_key(sink_url, sink_table, RECORDS)
    assert b.terminate() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == writer.end_offsets


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    """A dedicated Apache Kafka that advertises a TcpProxy in front of it: every client connection goes through it."""
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy, local_kafka(tmp_path / "kafka", port, proxy.port) as broker:
        yield broker.bootstrap, proxy



@PROTOCOLS
@POSTGRES_ONLY
@pytest.mark.timeout(300)
def test_a_member_cut_off_past_its_session_loses_its_partitions_and_rejoins_with_exact_counts(
    proxied_broker: tuple[str, TcpProxy], unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService, protocol: str,
) -> None:
    bootstrap, proxy = proxied_broker
    topic = create_topic(bootstrap, unique("topic"), PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(bootstrap, topic)
    group = unique("group")
    svc = service(_env(bootstrap, topic, group, sink_url, sink_table, protocol))
    writer.send(valid_messages(range(RECORDS), keyed=True))
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 60, "the run under way", until=lambda n: n > 0)

    proxy.cut("blackhole")  # bytes stop, sockets stay open: heartbeats go unanswered
    hold(SESSION_S * 2.5, lambda: _held(svc), "the cut to outlast the session")  # _held fails if it died
    proxy.restore()

    # The member learns it was expelled when it next reaches the coordinator: its assignment is lost
    # (the batch in hand dropped, uncommitted) and it rejoins; the next owner replays from the last commit.
    wait_until(lambda: _rebalances(svc, "lost"), 120, "the assignment reported lost", until=lambda lost: lost >= 1)
    wait_committed(bootstrap, group, writer, [svc], timeout_s=180)
    assert_one_row_per_key(sink_url, sink_table, RECORDS)
    assert svc.terminate() == 0
    assert committed_offsets(bootstrap, group, topic, PARTITIONS) == writer.end_offsets
