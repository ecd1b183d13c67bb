"""`make bench` in small: every phase runs on the real broker and PostgreSQL, the counts add up, the output
files are written and the last line parses. Speed is never asserted here; it is what the benchmark reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.service import BASE_ENV

REPO = Path(__file__).resolve().parents[2]
RECORDS = 20_000
# The benchmark repeats one event in a hundred (a redelivery), so the table holds fewer rows than records.
DISTINCT = RECORDS - RECORDS // 100
SMALL = RECORDS // 10
LAST_LINE = re.compile(
    r"^bench: service/ceiling=(?P<ratio>\d+\.\d+) service_rps=(?P<service_rps>\d+) "
    r"consume_rps=(?P<consume_rps>\d+) sink_rps=(?P<sink_rps>\d+) p99_ms=(?P<p99_ms>\d+) "
    r"rss_ratio=(?P<rss_ratio>\d+\.\d+)$"
)
PHASES = ("consume_ceiling", "decode_ceiling", "service_decoder", "sink_ceiling", "service_sink", "service",
          "service_workers_2", "memory_small", "latency", "workers_1", "workers_2")
_BENCH_TIMEOUT_S = 540


def _run_bench(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.bench"], cwd=REPO, env={**os.environ, **BASE_ENV, **env},
        capture_output=True, text=True, timeout=_BENCH_TIMEOUT_S, check=False,
    )


@pytest.fixture(scope="module")
def bench_run(
    kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """One small benchmark on the run's broker and PostgreSQL, its results in a fresh directory."""
    results = tmp_path_factory.mktemp("bench-results")
    done = _run_bench({"BENCH_RECORDS": str(RECORDS), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                       "BENCH_DATABASE_URL": postgres_url, "BENCH_RESULTS_DIR": str(results)})
    assert done.returncode == 0, f"bench exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    [json_file] = results.glob("bench-*.json")
    return done, json.loads(json_file.read_text(encoding="utf-8")), results


@pytest.mark.timeout(_BENCH_TIMEOUT_S + 60)
def test_bench_last_line_parses_with_every_field(bench_run: tuple[Any, dict[str, Any], Path]) -> None:
    done, document, _ = bench_run
    last = done.stdout.rstrip("\n").splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match is not None, f"last line not machine-readable: {last!r}"
    assert document["last_line"] == last
    figures = {name: float(value) for name, value in match.groupdict().items()}
    ceiling = min(figures["consume_rps"], figures["sink_rps"])
    assert figures["ratio"] == pytest.approx(figures["service_rps"] / ceiling, abs=0.01)


@pytest.mark.timeout(_BENCH_TIMEOUT_S + 60)
def test_bench_service_commits_everything_produced_and_writes_each_key_once(
    bench_run: tuple[Any, dict[str, Any], Path],
) -> None:
    _, document, _ = bench_run
    phases = document["phases"]
    assert set(PHASES) <= set(phases)
    service = phases["service"]
    assert sum(service["end_offsets"].values()) == RECORDS
    assert service["committed"] == service["end_offsets"]
    assert service["rows"] == service["distinct_keys"] == DISTINCT
    assert service["metrics"]["sunk"] == DISTINCT
    assert service["metrics"]["duplicate"] == RECORDS - DISTINCT
    assert service["metrics"]["dlq"] == 0
    small = phases["memory_small"]
    assert small["committed"] == small["end_offsets"] and sum(small["end_offsets"].values()) == SMALL
    assert small["rows"] == SMALL - SMALL // 100
    for name in ("workers_1", "workers_2", "service_workers_2"):
        assert phases[name]["committed"] == service["end_offsets"], name
    assert phases["service_workers_2"]["rows"] == DISTINCT


@pytest.mark.timeout(_BENCH_TIMEOUT_S + 60)
def test_bench_ceilings_and_latency_cover_every_record(bench_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, document, _ = bench_run
    phases = document["phases"]
    for name in ("consume_ceiling", "decode_ceiling", "service_decoder", "sink_ceiling", "service_sink"):
        assert phases[name]["records"] == RECORDS, name
    assert phases["sink_ceiling"]["rows_written"] == phases["service_sink"]["rows_written"] == DISTINCT
    latency = document["latency"]
    assert latency["records"] == phases["latency"]["records"] > 0
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]


@pytest.mark.timeout(_BENCH_TIMEOUT_S + 60)
def test_bench_writes_json_and_chart_with_machine_and_versions(bench_run: tuple[Any, dict[str, Any], Path]) -> None:
    done, document, results = bench_run
    [chart] = results.glob("bench-*.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert document["files"] == {"json": chart.with_suffix(".json").name, "png": chart.name}
    assert document["machine"]["logical_cpus"] >= 1
    assert {"python", "confluent_kafka", "librdkafka", "fastavro", "psycopg", "postgresql_server"} <= set(
        document["versions"])
    assert document["settings"]["BENCH_RECORDS"] == RECORDS
    assert {"service/ceiling", "service_decoder/decode_ceiling", "service_sink/sink_ceiling",
            "workers_2/workers_1", "service_workers_2/ceiling", "rss_ratio", "p99_ms"} <= set(document["ratios"])
    assert "ratios:" in done.stdout


def test_bench_bad_setting_exits_2_naming_it() -> None:
    done = _run_bench({"BENCH_RECORDS": "lots"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["bench: configuration error: BENCH_RECORDS: not an integer (got 'lots')"]
    assert "Traceback" not in done.stderr
