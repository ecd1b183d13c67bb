"""Fault tests: the database goes away or stalls, the broker connection drops, rows break constraints, the
process is killed again and again. Through each the counts stay exact: rows == distinct valid idempotency
keys produced, dead letters == bad records produced (by their original coordinates), committed offsets ==
end offsets.

Every test runs on PostgreSQL through a real service process. Faults are made by a TcpProxy (cut or
blackhole a path), by a lock the test holds on the sink table, or by SIGKILL. A fault is held for a set
duration (that duration is the test's input, not a guess at when something happens); whatever the test
expects to observe meanwhile it waits for with wait_until.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.db import connect, count_rows, fetch, make_engine, via_proxy
from support.events import encode, make_event
from support.kafka import Msg, ReadMsg, TopicWriter, committed_offsets, create_topic, read_all
from support.runs import (
    assert_one_row_per_key,
    rows_or_zero,
    service_env,
    setup_topic,
    wait_committed,
    wait_metric,
)
from support.service import ServiceProcess
from support.services import CutMode, TcpProxy, local_kafka
from support.waiting import hold, wait_until

from ops.testbed.net import free_port

StartService = Callable[..., ServiceProcess]
Coordinates = tuple[int, int]  # (partition, offset) in the test's topic

POSTGRES_ONLY = pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
PARTITIONS = 3
OUTAGE_S = 20.0  # how long the database or the broker stays unreachable
MAX_POLL_INTERVAL_MS = 6000  # the smallest the service accepts with BASE_ENV's 6 s session timeout
PARTITION_S = 10.0  # how long the database path is blackholed (bytes stop, connections stay open)
# One batch held in the database for 10x KAFKA_MAX_POLL_INTERVAL_MS, as the issue asks (any multiple > 1
# breaks a sink on the polling thread; a shorter session than 6 s would leave one heartbeat per session
# at librdkafka's 3 s heartbeat.interval.ms, too tight on two shared cores).
STALL_S = 10 * MAX_POLL_INTERVAL_MS / 1000
# Fast retries and a short open breaker keep an outage test about as long as its outage.
QUICK_RETRIES = {
    "BREAKER_FAILURE_THRESHOLD": "3",
    "BREAKER_RESET_TIMEOUT_MS": "2000",
    "RETRY_BACKOFF_INITIAL_MS": "100",
    "RETRY_BACKOFF_MAX_MS": "1000",
}
REBALANCE_KINDS = ("assign", "revoke", "lost")


# --- traffic with known coordinates -------------------------------------------------------------------


class Traffic:
    """Valid events and poison placed round-robin on explicit partitions, so each record's offset is known.

    Record j of the run goes to partition j % PARTITIONS at offset j // PARTITIONS (within this writer's
    topic, which starts empty); `send` checks the broker's end offsets agree, so the coordinates a dead
    letter names can be compared with the poison's exactly.
    """

    def __init__(self, writer: TopicWriter) -> None:
        self.writer = writer
        self.valid_ids: set[int] = set()
        self.bad: dict[Coordinates, str] = {}  # coordinates -> why the record is bad
        self._count = 0

    def send(self, items: Sequence[tuple[bytes, str | None]], event_ids: Sequence[int | None]) -> None:
        """Produce `items` (value, reason it is bad or None); `event_ids` names each valid one's event."""
        messages = []
        for (value, bad_reason), event in zip(items, event_ids, strict=True):
            partition, offset = self._count % PARTITIONS, self._count // PARTITIONS
            self._count += 1
            messages.append(Msg(value=value, partition=partition))
            if bad_reason is not None:
                self.bad[(partition, offset)] = bad_reason
            else:
                assert event is not None
                self.valid_ids.add(event)
        self.writer.send(messages)
        expected = {p: len(range(p, self._count, PARTITIONS)) for p in range(PARTITIONS)}
        assert self.writer.end_offsets == expected, "offsets are not contiguous: coordinates would be wrong"

    def send_mixed(self, events: range, poison: int, rng: random.Random) -> None:
        """`events` valid, plus `poison` undecodable records (an event with a trailing byte) at random places."""
        items: list[tuple[bytes, str | None]] = [(encode(make_event(i)), None) for i in events]
        ids: list[int | None] = list(events)
        for n in range(poison):
            at = rng.randrange(len(items) + 1)
            items.insert(at, (encode(make_event(10_000_000 + n)) + b"!", "decode"))
            ids.insert(at, None)
        self.send(items, ids)


def _dead_letters(bootstrap: str, topic: str, expected: int) -> list[ReadMsg]:
    """Every record of `<topic>.dlq` (read_all waits for `expected`, then drains to catch extras)."""
    return read_all(bootstrap, f"{topic}.dlq", expected=expected, timeout_s=60)


def _coordinates(letter: ReadMsg) -> Coordinates:
    return int(letter.headers["dlq.original.partition"]), int(letter.headers["dlq.original.offset"])


def _assert_dead_letters_exact(bootstrap: str, topic: str, traffic: Traffic, stage: str = "decode") -> None:
    """The dead-letter topic holds each bad record once, nothing else, with the expected stage."""
    letters = _dead_letters(bootstrap, topic, len(traffic.bad))
    assert sorted(_coordinates(m) for m in letters) == sorted(traffic.bad)
    assert {m.headers["dlq.stage"] for m in letters} <= {stage.encode()}
    assert {m.headers["dlq.original.topic"] for m in letters} <= {topic.encode()}


def _rebalances(svc: ServiceProcess) -> dict[str, float]:
    return {kind: svc.metric("consumer_rebalances_total", kind=kind) for kind in REBALANCE_KINDS}


def _wait_lag_seconds_at_least(svc: ServiceProcess, seconds: float) -> None:
    """consumer_lag_seconds (max over partitions) reaches `seconds`: records held that long show their age.

    A lower bound by construction (the records were produced before the fault was held this long), not a
    timing assertion; the gauge refreshes about once a second while the loop idles.
    """

    def oldest() -> float:
        samples = [v for (name, _), v in svc.metrics().items() if name == "consumer_lag_seconds"]
        return max(samples, default=0.0)

    wait_until(oldest, 30, f"consumer_lag_seconds >= {seconds}", until=lambda age: age >= seconds)


# --- 1. database unreachable --------------------------------------------------------------------------


@POSTGRES_ONLY
def test_database_outage_opens_the_breaker_pauses_and_loses_nothing(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    rng = random.Random(1)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(
        kafka_bootstrap,
        topic,
        group,
        via_proxy(sink_url, postgres_proxy.port),
        sink_table,
        BATCH_MAX_RECORDS="500",
        KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
        **QUICK_RETRIES,
    )
    traffic.send_mixed(range(3000), poison=3, rng=rng)
    svc = service(env)
    wait_committed(kafka_bootstrap, group, writer, [svc])
    joined = _rebalances(svc)
    before_outage = writer.end_offsets

    postgres_proxy.cut("reset")
    cut_at = time.monotonic()
    traffic.send_mixed(range(3000, 6000), poison=3, rng=rng)

    wait_until(
        lambda: svc.metric("consumer_circuit_breaker_state", dependency="sink"),
        30,
        "breaker open (2)",
        until=lambda state: state == 2,
    )
    wait_until(
        lambda: svc.metric("consumer_paused_partitions"), 30, "partitions paused", until=lambda n: n > 0
    )
    wait_until(
        lambda: svc.http_get("/readyz")[0], 30, "/readyz 503 while open", until=lambda code: code == 503
    )

    def nothing_moves() -> None:
        assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == before_outage
        assert svc.metric_sum("consumer_records_total", outcome="dlq") == 3
        assert _rebalances(svc) == joined
        assert svc.http_get("/healthz")[0] == 200

    hold(OUTAGE_S - (time.monotonic() - cut_at), nothing_moves, "the database outage to last its time")
    retries = svc.metric_sum("consumer_sink_retries_total", error_class="SinkUnavailableError")
    postgres_proxy.restore()

    wait_committed(kafka_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", len(traffic.valid_ids))
    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == len(traffic.bad)
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 0
    _assert_dead_letters_exact(kafka_bootstrap, topic, traffic)
    assert _rebalances(svc) == joined, "the outage cost the group membership"
    assert retries > 0
    wait_until(
        lambda: svc.metric("consumer_circuit_breaker_state", dependency="sink"),
        30,
        "breaker closed again",
        until=lambda state: state == 0,
    )
    wait_until(
        lambda: svc.metric("consumer_paused_partitions"), 30, "partitions resumed", until=lambda n: n == 0
    )
    assert svc.http_get("/readyz")[0] == 200
    print(f"database outage: {retries:.0f} retries, rebalances {joined}")
    assert svc.terminate() == 0


@POSTGRES_ONLY
def test_database_partition_holds_the_batch_in_flight_and_loses_nothing(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    postgres_proxy: TcpProxy,
    service: StartService,
) -> None:
    """A blackhole (bytes stop, sockets stay open) rather than refused connections: the write in flight
    waits on its socket, so no failure reaches the breaker; the batch is kept, the loop keeps polling."""
    rng = random.Random(11)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(
        kafka_bootstrap,
        topic,
        group,
        via_proxy(sink_url, postgres_proxy.port),
        sink_table,
        BATCH_MAX_RECORDS="500",
        KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
        **QUICK_RETRIES,
    )
    traffic.send_mixed(range(1000), poison=2, rng=rng)
    svc = service(env)
    wait_committed(kafka_bootstrap, group, writer, [svc])
    joined = _rebalances(svc)
    before_outage = writer.end_offsets

    postgres_proxy.cut("blackhole")
    traffic.send_mixed(range(1000, 3000), poison=2, rng=rng)
    wait_until(
        lambda: svc.metric("consumer_paused_partitions"), 30, "partitions paused", until=lambda n: n > 0
    )
    seen: set[tuple[float, int]] = set()  # (breaker state, /readyz status) observed during the partition

    def nothing_moves() -> None:
        assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == before_outage
        assert svc.metric_sum("consumer_records_total", outcome="dlq") == 2
        assert _rebalances(svc) == joined
        assert svc.http_get("/healthz")[0] == 200
        seen.add(
            (svc.metric("consumer_circuit_breaker_state", dependency="sink"), svc.http_get("/readyz")[0])
        )

    hold(PARTITION_S, nothing_moves, "the database partition to last its time")
    _wait_lag_seconds_at_least(svc, PARTITION_S / 2)  # what an operator sees: the oldest record ages
    postgres_proxy.restore()

    wait_committed(kafka_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", len(traffic.valid_ids))
    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 0
    _assert_dead_letters_exact(kafka_bootstrap, topic, traffic)
    assert _rebalances(svc) == joined, "the partition cost the group membership"
    print(f"database partition: (breaker state, /readyz) seen while blackholed: {sorted(seen)}")
    assert svc.terminate() == 0


# --- 2. one batch stalls in the database ----------------------------------------------------------------


@POSTGRES_ONLY
@pytest.mark.timeout(300)
def test_batch_stalled_past_max_poll_interval_keeps_membership_and_writes_once(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    rng = random.Random(2)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(
        kafka_bootstrap,
        topic,
        group,
        sink_url,
        sink_table,
        BATCH_MAX_RECORDS="500",
        KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
    )
    traffic.send_mixed(range(1000), poison=2, rng=rng)
    svc = service(env)
    wait_committed(kafka_bootstrap, group, writer, [svc])
    joined = _rebalances(svc)
    before_stall = writer.end_offsets

    blocker = make_engine(sink_url)
    try:
        with blocker.connect() as lock_holder:
            lock_holder.execute(sa.text(f"LOCK TABLE {sink_table} IN ACCESS EXCLUSIVE MODE"))
            traffic.send_mixed(range(1000, 3000), poison=2, rng=rng)
            wait_until(
                lambda: _waiting_on_lock(sink_url, sink_table),
                30,
                "a sink write blocked on the lock",
                until=lambda n: n > 0,
            )
            wait_until(
                lambda: svc.metric("consumer_paused_partitions"),
                30,
                "partitions paused",
                until=lambda n: n > 0,
            )

            def stalled_but_member() -> None:
                assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == before_stall
                assert _rebalances(svc) == joined
                assert _waiting_on_lock(sink_url, sink_table) > 0
                assert svc.http_get("/healthz")[0] == 200

            hold(STALL_S, stalled_but_member, "the stalled batch to stay stalled")
            _wait_lag_seconds_at_least(svc, STALL_S / 2)
            lock_holder.rollback()
    finally:
        blocker.dispose()

    wait_committed(kafka_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", len(traffic.valid_ids))
    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    assert svc.metric_sum("consumer_records_total", outcome="duplicate") == 0, "a batch was written twice"
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == len(traffic.bad)
    _assert_dead_letters_exact(kafka_bootstrap, topic, traffic)
    assert _rebalances(svc) == joined, "the stall cost the group membership"
    assert svc.terminate() == 0


def _waiting_on_lock(url: str, table: str) -> int:
    """Backends (the service's) whose statement on `table` waits for a lock."""
    return int(
        fetch(
            url,
            "SELECT COUNT(*) AS c FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND query LIKE :pattern",
            {"pattern": f"%{table}%"},
        )[0].c
    )


# --- 3. broker connection cut ---------------------------------------------------------------------------


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    """A dedicated Apache Kafka that advertises a TcpProxy in front of it: every client connection goes through it."""
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy, local_kafka(tmp_path, port, proxy.port) as broker:
        yield broker.bootstrap, proxy


@POSTGRES_ONLY
@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("mode", "outage_s"),
    # reset: connections closed and refused, for the 20 s. blackhole: bytes stop, sockets stay
    # open, so requests in flight hang (the synchronous commit holds the poll loop); 10 s is enough to
    # outlive the 6 s session.
    [("reset", OUTAGE_S), ("blackhole", PARTITION_S)],
)
def test_broker_connection_cut_recovers_by_itself_with_exact_counts(
    proxied_broker: tuple[str, TcpProxy],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
    mode: CutMode,
    outage_s: float,
) -> None:
    bootstrap, proxy = proxied_broker
    rng = random.Random(3)
    topic = create_topic(bootstrap, unique("topic"), PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(bootstrap, topic)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(bootstrap, topic, group, sink_url, sink_table, BATCH_MAX_RECORDS="500", **QUICK_RETRIES)

    # Poison only where its batch is committed before the cut or produced after it: a batch whose commit
    # the cut swallows is replayed, and its dead letters with it (at-least-once, see the SIGKILL test).
    traffic.send_mixed(range(2000), poison=3, rng=rng)
    svc = service(env)
    wait_committed(bootstrap, group, writer, [svc])
    joined = _rebalances(svc)

    traffic.send_mixed(range(2000, 22_000), poison=0, rng=rng)
    rows_at_cut = wait_until(
        lambda: rows_or_zero(sink_url, sink_table), 120, "the run under way", until=lambda n: n >= 6000
    )
    proxy.cut(mode)

    def alive() -> None:
        assert svc.running, svc.log_tail()

    hold(outage_s, alive, "the broker outage to last its time")
    rows_at_restore = rows_or_zero(sink_url, sink_table)
    proxy.restore()

    wait_committed(bootstrap, group, writer, [svc], timeout_s=240)
    traffic.send_mixed(range(22_000, 23_000), poison=3, rng=rng)
    wait_committed(bootstrap, group, writer, [svc])

    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    _assert_dead_letters_exact(bootstrap, topic, traffic)
    after = _rebalances(svc)
    print(
        f"broker cut ({mode}): rows {rows_at_cut} at the cut, {rows_at_restore} at restore; rebalances {joined} -> "
        f"{after}; duplicates {svc.metric_sum('consumer_records_total', outcome='duplicate'):.0f}"
    )
    assert svc.running, "the service did not recover in the same process"
    assert svc.terminate() == 0
    assert committed_offsets(bootstrap, group, topic, PARTITIONS) == writer.end_offsets


LIVENESS_WINDOW_S = 5  # shorter than the cut: a loop held in a commit for the cut would fail /healthz
STOP_TIMEOUT_MS = 5000


@POSTGRES_ONLY
@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_during_a_broker_cut_the_loop_stays_live_and_a_sigterm_stops_it_within_the_shutdown_timeout(
    proxied_broker: tuple[str, TcpProxy],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
    mode: CutMode,
) -> None:
    """The commit never holds the poll loop: through a cut under load `/healthz` stays 200 past the
    liveness window (refused: `/readyz` 503 `broker unreachable`; blackholed, librdkafka notices only after
    socket.timeout.ms), and SIGTERM during the cut exits within the shutdown timeout plus the close grace,
    which the harness's wait bounds. A restart after the cut writes every record once and commits to the end."""
    bootstrap, proxy = proxied_broker
    rng = random.Random(5)
    topic = create_topic(bootstrap, unique("topic"), PARTITIONS)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(bootstrap, topic)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(
        bootstrap, topic, group, sink_url, sink_table, BATCH_MAX_RECORDS="500",
        LIVENESS_WINDOW_S=str(LIVENESS_WINDOW_S), SHUTDOWN_TIMEOUT_MS=str(STOP_TIMEOUT_MS), **QUICK_RETRIES,
    )
    traffic.send_mixed(range(2000), poison=0, rng=rng)
    svc = service(env)
    wait_committed(bootstrap, group, writer, [svc])

    traffic.send_mixed(range(2000, 22_000), poison=0, rng=rng)
    wait_until(lambda: rows_or_zero(sink_url, sink_table), 120, "the run under way", until=lambda n: n >= 6000)
    proxy.cut(mode)

    def live() -> None:
        assert svc.running, svc.log_tail()
        assert svc.http_get("/healthz")[0] == 200, svc.log_tail()

    if mode == "reset":
        wait_until(lambda: (live(), svc.http_get("/readyz"))[1], 60, "/readyz: broker unreachable",
                   until=lambda answer: answer[0] == 503 and "broker unreachable" in answer[1])
    hold(3 * LIVENESS_WINDOW_S, live, "the cut to outlast the liveness window")

    # Exit 0: the cut outlasted the 6 s session, so librdkafka declared the partitions lost and nothing
    # of ours is left to commit (a stop with offsets still pending exits 1 at the deadline, see the unit
    # tests). A stop that hangs fails in terminate()'s wait, well inside the test's timeout.
    assert svc.terminate(timeout_s=STOP_TIMEOUT_MS / 1000 + 15) == 0, svc.log_tail()
    assert "Traceback" not in svc.log_text()

    proxy.restore()
    restarted = service(env)
    wait_committed(bootstrap, group, writer, [restarted], timeout_s=240)
    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    assert committed_offsets(bootstrap, group, topic, PARTITIONS) == writer.end_offsets
    assert restarted.terminate() == 0


# --- 4. rows the table rejects --------------------------------------------------------------------------


@POSTGRES_ONLY
def test_rows_violating_table_constraints_are_isolated_and_dead_lettered_with_stage_sink(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n, per_kind = 50_000, 20
    rng = random.Random(4)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    traffic = Traffic(writer)
    group = unique("group")
    # The service adds the columns it misses and keeps what it finds: a CHECK and a short varchar.
    with connect(sink_url) as conn:
        conn.execute(
            sa.text(f"""CREATE TABLE {sink_table} (
            user_id bigint NOT NULL CONSTRAINT positive_user CHECK (user_id > 0),
            page_url varchar(40) NOT NULL,
            _kafka_topic text NOT NULL, _kafka_partition integer NOT NULL, _kafka_offset bigint NOT NULL,
            _kafka_timestamp timestamptz, _idempotency_key text PRIMARY KEY)""")
        )
    bad = rng.sample(range(n), 2 * per_kind)
    negative, too_long = set(bad[:per_kind]), set(bad[per_kind:])
    items: list[tuple[bytes, str | None]] = []
    ids: list[int | None] = []
    for i in range(n):
        if i in negative:
            items.append((encode(make_event(i, user_id=-i)), "23514"))  # check_violation
        elif i in too_long:
            items.append((encode(make_event(i, page_url="https://example.com/" + "x" * 40)), "22001"))
        else:
            items.append((encode(make_event(i)), None))
        ids.append(None if i in negative or i in too_long else i)
    traffic.send(items, ids)

    svc = service(service_env(kafka_bootstrap, topic, group, sink_url, sink_table))
    wait_committed(kafka_bootstrap, group, writer, [svc], timeout_s=180)

    assert_one_row_per_key(sink_url, sink_table, n - 2 * per_kind)
    wait_metric(svc, "sunk", n - 2 * per_kind)
    assert svc.metric_sum("consumer_records_total", outcome="dlq") == 2 * per_kind
    letters = _dead_letters(kafka_bootstrap, topic, 2 * per_kind)
    assert sorted(_coordinates(m) for m in letters) == sorted(traffic.bad)
    for letter in letters:
        assert letter.headers["dlq.stage"] == b"sink", letter
        assert letter.headers["dlq.error.class"] == b"RecordRejectedError", letter
        sqlstate = traffic.bad[_coordinates(letter)]
        assert f"SQLSTATE {sqlstate}".encode() in letter.headers["dlq.error.message"], letter
    rejected_ids = fetch(
        sink_url,
        f"SELECT COUNT(*) AS c FROM {sink_table} WHERE user_id <= 0 OR length(page_url) > 40",
    )[0].c
    assert rejected_ids == 0
    columns = {
        r.column_name
        for r in fetch(
            sink_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t",
            {"t": sink_table},
        )
    }
    assert {"event_id", "occurred_at", "attributes"} <= columns  # added by the service
    assert svc.terminate() == 0


# --- 5. SIGKILL, again and again ------------------------------------------------------------------------


@POSTGRES_ONLY
@pytest.mark.timeout(600)
def test_ten_sigkills_with_restarts_write_every_valid_record_once_and_dead_letter_every_bad_one(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    n, poison, kills = 100_000, 50, 10
    rng = random.Random(5)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, PARTITIONS)
    traffic = Traffic(writer)
    group = unique("group")
    env = service_env(
        kafka_bootstrap,
        topic,
        group,
        sink_url,
        sink_table,
        BATCH_MAX_RECORDS="1000",
        KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
    )
    traffic.send_mixed(range(n), poison=poison, rng=rng)
    # Kill when the row count passes each threshold (or, if a restart starts past it, at its first write).
    thresholds = sorted(rng.sample(range(2000, n - 5000), kills))
    killed_at: list[tuple[int, float]] = []  # (rows, seconds since that start), for the report
    for threshold in thresholds:
        started = time.monotonic()
        svc = service(env)
        start_rows = rows_or_zero(sink_url, sink_table)
        _wait_rows_at_least(svc, sink_url, sink_table, min(max(threshold, start_rows + 1), n))
        assert svc.kill() == -9
        killed_at.append((rows_or_zero(sink_url, sink_table), round(time.monotonic() - started, 1)))

    last = service(env)
    wait_committed(kafka_bootstrap, group, writer, [last], timeout_s=180)
    assert_one_row_per_key(sink_url, sink_table, len(traffic.valid_ids))
    assert count_rows(sink_url, sink_table) == n

    letters = _dead_letters(kafka_bootstrap, topic, poison)
    seen = Counter(_coordinates(m) for m in letters)
    assert set(seen) == set(traffic.bad), (
        "a bad record is missing from the dead-letter topic, or a good one is in it"
    )
    assert {m.headers["dlq.stage"] for m in letters} == {b"decode"}
    duplicates = len(letters) - len(seen)
    print(
        f"ten sigkills: (rows, s after start) at each kill {killed_at}; {duplicates} duplicate dead letters"
    )
    assert last.terminate() == 0


def _wait_rows_at_least(svc: ServiceProcess, url: str, table: str, target: int) -> None:
    """Wait (polling fast, so the kill lands close to the moment) until `table` holds `target` rows."""

    def progress() -> int:
        if not svc.running:
            pytest.fail(f"service exited with {svc.process.returncode}\n{svc.log_tail()}")
        return rows_or_zero(url, table)

    wait_until(progress, 120, f"{target} rows", interval_s=0.05, until=lambda rows: rows >= target)
