"""The benchmark's own arithmetic: latency matching, percentiles, its last line, its settings and events.

These parts decide what `make bench` reports; a slip in them would print wrong figures with no error.
"""

from __future__ import annotations

import io

import fastavro
import pytest

from ops.bench.config import BenchConfigError, load_config
from ops.bench.events import distinct_events, encoded_values, parsed_schema
from ops.bench.measure import PhaseResult, rate_series
from ops.bench.report import LAST_LINE_FIELDS, last_line, parse_last_line, percentile
from ops.bench.service import _match


def test_latency_is_matched_to_the_first_reading_that_covers_each_record() -> None:
    timestamps = {0: {0: 1000, 1: 1010, 2: 1020}, 1: {0: 1005}}
    observations = [
        (1100.0, {0: 0, 1: 0}),
        (1200.0, {0: 2, 1: 0}),  # offsets 0 and 1 of partition 0 committed
        (1300.0, {0: 2, 1: 1}),
        (1400.0, {0: 3, 1: 1}),
    ]
    assert sorted(_match(observations, timestamps)) == sorted([200.0, 190.0, 380.0, 295.0])


def test_latency_ignores_a_committed_offset_that_goes_back() -> None:
    timestamps = {0: {0: 0, 1: 0}}
    observations = [(100.0, {0: 2}), (150.0, {0: 1}), (200.0, {0: 2})]
    assert _match(observations, timestamps) == [100.0, 100.0]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def _phase(name: str, records: int, seconds: float, rss: int | None = None) -> PhaseResult:
    return PhaseResult(name, name, records, records * 300, seconds, peak_rss_bytes=rss)


def test_last_line_round_trips_with_every_field_in_order() -> None:
    phases = {"service": _phase("service", 1000, 1.0), "consume_ceiling": _phase("c", 3000, 1.0),
              "sink_ceiling": _phase("s", 2000, 1.0)}
    line = last_line(phases, {"service/ceiling": 0.5, "p99_ms": 812.4, "rss_ratio": 1.0412})
    assert line == ("bench: service/ceiling=0.50 service_rps=1000 consume_rps=3000 sink_rps=2000 p99_ms=812 "
                    "rss_ratio=1.04")
    parsed = parse_last_line(line)
    assert tuple(parsed) == LAST_LINE_FIELDS
    assert parsed["sink_rps"] == 2000.0


def test_rate_series_averages_over_windows() -> None:
    series = [(0.5, 500), (1.0, 1000), (1.5, 1000), (2.0, 3000)]
    assert rate_series(series, 1.0) == [(1.0, 1000.0), (2.0, 2000.0)]


@pytest.mark.parametrize(("env", "message"), [
    ({"BENCH_RECORDS": "lots"}, "BENCH_RECORDS: not an integer (got 'lots')"),
    ({"BENCH_RECORDS": "0"}, "BENCH_RECORDS: must be at least 1 (got '0')"),
    ({"BENCH_LATENCY_S": "-1"}, "BENCH_LATENCY_S: must be positive (got '-1')"),
    ({"BENCH_DATABASE_URL": "not a url"}, "BENCH_DATABASE_URL: not a database URL (got 'not a url')"),
    ({"BENCH_BROKER": "redpanda"}, "BENCH_BROKER: one of kafka, tansu (got 'redpanda')"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(BenchConfigError) as raised:
        load_config(env)
    assert str(raised.value) == message


def test_defaults_and_scaled_phases() -> None:
    full, small = load_config({}), load_config({"BENCH_RECORDS": "20_000"})
    assert (full.records, full.latency_s, full.small_records) == (1_000_000, 30.0, 100_000)
    assert (small.records, small.small_records) == (20_000, 2_000)
    assert small.latency_s == 4.0  # shrunk, never below the floor
    assert (full.database_url, full.bootstrap, full.broker) == (None, None, "kafka")  # both started by the bench
    assert load_config({"BENCH_BROKER": "Tansu"}).broker == "tansu"


@pytest.mark.parametrize("records", [1, 99, 100, 250, 1000])
def test_distinct_events_counts_the_event_ids_actually_encoded(records: int) -> None:
    schema = parsed_schema()
    ids = {fastavro.schemaless_reader(io.BytesIO(value), schema, None)["event_id"]  # type: ignore[index]
           for value in encoded_values(records, schema)}
    assert len(ids) == distinct_events(records)


def test_events_are_about_300_bytes() -> None:
    sizes = [len(value) for value in encoded_values(1000, parsed_schema())]
    assert 280 <= sum(sizes) / len(sizes) <= 330


def test_cpu_budget_of_one_process_and_of_two_workers_with_their_database_and_broker() -> None:
    from ops.bench.report import cpu_budget

    service = PhaseResult("service", "s", 1_000_000, 0, 20.0, cpu_seconds=16.0, db_cpu_seconds=9.0)
    workers = PhaseResult("service_workers_2", "w", 1_000_000, 0, 15.0, cpu_seconds=15.0, db_cpu_seconds=9.0,
                          broker_cpu_seconds=1.0)
    figures = cpu_budget({"service": service, "service_workers_2": workers}, 100_000)
    cores = figures["cores"]
    assert figures["service_max_rps_at_one_core"] == 62_500
    assert figures["workers_2_cpu_s_per_million_with_db_and_broker"] == 25.0
    assert figures["workers_2_max_rps_on_all_cores"] == round(cores * 1e6 / 25.0)
    assert figures["cpu_s_per_million_allowed_at_0.8_ceiling"] == round(cores * 1e6 / 80_000, 1)
    external = PhaseResult("service_workers_2", "w", 1_000_000, 0, 15.0, cpu_seconds=15.0, db_cpu_seconds=9.0)
    assert "workers_2_max_rps_on_all_cores" not in cpu_budget({"service": service, "service_workers_2": external}, 1)
