"""The benchmark's order of phases, its progress line and its output.

1. broker (KAFKA_BOOTSTRAP_SERVERS, else Apache Kafka or, with BENCH_BROKER=tansu, the bundled Tansu) and
   PostgreSQL (BENCH_DATABASE_URL, else a private cluster)
2. pre-produce BENCH_RECORDS events over 6 partitions (and a 10x smaller backlog for the memory phase)
3. ceilings with the service's own code beside them: consume, then (over the values read back) decode, sink
4. the service draining the backlog, then the small backlog (memory), then under half load (latency)
5. WORKERS=1 and WORKERS=2 with the database taken out (SQLite in memory)
6. the table, the ratios, JSON + PNG in BENCH_RESULTS_DIR, and the machine-readable last line
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from consumer.settings import Settings
from ops.bench import ceilings, db, report, service
from ops.bench.config import BenchConfig, BenchConfigError, load_config
from ops.bench.events import distinct_events, encoded_values, parsed_schema
from ops.bench.kafka import BenchKafkaError, broker, create_topic, delete_topics, produce_all
from ops.bench.measure import PhaseResult
from ops.testbed.postgres import PostgresTestbedError, private_postgres

_DURABLE_POSTGRES = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
_BATCH_MAX_WAIT_MS: int = Settings.model_fields["batch_max_wait_ms"].default
# WORKERS with the database taken out: every connection of one process shares one in-memory SQLite
# database (plain `sqlite://` gives each thread its own, and the service writes from a worker thread).
_SQLITE_MEMORY_URL = "sqlite:///file:bench-{name}?mode=memory&cache=shared&uri=true"


class _Phases:
    """One progress bar per phase, on stderr, so stdout keeps the table, the ratios and the last line."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self._progress.add_task(description, total=total)
        yield lambda done: self._progress.update(task, completed=done)
        self._progress.update(task, completed=total)


def main() -> int:
    try:
        config = load_config()
    except BenchConfigError as exc:
        print(f"bench: configuration error: {exc}", file=sys.stderr)
        return 2
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 150)
    err = Console(stderr=True)
    progress = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=False)
    try:
        with progress:
            document, phases, line = _run(config, _Phases(progress), err)
    except (ceilings.BenchError, BenchKafkaError, KafkaException, psycopg.Error, OSError) as exc:
        err.print(f"bench: failed: {exc}", markup=False, highlight=False)
        return 1
    out.print(report.table(phases))
    report.print_ratios(out, document["ratios"])
    machine = document["machine"]
    out.print(f"load average before {machine['load_average_before'][0]:.1f}, after {machine['load_average'][0]:.1f} "
              f"on {machine['logical_cpus']} CPUs: on a shared machine every figure is noisy", markup=False,
              highlight=False)
    results = config.results_dir
    out.print(f"results: {results / document['files']['json']}  chart: {results / document['files']['png']}",
              markup=False, highlight=False)
    print(line, flush=True)
    return 0


def _run(config: BenchConfig, ui: _Phases, err: Console) -> tuple[dict[str, Any], list[PhaseResult], str]:
    started = dt.datetime.now(dt.UTC)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    tag = run_id.replace("-", "_").lower()
    load_before = report.machine()["load_average"]
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    tables: list[str] = []
    topics: list[str] = []
    try:
        with (broker(config.bootstrap, config.broker, workdir) as (bootstrap, broker_name, broker_pid),
              _database(config.database_url, workdir) as database_url):
            server_version = _server_version(database_url)
            try:
                phases, latency = _phases(config, ui, bootstrap, broker_pid, database_url, run_id, tag, workdir,
                                          tables, topics)
            finally:
                _drop_tables(database_url, tables)
                if config.bootstrap:
                    delete_topics(bootstrap, [*topics, *(f"{t}.dlq" for t in topics)])
    except BaseException:
        err.print(f"bench: the service and broker logs are kept in {workdir}", markup=False, highlight=False)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    figures = report.ratios(phases, latency, _BATCH_MAX_WAIT_MS)
    stem = f"bench-{run_id}"
    json_path, png_path = config.results_dir / f"{stem}.json", config.results_dir / f"{stem}.png"
    finished = dt.datetime.now(dt.UTC)
    document: dict[str, Any] = {
        "run_id": run_id,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 1),
        "machine": {**report.machine(), "load_average_before": load_before},
        "versions": report.versions(broker_name, server_version),
        "settings": {**config.as_dict(), "service_defaults": _service_defaults(),
                     "service_env_inherited": _inherited_service_env()},
        "phases": {name: phase.as_dict() for name, phase in phases.items()},
        "latency": {k: v for k, v in latency.items() if k != "samples"},
        "ratios": figures,
        "files": {"json": json_path.name, "png": png_path.name},  # beside each other, wherever they are copied
    }
    line = report.last_line(phases, figures)
    document["last_line"] = line
    document["table_markdown"] = report.markdown_table(list(phases.values()))
    report.chart(png_path, phases, latency["samples"], figures["p99_target_ms"],
                 f"make bench {run_id}: {config.records:,} records, {document['machine']['logical_cpus']} CPUs, "
                 f"{broker_name}, PostgreSQL {server_version}")
    report.write_json(json_path, document)
    return document, list(phases.values()), line


@contextmanager
def _database(explicit: str | None, workdir: Path) -> Iterator[str]:
    """BENCH_DATABASE_URL, else a private PostgreSQL cluster with a real server's durability (fsync and
    synchronous commit on, unlike the tests' cluster), removed afterwards."""
    if explicit:
        yield explicit
        return
    try:
        with private_postgres(log_path=workdir / "postgres.log", settings=_DURABLE_POSTGRES) as cluster:
            yield cluster.url
    except PostgresTestbedError as exc:
        raise ceilings.BenchError(f"no BENCH_DATABASE_URL and no private PostgreSQL: {exc}") from None


def _phases(
    config: BenchConfig, ui: _Phases, bootstrap: str, broker_pid: int | None, database_url: str, run_id: str, tag: str, workdir: Path,
    tables: list[str], topics: list[str],
) -> tuple[dict[str, PhaseResult], dict[str, Any]]:
    n, parts = config.records, config.partitions
    main_topic = create_topic(bootstrap, f"bench-{run_id}", parts)
    small_topic = create_topic(bootstrap, f"bench-{run_id}-small", parts)
    latency_topic = create_topic(bootstrap, f"bench-{run_id}-latency", parts)
    topics.extend([main_topic, small_topic, latency_topic])
    schema = parsed_schema()
    with ui.phase("encode events (Avro, ~300 bytes)", n) as tick:
        values: list[bytes] = []
        for value in encoded_values(n, schema):
            values.append(value)
            if len(values) % 10_000 == 0:
                tick(len(values))
    total_bytes = sum(map(len, values))
    small = values[:config.small_records]
    with ui.phase(f"produce {n:,} records to {parts} partitions", n) as tick:
        ends = produce_all(bootstrap, main_topic, values, parts, tick)
    with ui.phase(f"produce {len(small):,} records (memory phase)", len(small)) as tick:
        small_ends = produce_all(bootstrap, small_topic, small, parts, tick)
    phases: dict[str, PhaseResult] = {}
    with ui.phase("consume ceiling", n) as tick:
        phases["consume_ceiling"] = ceilings.consume_ceiling(bootstrap, main_topic, ends, f"bench-{run_id}-consume",
                                                             tick)
    with ui.phase("fetch the values (untimed)", n) as tick:
        fetched = ceilings.fetch_values(bootstrap, main_topic, ends, f"bench-{run_id}-fetch", tick)
    if fetched != values:
        raise ceilings.BenchError("the values read back differ from those produced (lost, doubled or misplaced)")
    values = fetched  # the decode and sink phases run over the broker's bytes; one copy kept
    del fetched
    with ui.phase("decode ceiling + service decoder", n) as tick:
        phases["decode_ceiling"], phases["service_decoder"] = ceilings.decode_pair(values, main_topic, parts, tick)
    sink_tables = (f"bench_{tag}_ceiling", f"bench_{tag}_oursink")
    tables.extend(sink_tables)
    with ui.phase("sink ceiling + service sink", n) as tick:
        phases["sink_ceiling"], phases["service_sink"] = ceilings.sink_pair(
            database_url, values, main_topic, parts, sink_tables, tick)
    spec = service.ServiceSpec("service", "service (python -m consumer run)", main_topic, f"bench-{run_id}-service",
                               db.named(database_url, f"bench-{tag}-service"), f"bench_{tag}_service")
    tables.append(spec.table)
    with ui.phase("service drains the backlog", n) as tick:
        phases["service"] = service.drain(spec, bootstrap, ends, total_bytes, workdir, tick, broker_pid)
    _check_rows(database_url, spec.table, distinct_events(n), phases["service"])
    # The same drain by two worker processes: what a pod with two cores gets, the database still in.
    pg_workers_spec = service.ServiceSpec(
        "service_workers_2", "service WORKERS=2, PostgreSQL", main_topic, f"bench-{run_id}-service-workers-2",
        db.named(database_url, f"bench-{tag}-service-workers-2"), f"bench_{tag}_service_workers_2",
        env={"WORKERS": "2"})
    tables.append(pg_workers_spec.table)
    with ui.phase("service WORKERS=2 drains the backlog", n) as tick:
        phases["service_workers_2"] = service.drain(pg_workers_spec, bootstrap, ends, total_bytes, workdir, tick,
                                                    broker_pid)
    _check_rows(database_url, pg_workers_spec.table, distinct_events(n), phases["service_workers_2"])
    small_spec = service.ServiceSpec("memory_small", f"service, {len(small):,}-record backlog (memory)",
                                     small_topic, f"bench-{run_id}-small", db.named(database_url, f"bench-{tag}-small"),
                                     f"bench_{tag}_small")
    tables.append(small_spec.table)
    with ui.phase(f"service drains {len(small):,} (memory)", len(small)) as tick:
        phases["memory_small"] = service.drain(small_spec, bootstrap, small_ends, sum(map(len, small)), workdir,
                                               tick)
    _check_rows(database_url, small_spec.table, distinct_events(len(small)), phases["memory_small"])
    rate = phases["service"].rps / 2
    latency_spec = service.ServiceSpec("latency", "service at half load (latency)", latency_topic,
                                       f"bench-{run_id}-latency", database_url, f"bench_{tag}_latency")
    tables.append(latency_spec.table)
    produced = max(1, int(rate * config.latency_s))
    with ui.phase(f"latency: {rate:,.0f} records/s for {config.latency_s:.0f}s", produced) as tick:
        measured = service.latency(latency_spec, bootstrap, parts, values, rate, config.latency_s, workdir, tick)
    phases["latency"] = measured.phase
    for workers in (1, 2):
        name = f"workers_{workers}"
        workers_spec = service.ServiceSpec(
            name, f"service WORKERS={workers}, SQLite in memory", main_topic, f"bench-{run_id}-{name}",
            _SQLITE_MEMORY_URL.format(name=name), "events", env={"WORKERS": str(workers)})
        with ui.phase(f"service WORKERS={workers} (database out)", n) as tick:
            phases[name] = service.drain(workers_spec, bootstrap, ends, total_bytes, workdir, tick)
    latency = {**report.latency_summary(measured.latencies_ms), "rate": round(rate, 1),
               "produce_seconds": config.latency_s, "samples": measured.latencies_ms}
    for phase in phases.values():
        phase.extra.setdefault("produced", sum(ends.values()) if phase.name != "memory_small" else len(small))
    phases["service"].extra["distinct_keys"] = distinct_events(n)
    return phases, latency


def _check_rows(url: str, table: str, distinct: int, phase: PhaseResult) -> None:
    """The service's table must hold one row per distinct event id: no loss, no double write."""
    with psycopg.connect(db.libpq_url(url)) as conn:
        rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    count = int(rows[0]) if rows else 0
    phase.extra["rows"] = count
    phase.extra["distinct_keys"] = distinct
    if count != distinct:
        raise ceilings.BenchError(f"{phase.name}: table {table} holds {count} rows, expected {distinct}")


def _server_version(url: str) -> str:
    with psycopg.connect(db.libpq_url(url), connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def _drop_tables(url: str, tables: list[str]) -> None:
    with suppress(psycopg.Error), psycopg.connect(db.libpq_url(url), autocommit=True) as conn:
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def _service_defaults() -> dict[str, Any]:
    names = ("batch_max_records", "batch_max_bytes", "batch_max_wait_ms", "kafka_session_timeout_ms",
             "sink_write_mode")
    return {name.upper(): str(Settings.model_fields[name].default) for name in names}


def _inherited_service_env() -> dict[str, str]:
    """Service settings the benchmark's own environment passes on to every service run (secrets masked)."""
    known = {name.upper() for name in Settings.model_fields} | {"WORKERS"}
    return {name: ("***" if "PASSWORD" in name else value) for name, value in os.environ.items()
            if name in known or name.startswith("KAFKA_EXTRA__")}


if __name__ == "__main__":  # pragma: no cover - `python -m ops.bench` goes through __main__.py
    sys.exit(main())
