"""The runner's pipelining rules, on fakes: the sink runs off the polling thread with at most one batch
in flight and a bounded queue behind it; offsets are committed strictly in batch order and only for
batches that went through; a failure of batch n keeps batch n+1 from committing; the breaker and the
dead-letter guard hold partitions paused while the loop keeps polling.

The first tests run the runner in a thread with the real clock and wait on what the fakes observed, never on
time. The turn-by-turn tests after them step it by hand on a FakeClock with a StepExecutor, to stage exact
interleavings: a rebalance callback mid-batch, a stop while a write is in flight or the guard holds, a
revoke during a retry backoff.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import pytest
from fakeclock import FakeClock
from fakes import FakePipeline, FakeSource, StepExecutor
from prometheus_client import CollectorRegistry
from support.waiting import wait_until

from consumer.clock import SystemClock
from consumer.errors import BrokerUnavailableError, FatalError, GuardTrippedError, SinkUnavailableError
from consumer.observability.health import HealthState
from consumer.observability.metrics import Dependency, Metrics
from consumer.observability.runner_events import RunnerEvents
from consumer.observability.status import StatusBoard
from consumer.service.batcher import Batcher
from consumer.service.breaker import CircuitBreaker
from consumer.service.executor import SinkThread
from consumer.service.offsets import OffsetTracker
from consumer.service.ratelimit import TokenBucket
from consumer.service.retry import Backoff
from consumer.service.runner import _CLOSE_GRACE_S, _COMMIT_ANSWER_S, Phase, Runner

TOPIC = "t"
PARTITIONS = [(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]
BATCH = 50
WAIT_S = 10.0


@dataclass
class Running:
    runner: Runner
    source: FakeSource
    pipeline: FakePipeline
    registry: CollectorRegistry
    health: HealthState
    stop: threading.Event
    exit_code: Future[int]

    def stopped(self) -> int:
        self.stop.set()
        return self.exit_code.result(timeout=WAIT_S)


StartRunner = Callable[..., Running]


@pytest.fixture
def start() -> Iterator[StartRunner]:
    started: list[Running] = []

    def run(breaker_threshold: int = 100, max_wait_s: float = 60.0, rate_limit: TokenBucket | None = None) -> Running:
        clock = SystemClock()
        source, pipeline = FakeSource(PARTITIONS), FakePipeline()
        registry = CollectorRegistry()
        metrics = Metrics(registry, [TOPIC])
        health = HealthState(clock, 60)
        stop = threading.Event()
        runner = Runner(
            source=source,
            batcher=Batcher(BATCH, 10**9, max_wait_s, clock),
            pipeline=pipeline,
            offsets=OffsetTracker(),
            breakers={d: CircuitBreaker(breaker_threshold, 0.05, clock) for d in Dependency},
            backoff=Backoff(0.001, 0.01),
            executor=SinkThread(),
            observer=RunnerEvents(metrics, health, StatusBoard(health, "test", {}), clock),
            clock=clock,
            shutdown_timeout_s=WAIT_S,
            stop=stop,
            rate_limit=rate_limit,
        )
        exit_code: Future[int] = Future()

        def loop() -> None:
            try:
                exit_code.set_result(runner.run())
            except BaseException as exc:  # noqa: BLE001 - handed to the test through the future
                exit_code.set_exception(exc)

        threading.Thread(target=loop, name="runner-under-test", daemon=True).start()
        running = Running(runner, source, pipeline, registry, health, stop, exit_code)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop.set()
        for gate in running.pipeline.gates.values():
            gate.set()


def _feed_all(source: FakeSource, per_partition: int) -> None:
    for partition in PARTITIONS:
        source.feed(partition, per_partition)


def _all_committed(source: FakeSource, per_partition: int) -> bool:
    return source.last_committed() == dict.fromkeys(PARTITIONS, per_partition)


def test_a_slow_batch_holds_the_queue_at_one_waiting_batch_and_commits_go_out_in_order(start: StartRunner) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    slow = pipeline.gate(1)
    _feed_all(source, 100)
    wait_until(lambda: source.paused, WAIT_S, "every partition paused behind the slow batch",
               until=lambda paused: paused == set(PARTITIONS))
    polls = source.polls
    wait_until(lambda: source.polls, WAIT_S, "polling to go on while paused", until=lambda n: n > polls + 5)
    # in flight (50) + one closed batch waiting (50) + the open batch (under 50): the backlog stays outside
    assert source.handed_out < 3 * BATCH
    assert source.commits == []
    slow.set()
    wait_until(lambda: _all_committed(source, 100), WAIT_S, "all 300 offsets committed")
    ids = [b.batch_id for b in pipeline.processed]
    assert ids == sorted(ids)
    for partition in PARTITIONS:  # each commit of a partition is past the one before it
        series = [c[partition] for c in source.commits if partition in c]
        assert series == sorted(set(series))
    assert running.stopped() == 0


def test_a_batch_queued_briefly_behind_a_quick_write_waits_without_pausing(start: StartRunner) -> None:
    """Pausing would make librdkafka drop its prefetched records; a short wait is spent waiting instead."""
    running = start()
    source, pipeline = running.source, running.pipeline
    quick = pipeline.gate(1)
    _feed_all(source, 100)
    wait_until(lambda: source.handed_out, WAIT_S, "batch 2 closed behind batch 1", until=lambda n: n >= 2 * BATCH)
    polls = source.polls
    quick.set()  # well within _UNPAUSED_WAIT_S of batch 1's start
    wait_until(lambda: _all_committed(source, 100), WAIT_S, "all 300 offsets committed")
    assert source.pause_calls == 0
    assert source.polls > polls
    assert running.stopped() == 0


def test_the_next_batch_is_decoded_while_the_one_before_is_written_and_its_write_uses_that(
    start: StartRunner,
) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    first = pipeline.gate(1)
    _feed_all(source, 100)
    wait_until(lambda: pipeline.decoded_ahead, WAIT_S, "batch 2 decoded ahead", until=lambda ids: 2 in ids)
    assert pipeline.attempts == [1]  # batch 1 is still being written
    first.set()
    wait_until(lambda: _all_committed(source, 100), WAIT_S, "all 300 offsets committed")
    assert 2 in pipeline.given_decoded
    assert running.stopped() == 0


def test_polls_stay_short_while_a_batch_is_in_the_sink_so_its_commit_is_not_held_back(start: StartRunner) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    slow = pipeline.gate(1)
    source.feed((TOPIC, 0), BATCH + 10)  # one batch in flight, an open batch that will not fill
    wait_until(lambda: pipeline.attempts, WAIT_S, "batch 1 in the sink", until=lambda ids: ids == [1])
    polls = source.polls
    wait_until(lambda: source.polls, WAIT_S, "polls while it is there", until=lambda n: n > polls + 5)
    assert max(source.timeouts[polls:]) <= 0.02
    slow.set()
    wait_until(lambda: source.commits, WAIT_S, "batch 1 committed")
    assert running.stopped() == 0


def test_a_transient_failure_retries_the_same_batch_before_any_later_one(start: StartRunner) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    pipeline.failures[1] = [SinkUnavailableError("db away"), SinkUnavailableError("db still away")]
    _feed_all(source, 100)
    wait_until(lambda: _all_committed(source, 100), WAIT_S, "all 300 offsets committed")
    assert pipeline.attempts[:3] == [1, 1, 1]
    assert [b.batch_id for b in pipeline.processed] == sorted(set(pipeline.attempts))
    first = pipeline.processed[0]
    assert source.commits[0] == first.next_offsets()  # nothing committed before batch 1 went through
    assert running.registry.get_sample_value("consumer_batches_total", {"outcome": "retried"}) == 2
    assert running.stopped() == 0


def test_a_permanent_failure_in_batch_n_keeps_batch_n_plus_1_from_committing(start: StartRunner) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    second = pipeline.gate(2)
    pipeline.failures[2] = [FatalError("permission denied for table events")]
    _feed_all(source, 100)
    wait_until(lambda: source.paused, WAIT_S, "batch 3 waiting behind batch 2",
               until=lambda paused: paused == set(PARTITIONS))
    second.set()
    with pytest.raises(FatalError):
        running.exit_code.result(timeout=WAIT_S)
    committed_batches = [b.batch_id for b in pipeline.processed]
    assert committed_batches == [1]
    assert source.commits == [pipeline.processed[0].next_offsets()]
    assert running.registry.get_sample_value("consumer_batches_total", {"outcome": "failed"}) == 1
    assert running.registry.get_sample_value("consumer_batches_total", {"outcome": "committed"}) == 1


def test_an_open_breaker_keeps_partitions_paused_and_polling_until_the_sink_answers(start: StartRunner) -> None:
    running = start(breaker_threshold=2)
    source, pipeline = running.source, running.pipeline
    pipeline.failures[1] = [SinkUnavailableError("connection refused")] * 6
    _feed_all(source, 100)
    wait_until(lambda: running.health.breaker_open, WAIT_S, "the breaker to open")
    assert source.paused == set(PARTITIONS)
    polls = source.polls
    wait_until(lambda: source.polls, WAIT_S, "polling to go on", until=lambda n: n > polls + 5)
    assert source.commits == []
    wait_until(lambda: _all_committed(source, 100), WAIT_S, "all 300 offsets committed after recovery")
    assert not running.health.breaker_open and source.paused == set()
    assert running.stopped() == 0


def test_partitions_stay_paused_through_every_retry_and_probe_until_the_batch_goes_through(
    start: StartRunner,
) -> None:
    """With one batch in hand the probe in flight leaves nothing queued; resuming then would only make
    librdkafka fetch records that the next failure's pause throws away."""
    running = start(breaker_threshold=2)
    source, pipeline = running.source, running.pipeline
    pipeline.failures[1] = [SinkUnavailableError("connection refused")] * 5
    source.feed((TOPIC, 0), BATCH)  # exactly one batch
    wait_until(lambda: source.last_committed(), WAIT_S, "the batch committed after the outage",
               until=lambda committed: committed == {(TOPIC, 0): BATCH})
    assert pipeline.attempts == [1] * 6
    assert source.pause_calls == 1 and source.resume_calls == 1
    assert running.stopped() == 0


def test_the_rate_limit_holds_the_next_batch_until_the_bucket_refills_while_polling_goes_on(
    start: StartRunner,
) -> None:
    bucket_clock = FakeClock()  # the bucket's own clock: time passes only when the test says so
    running = start(rate_limit=TokenBucket(BATCH, bucket_clock))  # one batch per second
    source, pipeline = running.source, running.pipeline
    _feed_all(source, 100)
    wait_until(lambda: len(pipeline.processed), WAIT_S, "two batches (the burst, then the debt)",
               until=lambda n: n == 2)
    polls = source.polls
    wait_until(lambda: source.polls, WAIT_S, "polling to go on", until=lambda n: n > polls + 5)
    assert len(pipeline.processed) == 2 and source.paused == set(PARTITIONS)
    bucket_clock.advance(1.0)  # the debt of the second batch is paid
    wait_until(lambda: len(pipeline.processed), WAIT_S, "the third batch", until=lambda n: n == 3)


    def refilled_and_committed() -> bool:
        bucket_clock.advance(0.5)  # time goes on for the bucket only while the test waits
        return _all_committed(source, 100)

    wait_until(refilled_and_committed, WAIT_S, "all 300 offsets committed")
    assert running.stopped() == 0


def test_a_tripped_guard_holds_everything_uncommitted_and_a_stop_exits_0(start: StartRunner) -> None:
    running = start()
    source, pipeline = running.source, running.pipeline
    pipeline.failures[2] = [GuardTrippedError("too many dead letters")]
    _feed_all(source, 100)
    wait_until(lambda: running.health.guard_tripped, WAIT_S, "the guard to hold")
    polls = source.polls
    wait_until(lambda: source.polls, WAIT_S, "polling to go on", until=lambda n: n > polls + 5)
    assert source.paused == set(PARTITIONS)
    assert [b.batch_id for b in pipeline.processed] == [1]
    assert source.commits == [pipeline.processed[0].next_offsets()]
    assert running.registry.get_sample_value("consumer_dlq_guard_tripped") == 1
    assert running.registry.get_sample_value("consumer_batches_total", {"outcome": "failed"}) == 1
    assert running.stopped() == 0
    assert source.commits == [pipeline.processed[0].next_offsets()]  # the stop committed nothing more
    assert source.closed


def test_a_stop_finishes_and_commits_the_batch_in_hand(start: StartRunner) -> None:
    running = start(max_wait_s=3600.0)  # the open batch would never close on time by itself
    source = running.source
    for partition in PARTITIONS:
        source.feed(partition, 10)
    wait_until(lambda: source.polls, WAIT_S, "a few polls", until=lambda n: n > 5)
    assert source.commits == []
    assert running.stopped() == 0
    assert _all_committed(source, 10)


# --- turn by turn ----------------------------------------------------------------------------------------

SHUTDOWN_S = 30.0
P0, P1, P2 = PARTITIONS


class _FullDelay(random.Random):
    """Backoff jitter pinned to its ceiling, so a test knows the delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Stepped:
    runner: Runner
    source: FakeSource
    pipeline: FakePipeline
    executor: StepExecutor
    clock: FakeClock
    registry: CollectorRegistry
    health: HealthState
    stop: threading.Event

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def stepped() -> Stepped:
    return _stepped()


def _stepped(breaker_threshold: int = 100) -> Stepped:
    clock = FakeClock()
    source, pipeline, executor = FakeSource(PARTITIONS, clock), FakePipeline(), StepExecutor(clock)
    registry = CollectorRegistry()
    metrics = Metrics(registry, [TOPIC])
    health = HealthState(clock, 60)
    stop = threading.Event()
    runner = Runner(
        source=source,
        batcher=Batcher(BATCH, 10**9, 60.0, clock),
        pipeline=pipeline,
        offsets=OffsetTracker(),
        breakers={d: CircuitBreaker(breaker_threshold, 5.0, clock) for d in Dependency},
        backoff=Backoff(0.5, 2.0, _FullDelay()),
        executor=executor,
        observer=RunnerEvents(metrics, health, StatusBoard(health, "test", {}, clock), clock),
        clock=clock,
        shutdown_timeout_s=SHUTDOWN_S,
        stop=stop,
    )
    runner.start()
    return Stepped(runner, source, pipeline, executor, clock, registry, health, stop)


def _inside(calls: list[str], event: str) -> list[str]:
    """The calls made inside the first `event` callback."""
    start = calls.index(event)
    return calls[start + 1:calls.index(f"{event} returned", start)]


def test_turn_by_turn_a_batch_goes_to_the_sink_executor_and_is_committed_on_the_turn_it_is_collected(
    stepped: Stepped,
) -> None:
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    assert stepped.executor.running == 1 and stepped.source.commits == []
    stepped.runner.turn()  # the write is still running: nothing to collect
    assert stepped.source.commits == []
    stepped.executor.finish()
    stepped.runner.turn()
    assert stepped.source.commits == [{P0: BATCH}]
    assert stepped.metric("consumer_batches_total", outcome="committed") == 1
    assert stepped.metric("consumer_committed_offset", topic=TOPIC, partition="0") == BATCH


def test_on_revoked_mid_batch_writes_and_commits_what_is_in_hand_for_them_before_it_returns(
    stepped: Stepped,
) -> None:
    stepped.source.feed(P0, 55)
    stepped.source.feed(P1, 5)
    stepped.runner.turn()  # batch 1: 45 of P0 and 5 of P1, in flight
    stepped.runner.turn()  # the last 10 of P0 wait in the open batch
    assert stepped.executor.running == 1 and stepped.executor.submitted == 1
    stepped.source.revoke([P0])
    stepped.executor.finish_when_waited = True
    stepped.runner.turn()
    assert _inside(stepped.source.calls, "on_revoked") == ["commit", "commit"]  # batch 1, then the revoke batch
    assert stepped.source.last_committed() == {P0: 55, P1: 5}
    assert stepped.metric("consumer_batches_closed_total", reason="revoke") == 1
    assert stepped.metric("consumer_rebalances_total", kind="revoke") == 1
    assert not stepped.metric("consumer_committed_offset", topic=TOPIC, partition="0")  # released
    assert stepped.runner.phase is Phase.RUNNING


def test_on_lost_mid_batch_drops_the_lost_records_and_never_commits_the_lost_partition(stepped: Stepped) -> None:
    stepped.source.feed(P0, 30)
    stepped.source.feed(P1, 30)
    stepped.runner.turn()  # batch 1: 25 of each, in flight
    stepped.runner.turn()  # 5 of each wait in the open batch
    stepped.source.lose([P0])
    stepped.runner.turn()
    stepped.executor.finish()
    stepped.runner.turn()
    assert stepped.source.commits == [{P1: 25}]  # batch 1 went through; P0 is no longer ours to commit
    stepped.stop.set()
    stepped.executor.finish_when_waited = True
    assert stepped.runner.shut_down() == 0
    assert stepped.source.commits == [{P1: 25}, {P1: 30}]
    assert {record.partition for record in stepped.pipeline.processed[-1].records} == {1}
    assert stepped.metric("consumer_rebalances_total", kind="lost") == 1


def test_a_stop_while_a_write_is_in_flight_finishes_it_and_the_open_batch_then_exits_0(stepped: Stepped) -> None:
    stepped.source.feed(P0, BATCH + 10)
    stepped.runner.turn()  # batch 1 in flight
    stepped.runner.turn()  # 10 in the open batch
    stepped.stop.set()
    stepped.executor.finish_when_waited = True
    assert stepped.runner.shut_down() == 0
    assert stepped.source.commits == [{P0: BATCH}, {P0: BATCH + 10}]
    assert stepped.metric("consumer_batches_closed_total", reason="shutdown") == 1
    assert stepped.source.closed and stepped.executor.running == 0
    assert stepped.health.shutting_down and stepped.runner.phase is Phase.STOPPED


def test_a_stop_while_a_write_hangs_gives_up_at_the_shutdown_timeout_and_exits_1_uncommitted(
    stepped: Stepped,
) -> None:
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.stop.set()
    stepped.source.revoke(PARTITIONS, inside="close")  # librdkafka revokes everything in close()
    stopped_at = stepped.clock.monotonic()
    assert stepped.runner.shut_down() == 1
    assert stepped.clock.monotonic() - stopped_at == pytest.approx(SHUTDOWN_S)  # the revoke in close() waited 0
    assert stepped.source.commits == [] and stepped.source.closed
    assert stepped.executor.submitted == 1
    assert _inside(stepped.source.calls, "on_revoked") == []


def test_a_stop_that_gives_up_on_a_hung_write_cancels_it_and_never_counts_the_cancel_as_a_sink_failure(
    stepped: Stepped,
) -> None:
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()  # the write hangs in the database
    stepped.stop.set()
    assert stepped.runner.shut_down() == 1
    assert stepped.executor.cancels == 1
    assert stepped.source.commits == [] and stepped.source.closed
    assert stepped.metric("consumer_sink_retries_total", error_class="WriteCancelledError") is None
    assert stepped.metric("consumer_circuit_breaker_state", dependency="sink") == 0
    assert stepped.metric("consumer_batches_total", outcome="committed") == 0


def test_a_stop_with_every_write_collected_cancels_nothing(stepped: Stepped) -> None:
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.stop.set()
    stepped.executor.finish_when_waited = True
    assert stepped.runner.shut_down() == 0
    assert stepped.executor.cancels == 0


def test_a_stop_while_the_guard_holds_closes_at_once_and_commits_nothing_more(stepped: Stepped) -> None:
    stepped.pipeline.failures[2] = [GuardTrippedError("too many dead letters")]
    stepped.source.feed(P0, 2 * BATCH + 10)
    stepped.runner.turn()  # batch 1 in flight
    stepped.executor.finish()
    stepped.runner.turn()  # batch 1 committed, batch 2 in flight
    stepped.executor.finish()
    stepped.runner.turn()  # batch 2 tripped the guard; the 10 just polled are dropped with it
    assert stepped.runner.phase is Phase.HELD
    assert stepped.source.paused == set(PARTITIONS)
    assert stepped.metric("consumer_dlq_guard_tripped") == 1
    stepped.source.feed(P1, 5)
    stepped.runner.turn()  # held: polled (paused, so nothing comes), nothing kept
    stepped.stop.set()
    stepped.source.revoke(PARTITIONS, inside="close")
    stopped_at = stepped.clock.monotonic()
    assert stepped.runner.shut_down() == 0
    assert stepped.clock.monotonic() == stopped_at
    assert stepped.source.commits == [{P0: BATCH}]
    assert stepped.executor.submitted == 2 and stepped.source.closed


def test_a_revoke_during_a_retry_backoff_waits_it_out_inside_the_callback_and_commits_before_returning(
    stepped: Stepped,
) -> None:
    stepped.pipeline.failures[1] = [SinkUnavailableError("db away")]
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.executor.finish()
    stepped.runner.turn()  # the failure: batch 1 goes back in line behind a backoff, partitions paused
    assert stepped.metric("consumer_batches_total", outcome="retried") == 1
    assert stepped.source.paused == set(PARTITIONS)
    stepped.source.revoke(PARTITIONS)
    stepped.executor.finish_when_waited = True
    stepped.runner.turn()
    assert stepped.clock.sleeps == [0.5]  # the backoff, waited out on the polling thread inside the callback
    assert _inside(stepped.source.calls, "on_revoked") == ["commit"]
    assert stepped.pipeline.attempts == [1, 1]
    assert stepped.source.commits == [{P0: BATCH}]
    assert stepped.metric("consumer_paused_partitions") == 0  # released with the partitions


def test_a_revoke_during_an_outage_gives_up_at_the_timeout_and_releases_the_partitions_uncommitted(
    stepped: Stepped,
) -> None:
    stepped.pipeline.failures[1] = [SinkUnavailableError("db away")] * 1000
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.executor.finish()
    stepped.runner.turn()
    stepped.source.revoke(PARTITIONS)
    stepped.executor.finish_when_waited = True
    revoked_at = stepped.clock.monotonic()
    stepped.runner.turn()
    assert SHUTDOWN_S <= stepped.clock.monotonic() - revoked_at < SHUTDOWN_S + 1
    assert len(stepped.pipeline.attempts) > 10 and stepped.source.commits == []
    assert not stepped.metric("consumer_committed_offset", topic=TOPIC, partition="0")


def test_a_revoke_while_a_write_hangs_waits_the_shutdown_timeout_and_leaves_the_write_uncancelled(
    stepped: Stepped,
) -> None:
    """Only a stop cancels a write: after a revoke gave up on it the service goes on, and the write (its rows
    idempotent) may still end; its offsets are then no longer ours to commit."""
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()  # the write hangs
    stepped.source.revoke(PARTITIONS)
    revoked_at = stepped.clock.monotonic()
    stepped.runner.turn()
    assert stepped.clock.monotonic() - revoked_at == pytest.approx(SHUTDOWN_S, abs=0.2)
    assert stepped.executor.cancels == 0 and stepped.executor.running == 1
    assert stepped.runner.phase is Phase.RUNNING
    stepped.executor.finish()
    stepped.runner.turn()
    assert stepped.source.commits == []


def test_a_stop_seen_inside_a_revoke_callback_bounds_the_callback_and_the_shutdown_by_one_timeout(
    stepped: Stepped,
) -> None:
    """SIGTERM's handler runs on the polling thread at the first Python line it reaches, which may be inside
    a revoke callback that consume() is serving. That callback and the shutdown after it share one timeout."""
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()  # batch 1 in flight; its write will not end
    stepped.source.serve_in("poll", lambda listener: stepped.stop.set())
    stepped.source.revoke(PARTITIONS)
    stopped_at = stepped.clock.monotonic()
    stepped.runner.turn()
    assert stepped.runner.shut_down() == 1
    elapsed = stepped.clock.monotonic() - stopped_at
    assert SHUTDOWN_S <= elapsed <= SHUTDOWN_S + 0.2  # plus the rest of the poll that served the callback
    assert stepped.source.commits == []


def test_a_revoke_served_inside_a_commit_while_stopping_shares_the_stop_deadline(stepped: Stepped) -> None:
    """Source.commit may serve a rebalance callback (our Protocol allows it; librdkafka serves them in
    consume() and close()): the callback must not start a shutdown timeout of its own."""
    stepped.source.feed(P0, 2 * BATCH)
    stepped.runner.turn()  # batch 1 in flight
    stepped.runner.turn()  # batch 2 closed, waiting behind it

    def slow_then_done() -> None:
        stepped.clock.advance(20.0)
        stepped.executor.finish()

    stepped.executor.during_wait.append(slow_then_done)  # batch 1 takes 20 s; batch 2 will not end
    stepped.source.revoke(PARTITIONS, inside="commit")
    stepped.stop.set()
    stopped_at = stepped.clock.monotonic()
    assert stepped.runner.shut_down() == 1
    assert stepped.clock.monotonic() - stopped_at == pytest.approx(SHUTDOWN_S)
    # batch 2 never finished: the revoke commits (synchronously) only batch 1's offsets, sent but unanswered
    assert _inside(stepped.source.calls, "on_revoked") == ["commit"]
    assert stepped.source.commits == [{P0: BATCH}, {P0: BATCH}]


def test_dead_letters_the_broker_did_not_take_are_the_brokers_failure_not_the_sinks() -> None:
    """The pipeline's dead-letter publish raised BrokerUnavailableError: the broker's breaker opens (threshold
    1 here), the sink's stays closed, and it is a retry of the broker, not of the sink."""
    stepped = _stepped(breaker_threshold=1)
    stepped.pipeline.failures[1] = [BrokerUnavailableError("dead-letter delivery failed for 2 records")]
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.executor.finish()
    stepped.runner.turn()  # the failure: the batch goes back in line
    assert stepped.metric("consumer_circuit_breaker_state", dependency="broker") == 2
    assert stepped.metric("consumer_circuit_breaker_state", dependency="sink") == 0
    assert stepped.metric("consumer_retries_total", dependency="broker") == 1
    assert stepped.metric("consumer_retries_total", dependency="sink") == 0
    assert sum(stepped.metric("consumer_sink_retries_total", error_class=c) or 0
               for c in ("SinkUnavailableError", "BrokerUnavailableError", "RegistryUnavailableError")) == 0
    assert stepped.metric("consumer_batches_total", outcome="retried") == 1
    assert stepped.health.breaker_open

    stepped.clock.advance(5.0)  # the broker's breaker lets a probe through
    stepped.runner.turn()
    assert stepped.executor.submitted == 2
    stepped.executor.finish()
    stepped.runner.turn()
    assert stepped.source.commits == [{P0: BATCH}]
    assert stepped.metric("consumer_circuit_breaker_state", dependency="broker") == 0


def test_lag_seconds_keep_growing_while_the_guard_holds_the_records_it_let_go(stepped: Stepped) -> None:
    """The incident lag must describe: nothing is in hand any more, yet the records stay uncommitted."""
    stepped.pipeline.failures[2] = [GuardTrippedError("too many dead letters")]
    stepped.source.feed(P0, BATCH)
    stepped.source.high_watermarks[P0] = BATCH
    stepped.runner.turn()  # batch 1 in flight
    stepped.executor.finish()
    stepped.runner.turn()  # batch 1 committed; its lag refresh sees nothing behind it
    sent_ms = int(stepped.clock.wall() * 1000)
    stepped.source.feed(P0, BATCH, timestamp_ms=sent_ms)
    stepped.source.high_watermarks[P0] = 2 * BATCH
    stepped.runner.turn()  # batch 2 in flight before the next lag refresh is due
    stepped.executor.finish()
    stepped.runner.turn()  # batch 2 trips the guard
    assert stepped.runner.phase is Phase.HELD
    for _ in range(30):
        stepped.clock.advance(1)
        stepped.runner.turn()
    held_s = stepped.clock.wall() - sent_ms / 1000
    assert stepped.metric("consumer_lag_seconds", topic=TOPIC, partition="0") == pytest.approx(held_s, abs=1.0)
    assert stepped.metric("consumer_lag_records", topic=TOPIC, partition="0") == BATCH
    assert stepped.health.status["lag"]["seconds"] == pytest.approx(held_s, abs=1.0)


def test_records_a_poll_brought_have_their_age_in_the_lag_refresh_of_that_turn(stepped: Stepped) -> None:
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()
    stepped.executor.finish()
    stepped.runner.turn()  # committed at BATCH: nothing lags
    sent_ms = int(stepped.clock.wall() * 1000) - 5000
    stepped.source.feed(P0, 10, timestamp_ms=sent_ms)  # fewer than a batch: they stay in the open batch
    stepped.source.high_watermarks[P0] = BATCH + 10
    stepped.clock.advance(2)  # a lag refresh is due on the next turn
    stepped.runner.turn()
    assert stepped.metric("consumer_lag_seconds", topic=TOPIC, partition="0") == pytest.approx(7.0, abs=0.5)


# --- a commit the broker does not answer -------------------------------------------------------------------


def _collected_with_an_unanswered_commit(stepped: Stepped) -> None:
    """Batch 1 goes through; its commit is sent and gets no answer (the broker is away)."""
    stepped.source.silent = True
    stepped.source.feed(P0, BATCH)
    stepped.runner.turn()  # batch 1 in flight
    stepped.executor.finish()
    stepped.runner.turn()  # collected: its commit goes out, unanswered
    assert stepped.source.unanswered == [{P0: BATCH}] and stepped.source.commits == []


def test_an_unanswered_commit_keeps_the_loop_polling_and_counts_as_refused_after_the_bound(stepped: Stepped) -> None:
    """The loop polls and beats on while the commit waits; after _COMMIT_ANSWER_S it counts as refused (the
    offsets stay pending) and goes out again, once: never two at a time, never a commit per turn."""
    _collected_with_an_unanswered_commit(stepped)
    polls = stepped.source.polls
    for _ in range(20):
        stepped.runner.turn()
    assert stepped.source.polls == polls + 20  # every turn polled: none of them waited on the commit
    assert stepped.health.live()
    assert stepped.source.unanswered == [{P0: BATCH}]  # one commit out, not one per turn
    assert stepped.metric("consumer_commit_failures_total") == 0

    stepped.clock.advance(_COMMIT_ANSWER_S)
    stepped.runner.turn()  # given up on: refused; sent again
    assert stepped.metric("consumer_commit_failures_total") == 1
    assert stepped.source.unanswered == [{P0: BATCH}, {P0: BATCH}]
    assert not stepped.metric("consumer_committed_offset", topic=TOPIC, partition="0")
    assert stepped.metric("consumer_batches_total", outcome="committed") == 1  # its offsets went out

    stepped.source.silent = False
    stepped.source.answer_late()  # the broker is back: both answers come, the late one first
    stepped.runner.turn()
    assert stepped.metric("consumer_committed_offset", topic=TOPIC, partition="0") == BATCH
    assert stepped.metric("consumer_commit_failures_total") == 1
    stepped.runner.turn()
    assert stepped.source.commits == [{P0: BATCH}, {P0: BATCH}]  # nothing pending: nothing more sent


def test_a_stop_while_the_commit_is_unanswered_exits_1_at_the_stop_deadline(stepped: Stepped) -> None:
    """The final commit waits for its answer only until the stop deadline; leaving the group then gets
    only _CLOSE_GRACE_S more."""
    _collected_with_an_unanswered_commit(stepped)
    stepped.stop.set()
    stopped_at = stepped.clock.monotonic()
    assert stepped.runner.shut_down() == 1
    assert stepped.clock.monotonic() - stopped_at == pytest.approx(SHUTDOWN_S, abs=0.1)
    assert stepped.source.paused == set(PARTITIONS)  # it polled for the answer with nothing to fetch
    assert stepped.source.commits == [] and stepped.source.closed
    assert stepped.source.close_timeout_s == pytest.approx(_CLOSE_GRACE_S, abs=0.1)


def test_a_stop_whose_commit_is_answered_late_exits_0(stepped: Stepped) -> None:
    _collected_with_an_unanswered_commit(stepped)

    def broker_back(_listener: object) -> None:
        stepped.source.silent = False
        stepped.source.answer_late()

    stepped.source.serve_in("poll", broker_back)
    stepped.stop.set()
    assert stepped.runner.shut_down() == 0
    assert stepped.source.commits == [{P0: BATCH}]


def test_a_revoke_commits_synchronously_what_an_unanswered_commit_carries_before_it_returns(
    stepped: Stepped,
) -> None:
    _collected_with_an_unanswered_commit(stepped)
    stepped.source.revoke([P0])
    stepped.runner.turn()
    assert _inside(stepped.source.calls, "on_revoked") == ["commit"]
    assert stepped.source.sync_commits == 1 and stepped.source.commits == [{P0: BATCH}]
