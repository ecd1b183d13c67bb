"""The service as operators run it, `python -m consumer run` in a subprocess, measured from outside:
its /readyz (group joined), its /metrics (outcome counts), the group's committed offsets on the broker
(progress and the end), and psutil (CPU seconds and peak RSS of the process and any children).
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from confluent_kafka import KafkaException, Producer
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.ceilings import BenchError
from ops.bench.config import SCHEMA_FILE
from ops.bench.db import backend_cpu_seconds
from ops.bench.events import IDEMPOTENCY_KEY
from ops.bench.kafka import CommittedOffsets, Delivered, EndOffsets
from ops.bench.measure import PhaseResult, Progress, high_water_rss, tree, tree_sample
from ops.testbed.net import free_port

_WATCH_INTERVAL_S = 0.05  # committed offsets and process stats: the resolution of every service timing
_SCRAPE_EVERY_S = 2.0  # /metrics as a Prometheus would scrape it (the service serves metrics throughout)
_READY_TIMEOUT_S = 120.0  # Tansu (BENCH_BROKER=tansu) answers JoinGroup after half the session timeout
_STALL_S = 120.0
_STOP_TIMEOUT_S = 60.0
_HTTP_TIMEOUT_S = 2.0
_LOG_TAIL_CHARS = 3000


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One run of the service: what it reads, where it writes, and settings beyond the defaults."""

    name: str
    label: str
    topic: str
    group: str
    sink_url: str
    table: str
    env: Mapping[str, str] = field(default_factory=dict)

    def environment(self, bootstrap: str, port: int) -> dict[str, str]:
        """The caller's environment plus what this run needs: default settings except the idempotency key
        (the same `event_id` the sink ceiling conflicts on) and the wiring (broker, topic, group, table)."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CONSUMER_TOPICS": self.topic,
            "CONSUMER_GROUP_ID": self.group,
            "SCHEMA_FILE": str(SCHEMA_FILE),
            "SINK_URL": self.sink_url,
            "SINK_TABLE": self.table,
            "IDEMPOTENCY_KEY": IDEMPOTENCY_KEY,
            "METRICS_PORT": str(port),
            **self.env,
        }


class ServiceProcess:
    """A started service, its log in `workdir/<name>.log`, and what has been observed of it (with the
    bundled broker's CPU beside it when `broker_pid` is given)."""

    def __init__(
        self, spec: ServiceSpec, bootstrap: str, partitions: int, workdir: Path, broker_pid: int | None = None
    ) -> None:
        self.spec = spec
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{spec.name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"], cwd=workdir, env=spec.environment(bootstrap, self.port),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._ps = psutil.Process(self.process.pid)
        self.offsets = CommittedOffsets(bootstrap, spec.group, spec.topic, partitions)
        self.peak_rss = 0
        self.ready_at: float | None = None
        self.cpu_at_ready: float | None = None
        self._broker = psutil.Process(broker_pid) if broker_pid is not None else None
        self.broker_cpu: float | None = None  # at the last sample
        self.broker_cpu_at_start: float | None = None  # when the drain's clock started (at /readyz)
        self.last_metrics: dict[str, float] = {}
        self._last_scrape = 0.0

    # --- observing ------------------------------------------------------------------------------------
    def sample(self) -> float:
        """RSS and CPU of the process tree now; returns the CPU seconds so far."""
        rss, cpu = tree_sample(tree(self._ps))
        self.peak_rss = max(self.peak_rss, rss)
        if self._broker is not None:
            self.broker_cpu = tree_sample([self._broker])[1]
        return cpu

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.spec.name}: service exited with {code}\n{self.log_tail()}")

    def poll_ready(self) -> bool:
        """Whether /readyz answers 200 (the group is joined); remembers when it first did."""
        if self.ready_at is None and self._get("/readyz")[0] == 200:
            self.ready_at = time.monotonic()
            self.cpu_at_ready = self.sample()
            self.broker_cpu_at_start = self.broker_cpu
        return self.ready_at is not None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self.poll_ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.spec.name}: /readyz not 200 after {_READY_TIMEOUT_S:.0f}s\n{self.log_tail()}")
            time.sleep(_WATCH_INTERVAL_S)

    def scrape(self, force: bool = False) -> None:
        """Read /metrics (as a Prometheus would), keeping the counters the report needs."""
        now = time.monotonic()
        if not force and now - self._last_scrape < _SCRAPE_EVERY_S:
            return
        self._last_scrape = now
        status, body = self._get("/metrics")
        if status != 200:
            return
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "consumer_records_total":
                    outcome = sample.labels.get("outcome", "")
                    totals[outcome] = totals.get(outcome, 0.0) + sample.value
                elif sample.name == "consumer_batches_total":
                    key = f"batches_{sample.labels.get('outcome', '')}"
                    totals[key] = totals.get(key, 0.0) + sample.value
        self.last_metrics = totals

    def _get(self, path: str) -> tuple[int | None, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=_HTTP_TIMEOUT_S) as answer:
                return int(answer.status), answer.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, ""
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None, ""

    def log_tail(self) -> str:
        self._log.flush()
        return f"--- {self.log_path} (tail) ---\n" + self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]

    # --- stopping ---------------------------------------------------------------------------------------
    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code (the kernel's peak RSS is read first)."""
        hwm = high_water_rss(self.process.pid)
        if hwm is not None and not self._has_children():
            self.peak_rss = max(self.peak_rss, hwm)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        self.offsets.close()
        return code

    def _has_children(self) -> bool:
        try:
            return bool(self._ps.children())
        except psutil.NoSuchProcess:
            return False


def drain(
    spec: ServiceSpec, bootstrap: str, ends: EndOffsets, value_bytes: int, workdir: Path, progress: Progress,
    broker_pid: int | None = None,
) -> PhaseResult:
    """Start the service on a backlog and time it from its first record (the group joined, /readyz 200)
    until the committed offsets equal the end offsets; the join is reported apart."""
    service = ServiceProcess(spec, bootstrap, len(ends), workdir, broker_pid)
    expected = sum(ends.values())
    series: list[tuple[float, int]] = []
    try:
        committed, first_at, base, cpu0, done_at, cpu1 = _watch_until(service, ends, series, progress)
        broker_cpu = (service.broker_cpu - service.broker_cpu_at_start
                      if service.broker_cpu is not None and service.broker_cpu_at_start is not None else None)
        db = backend_cpu_seconds(spec.sink_url) if spec.sink_url.startswith("postgres") else None
        service.scrape(force=True)
    finally:
        code = service.stop()
    if code != 0:
        raise BenchError(f"{spec.name}: service stopped with exit code {code}\n{service.log_tail()}")
    join_s = (service.ready_at or first_at) - service.started
    counted = expected - base
    return PhaseResult(
        spec.name, spec.label, counted, value_bytes * counted // max(1, expected), done_at - first_at, cpu1 - cpu0,
        db, peak_rss_bytes=service.peak_rss, broker_cpu_seconds=broker_cpu,
        series=[(t - first_at, n - base) for t, n in series],
        extra={"group_join_s": round(join_s, 3), "committed": committed, "end_offsets": dict(ends),
               "exit_code": code, "metrics": service.last_metrics, "settings": dict(spec.env)},
    )


def _watch_until(
    service: ServiceProcess, ends: EndOffsets, series: list[tuple[float, int]], progress: Progress
) -> tuple[dict[int, int], float, int, float, float, float]:
    """Watch until every partition's committed offset reaches its end offset; returns (committed, first
    record time, records committed when the clock started, CPU then, end time, CPU at the end)."""
    first_at: float | None = None
    base, cpu0 = 0, 0.0
    last_total, last_change = -1, time.monotonic()
    while True:
        service.check_alive()
        ready = service.poll_ready()
        committed = service.offsets.read()
        now = time.monotonic()
        cpu = service.sample()
        total = sum(min(committed.get(p, 0), end) for p, end in ends.items())
        if first_at is None and ready:
            first_at, cpu0 = service.ready_at or now, service.cpu_at_ready or cpu
        if first_at is None and total > 0:  # committed before /readyz was seen: start the clock here
            first_at, base, cpu0 = now, total, cpu
            service.broker_cpu_at_start = service.broker_cpu
        if first_at is not None:
            series.append((now, total))
        if total != last_total:
            last_total, last_change = total, now
            progress(total)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            assert first_at is not None
            return committed, first_at, base, cpu0, now, cpu
        if now - last_change > _STALL_S:
            raise BenchError(f"{service.spec.name}: committed offsets stuck at {committed} (ends {ends}) for "
                             f"{_STALL_S:.0f}s\n{service.log_tail()}")
        service.scrape()
        time.sleep(_WATCH_INTERVAL_S)


# --- latency ---------------------------------------------------------------------------------------------

_LATENCY_POLL_S = 0.02  # how often committed offsets are read: the latency figures' resolution
_PRODUCE_TICK_S = 0.005
_SAMPLE_EVERY_TICKS = 20


@dataclass(slots=True)
class LatencyResult:
    phase: PhaseResult
    latencies_ms: list[float]
    rate: float


class _CommitWatcher(threading.Thread):
    """Reads the group's committed offsets every 20 ms, keeping (wall ms when the answer came, offsets)."""

    def __init__(self, offsets: CommittedOffsets) -> None:
        super().__init__(name="commit-watcher", daemon=True)
        self._offsets = offsets
        self.observations: list[tuple[float, dict[int, int]]] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                committed = self._offsets.read()
                self.observations.append((time.time() * 1000, committed))
                self._stop_event.wait(_LATENCY_POLL_S)
        except KafkaException as exc:  # handed to the main thread, which raises it
            self.error = exc

    def latest(self) -> dict[int, int]:
        return self.observations[-1][1] if self.observations else {}

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def latency(
    spec: ServiceSpec, bootstrap: str, partitions: int, values: Sequence[bytes], rate: float, seconds: float,
    workdir: Path, progress: Progress,
) -> LatencyResult:
    """The service under a steady produce rate: per record, its timestamp to the first committed-offset
    reading that covers it (an upper bound, 20 ms resolution), matched by (partition, offset) from the
    producer's delivery reports."""
    service = ServiceProcess(spec, bootstrap, partitions, workdir)
    watcher = _CommitWatcher(CommittedOffsets(bootstrap, spec.group, spec.topic, partitions))
    delivered = Delivered(partitions, keep_timestamps=True)
    total = max(1, int(rate * seconds))
    try:
        service.wait_ready()
        cpu0 = service.sample()
        watcher.start()
        started = time.monotonic()
        _produce_steadily(bootstrap, spec.topic, values, partitions, rate, total, delivered, service, progress)
        ends = dict(delivered.end_offsets)
        deadline = time.monotonic() + _STALL_S
        while not all(watcher.latest().get(p, 0) >= end for p, end in ends.items()):
            service.check_alive()
            service.sample()
            if watcher.error is not None:
                raise BenchError(f"latency: reading committed offsets failed: {watcher.error}")
            if time.monotonic() > deadline:
                raise BenchError(f"latency: committed {watcher.latest()} never reached {ends}\n{service.log_tail()}")
            time.sleep(_WATCH_INTERVAL_S)
        elapsed = time.monotonic() - started
        cpu1 = service.sample()
        service.scrape(force=True)
    finally:
        watcher.stop()
        code = service.stop()
    if code != 0:
        raise BenchError(f"{spec.name}: service stopped with exit code {code}\n{service.log_tail()}")
    assert delivered.timestamps is not None
    latencies = _match(watcher.observations, delivered.timestamps)
    if len(latencies) != total:
        raise BenchError(f"latency: matched {len(latencies)} of {total} records to a commit")
    phase = PhaseResult(
        spec.name, spec.label, total, sum(len(values[i % len(values)]) for i in range(total)), elapsed,
        cpu1 - cpu0, peak_rss_bytes=service.peak_rss,
        series=_commit_series(watcher.observations, started_wall_ms=watcher.observations[0][0]),
        extra={"target_rate": round(rate, 1), "produce_seconds": seconds, "exit_code": code,
               "metrics": service.last_metrics, "poll_resolution_ms": _LATENCY_POLL_S * 1000,
               "group_join_s": round((service.ready_at or started) - service.started, 3)},
    )
    return LatencyResult(phase, latencies, rate)


def _produce_steadily(
    bootstrap: str, topic: str, values: Sequence[bytes], partitions: int, rate: float, total: int,
    delivered: Delivered, service: ServiceProcess, progress: Progress,
) -> None:
    """`rate` records/s, paced every 5 ms; linger 5 ms so the producer adds little of its own latency."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "log_level": 3})
    start = time.monotonic()
    sent = ticks = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            producer.produce(topic, values[sent % len(values)], partition=sent % partitions, on_delivery=delivered)
            sent += 1
        producer.poll(0)
        ticks += 1
        if ticks % _SAMPLE_EVERY_TICKS == 0:  # psutil costs CPU the service would otherwise have
            service.sample()
            progress(sent)
        time.sleep(_PRODUCE_TICK_S)
    if producer.flush(60) or delivered.failures or delivered.count != total:
        raise BenchError(f"latency: {delivered.count} of {total} delivered, failures {delivered.failures[:3]}")


def _match(observations: list[tuple[float, dict[int, int]]], timestamps: dict[int, dict[int, int]]) -> list[float]:
    """Latency of every record: the first observation whose committed offset passes it, minus its timestamp."""
    latencies: list[float] = []
    for partition, by_offset in timestamps.items():
        offsets = sorted(by_offset)
        seen = 0  # records of this partition already matched
        for at_ms, committed in observations:
            upto = bisect.bisect_left(offsets, committed.get(partition, 0))
            for offset in offsets[seen:upto]:
                latencies.append(at_ms - by_offset[offset])
            seen = max(seen, upto)
    return latencies


def _commit_series(observations: list[tuple[float, dict[int, int]]], started_wall_ms: float) -> list[tuple[float, int]]:
    return [((at - started_wall_ms) / 1000, sum(c.values())) for at, c in observations]


def outcome_counts(metrics: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in metrics.items()}
