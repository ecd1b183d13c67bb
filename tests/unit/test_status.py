"""/status: the runner's snapshot plus live probe state; the periodic summary line; secrets masked."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from fakeclock import FakeClock
from prometheus_client import CollectorRegistry

from consumer.errors import SinkUnavailableError
from consumer.observability.health import HealthServer, HealthState, status_body
from consumer.observability.lag import PartitionLag
from consumer.observability.metrics import BreakerState
from consumer.observability.status import StatusBoard
from consumer.records import Batch, BatchResult, CloseReason, RawRecord, TopicCounts
from consumer.secrets import Redactor

SETTINGS = {"DLQ_MAX_RATIO": 0.2, "DLQ_GUARD_MIN_RECORDS": 1000, "SINK_URL": "postgresql://u:***@h/db"}


def _result(n: int, batch_id: int = 1) -> BatchResult:
    records = [RawRecord("t", 0, i, 1_700_000_000_000, None, b"v") for i in range(n)]
    batch = Batch(batch_id, records, CloseReason.RECORDS, n, 0.0)
    return BatchResult(
        batch,
        batch.next_offsets(),
        {"t": TopicCounts(sunk=n - 2, duplicate=1, dlq=1)},
        dead_letters=1,
        decode_seconds=0.25,
        sink_seconds=0.5,
    )


def _board(clock: FakeClock, summary_s: float = 60.0) -> tuple[HealthState, StatusBoard]:
    health = HealthState(clock, 60)
    return health, StatusBoard(health, "1.2.3", SETTINGS, clock, summary_s)


def test_status_shows_partitions_batch_breaker_error_guard_and_drain_estimate() -> None:
    clock = FakeClock()
    health, board = _board(clock)
    board.assignment([("t", 0), ("t", 1)])
    board.committed({("t", 0): 100}, at=clock.wall())
    clock.advance(10)
    board.counted(_result(100))
    board.batch(_result(100), commit_seconds=0.125, total_seconds=1.5)
    board.partitions(
        [PartitionLag("t", 0, 100, 1100, 1000, 12.5), PartitionLag("t", 1, 7, 7, 0, 0.0)], paused={("t", 0)}
    )
    board.breaker("sink", BreakerState.OPEN, since=clock.wall())
    board.error(SinkUnavailableError("database down"))
    health.joined = health.sink_ok = True
    health.breaker_open = True

    body = status_body(health)
    assert body["version"] == "1.2.3"
    assert body["assignment"] == [
        {
            "topic": "t",
            "partition": 0,
            "committed": 100,
            "high_watermark": 1100,
            "lag_records": 1000,
            "lag_seconds": 12.5,
            "paused": True,
        },
        {
            "topic": "t",
            "partition": 1,
            "committed": 7,
            "high_watermark": 7,
            "lag_records": 0,
            "lag_seconds": 0.0,
            "paused": False,
        },
    ]
    assert body["lag"] == {"records": 1000, "seconds": 12.5}
    assert body["last_batch"] == {
        "id": 1,
        "records": 100,
        "bytes": 100,
        "close_reason": "records",
        "dead_lettered": 1,
        "decode_seconds": 0.25,
        "sink_seconds": 0.5,
        "commit_seconds": 0.125,
        "total_seconds": 1.5,
        "committed_at": "2023-11-14T22:13:30.000Z",
        "committed_age_seconds": 0.0,
    }
    assert body["totals"] == {"records": {"sunk": 98, "duplicate": 1, "dlq": 1, "skipped": 0}, "batches": 1}
    assert body["records_per_second"] == 10.0  # 100 records over the 10 s since start
    assert body["time_to_drain_seconds"] == 100.0  # 1000 records at 10 records/s
    assert body["breaker"] == {"sink": {"state": "open", "since": "2023-11-14T22:13:30.000Z", "for_seconds": 0.0}}
    assert body["last_error"] == {"class": "SinkUnavailableError", "message": "database down"}
    assert body["guard"] == {"max_ratio": 0.2, "min_records": 1000, "tripped": False}
    assert body["ready"] is False and body["not_ready_because"] == "circuit breaker open"
    assert body["live"] is True
    assert body["settings"] == SETTINGS


def test_drain_estimate_is_null_when_lagging_without_progress_and_zero_when_caught_up() -> None:
    clock = FakeClock()
    health, board = _board(clock)
    board.partitions([PartitionLag("t", 0, 0, 50, 50, 3.0)], paused=set())
    assert health.status["time_to_drain_seconds"] is None
    board.partitions([PartitionLag("t", 0, 50, 50, 0, 0.0)], paused=set())
    assert health.status["time_to_drain_seconds"] == 0.0


def test_guard_shows_tripped_as_soon_as_the_runner_says_so() -> None:
    clock = FakeClock()
    health, _ = _board(clock)
    health.joined = health.sink_ok = True
    assert status_body(health)["ready"] is True
    health.guard_tripped = True
    body = status_body(health)
    assert body["guard"]["tripped"] is True
    assert body["not_ready_because"] == "dead-letter guard tripped"


def test_summary_is_logged_once_per_interval_with_rates_lag_and_outcomes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    _, board = _board(clock, summary_s=30.0)
    caplog.set_level(logging.INFO, logger="consumer.observability.status")
    board.counted(_result(300))
    clock.advance(29)
    board.partitions([PartitionLag("t", 0, 0, 40, 40, 2.5)], paused={("t", 0)})
    assert not [r for r in caplog.records if r.getMessage() == "summary"]
    clock.advance(1)
    board.partitions([PartitionLag("t", 0, 0, 40, 40, 2.5)], paused={("t", 0)})
    board.partitions([PartitionLag("t", 0, 0, 40, 40, 2.5)], paused={("t", 0)})
    summaries = [r for r in caplog.records if r.getMessage() == "summary"]
    assert len(summaries) == 1
    fields = vars(summaries[0])
    assert fields["records_per_second"] == 10.0  # 300 records in 30 s
    assert (
        fields["records_sunk"],
        fields["records_duplicate"],
        fields["records_dlq"],
        fields["records_skipped"],
    ) == (298, 1, 1, 0)
    assert (fields["batches"], fields["lag_records"], fields["lag_seconds"], fields["paused_partitions"]) == (
        1,
        40,
        2.5,
        1,
    )


def test_status_endpoint_masks_secrets_found_in_any_text() -> None:
    clock = FakeClock()
    health, board = _board(clock)
    board.error(SinkUnavailableError("connect to postgresql://app:hunter2-secret@db failed"))
    server = HealthServer(0, CollectorRegistry(), health, secrets=["hunter2-secret"])
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    assert "hunter2-secret" not in text
    assert json.loads(text)["last_error"]["message"] == "connect to postgresql://app:***@db failed"


def test_times_are_iso_8601_with_their_ages_as_of_the_read_and_the_dead_letter_topic_is_named() -> None:
    clock = FakeClock(wall=1_700_000_000.0)
    health = HealthState(clock, 60)
    board = StatusBoard(health, "1.2.3", SETTINGS, clock, dead_letter_topic="orders.dlq")
    body = status_body(health)
    assert (body["started_at"], body["uptime_seconds"]) == ("2023-11-14T22:13:20.000Z", 0.0)
    assert (body["last_commit_at"], body["last_commit_age_seconds"]) == (None, None)
    assert body["dead_letter_topic"] == "orders.dlq"
    assert body["broker"] == {"reachable": True}

    clock.advance(90)
    board.committed({("t", 0): 5}, at=clock.wall())
    board.breaker("sink", BreakerState.CLOSED, since=clock.wall())
    clock.advance(12.25)  # nothing published since: the ages still move
    body = status_body(health)
    assert (body["started_at"], body["uptime_seconds"]) == ("2023-11-14T22:13:20.000Z", 102.2)
    assert (body["last_commit_at"], body["last_commit_age_seconds"]) == ("2023-11-14T22:14:50.000Z", 12.2)
    assert body["breaker"]["sink"] == {"state": "closed", "since": "2023-11-14T22:14:50.000Z", "for_seconds": 12.2}
    json.dumps(body)  # every value serialises as it is


def test_the_last_error_is_redacted_before_it_is_cut() -> None:
    health = HealthState(FakeClock(), 60)
    board = StatusBoard(health, "1.2.3", SETTINGS, FakeClock(), redact=Redactor(["hunter2-secret"]))
    board.error(SinkUnavailableError("x" * 490 + " pw=hunter2-secret"))  # a cut at 500 first leaves "hunter"
    assert health.status["last_error"]["message"] == "x" * 490 + " pw=***"
