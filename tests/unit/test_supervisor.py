"""The WORKERS supervisor's pure parts: merging the workers' metrics, and the restart policy."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from consumer.observability.metrics import Metrics, SupervisorMetrics
from consumer.workers.aggregate import Families, cumulative, families_of, merge, parse, render
from consumer.workers.supervisor import Decision, RestartPolicy

TOPICS = ["orders"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _exposition(*workers: CollectorRegistry) -> Samples:
    return _exposition_of([families_of(registry) for registry in workers])


def _exposition_of(expositions: list[Families]) -> Samples:
    """Render the merge and parse it back, as Prometheus would read it."""
    text = render(merge(expositions)).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _registry_with() -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, TOPICS)
    return registry, metrics


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def two_workers() -> tuple[CollectorRegistry, CollectorRegistry]:
    first, a = _registry_with()
    second, b = _registry_with()
    a.records_total.labels("orders", "sunk").inc(30)
    b.records_total.labels("orders", "sunk").inc(12)
    a.records_total.labels("orders", "dlq").inc(1)
    for metrics, partitions in ((a, {0: 100, 1: 7}), (b, {2: 55})):
        for partition, offset in partitions.items():
            metrics.partition_assigned("orders", partition)
            metrics.committed_offset.labels("orders", str(partition)).set(offset)
    a.circuit_breaker_state.labels("sink").set(0)
    b.circuit_breaker_state.labels("sink").set(2)
    a.dlq_guard_tripped.set(1)
    a.paused_partitions.set(2)
    b.paused_partitions.set(1)
    a.last_commit_timestamp_seconds.set(1_700_000_100.0)
    b.last_commit_timestamp_seconds.set(1_700_000_200.0)
    for size in (5, 500):
        a.batch_records.observe(size)
    b.batch_records.observe(5000)
    a.batch_duration_seconds.labels("sink").observe(0.02)
    b.batch_duration_seconds.labels("sink").observe(0.2)
    return first, second


def test_counters_are_summed_per_label_set(two_workers: tuple[CollectorRegistry, CollectorRegistry]) -> None:
    merged = _exposition(*two_workers)
    assert merged[_key("consumer_records_total", topic="orders", outcome="sunk")] == 42
    assert merged[_key("consumer_records_total", topic="orders", outcome="dlq")] == 1
    assert merged[_key("consumer_records_total", topic="orders", outcome="duplicate")] == 0


def test_histograms_are_summed_per_bucket(two_workers: tuple[CollectorRegistry, CollectorRegistry]) -> None:
    merged = _exposition(*two_workers)
    assert merged[_key("consumer_batch_records_count")] == 3
    assert merged[_key("consumer_batch_records_sum")] == 5505
    assert merged[_key("consumer_batch_records_bucket", le="10.0")] == 1
    assert merged[_key("consumer_batch_records_bucket", le="500.0")] == 2
    assert merged[_key("consumer_batch_records_bucket", le="+Inf")] == 3
    assert merged[_key("consumer_batch_duration_seconds_count", stage="sink")] == 2
    assert merged[_key("consumer_batch_duration_seconds_bucket", stage="sink", le="0.025")] == 1


def test_partition_gauges_are_the_union_of_the_workers(
    two_workers: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    merged = _exposition(*two_workers)
    committed = {dict(labels)["partition"]: value for (name, labels), value in merged.items()
                 if name == "consumer_committed_offset"}
    assert committed == {"0": 100, "1": 7, "2": 55}


def test_state_gauges_show_the_worst_worker_and_paused_partitions_add_up(
    two_workers: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    merged = _exposition(*two_workers)
    assert merged[_key("consumer_circuit_breaker_state", dependency="sink")] == 2
    assert merged[_key("consumer_circuit_breaker_state", dependency="schema_registry")] == 0
    assert merged[_key("consumer_dlq_guard_tripped")] == 1
    assert merged[_key("consumer_paused_partitions")] == 3
    assert merged[_key("consumer_last_commit_timestamp_seconds")] == 1_700_000_200.0


def test_merged_exposition_keeps_every_name_type_and_help_of_one_worker(
    two_workers: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    single = {(f.name, f.type, f.documentation) for f in families_of(two_workers[0])}
    merged = {(f.name, f.type, f.documentation) for f in parse(render(merge(
        [families_of(r) for r in two_workers])).decode())}
    assert merged == single
    single_series = {(s.name, frozenset(s.labels.items())) for f in families_of(two_workers[0]) for s in f.samples
                     if not s.name.endswith("_created")}
    assert single_series <= set(_exposition(*two_workers))


def test_created_timestamps_keep_the_earliest(two_workers: tuple[CollectorRegistry, CollectorRegistry]) -> None:
    first = {s.labels.get("outcome"): s.value for f in families_of(two_workers[0]) if f.name ==
             "consumer_records_created" for s in f.samples}
    second = {s.labels.get("outcome"): s.value for f in families_of(two_workers[1]) if f.name ==
              "consumer_records_created" for s in f.samples}
    merged = _exposition(*two_workers)
    assert merged[_key("consumer_records_created", topic="orders", outcome="sunk")] == min(first["sunk"],
                                                                                           second["sunk"])


def test_a_dead_workers_counters_carry_over_but_not_its_gauges(
    two_workers: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    first, second = two_workers
    retired = merge([[], cumulative(families_of(second))])  # `second` died; a new incarnation starts at 0
    reborn, metrics = _registry_with()
    metrics.records_total.labels("orders", "sunk").inc(3)
    merged = _exposition_of([families_of(first), families_of(reborn), retired])
    assert merged[_key("consumer_records_total", topic="orders", outcome="sunk")] == 30 + 12 + 3
    assert merged[_key("consumer_batch_records_count")] == 3
    assert _key("consumer_committed_offset", topic="orders", partition="2") not in merged
    assert merged[_key("consumer_circuit_breaker_state", dependency="sink")] == 0
    assert merged[_key("consumer_paused_partitions")] == 2


def test_supervisor_metrics_join_the_workers_metrics(
    two_workers: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    own = CollectorRegistry()
    supervisor = SupervisorMetrics(own, workers=2)
    supervisor.worker_restarts_total.labels("1").inc()
    merged = _exposition(*two_workers, own)
    assert merged[_key("consumer_worker_restarts_total", worker="0")] == 0
    assert merged[_key("consumer_worker_restarts_total", worker="1")] == 1
    assert merged[_key("consumer_records_total", topic="orders", outcome="sunk")] == 42


# --- restart policy ----------------------------------------------------------------------------------


def test_a_crash_is_restarted_with_a_doubling_capped_backoff() -> None:
    policy = RestartPolicy(initial_s=1.0, max_s=30.0, stable_s=60.0, max_failures=10)
    streak, delays = 0, []
    for _ in range(8):
        decision = policy.decide(-9, lived_s=5.0, streak=streak)
        assert decision.restart_in_s is not None
        streak = decision.streak
        delays.append(decision.restart_in_s)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_that_ran_a_while_starts_a_new_streak() -> None:
    policy = RestartPolicy(initial_s=1.0, stable_s=60.0, max_failures=3)
    assert policy.decide(1, lived_s=3600.0, streak=2) == Decision(1, 1.0)


def test_repeated_quick_failures_stop_the_supervisor_with_exit_1() -> None:
    policy = RestartPolicy(initial_s=1.0, stable_s=60.0, max_failures=3)
    first = policy.decide(1, lived_s=2.0, streak=0)
    second = policy.decide(1, lived_s=2.0, streak=first.streak)
    third = policy.decide(1, lived_s=2.0, streak=second.streak)
    assert (first.restart_in_s, second.restart_in_s) == (1.0, 2.0)
    assert third == Decision(3, None, 1)


def test_a_configuration_error_stops_at_once_with_exit_2() -> None:
    assert RestartPolicy().decide(2, lived_s=3600.0, streak=0).restart_in_s is None
    assert RestartPolicy().decide(2, lived_s=3600.0, streak=0).exit_code == 2
