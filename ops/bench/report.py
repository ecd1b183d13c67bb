"""What the benchmark shows and keeps: one table, the ratios, a JSON file and a PNG chart beside it, and a
last line a script can parse (`bench: service/ceiling=... service_rps=... ...`)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from consumer.cpus import usable_cpus
from ops.bench.config import REPO
from ops.bench.measure import MIB, PhaseResult, rate_series

LAST_LINE_FIELDS = ("service/ceiling", "service_rps", "consume_rps", "sink_rps", "p99_ms", "rss_ratio")
_QUANTILE_POINTS = 100  # latency quantiles kept in the JSON: the distribution, small enough to commit


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    step = max(1, len(ordered) // _QUANTILE_POINTS)
    return {
        "records": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 1),
        "p90_ms": round(percentile(ordered, 90), 1),
        "p99_ms": round(percentile(ordered, 99), 1),
        "max_ms": round(ordered[-1], 1) if ordered else math.nan,
        "min_ms": round(ordered[0], 1) if ordered else math.nan,
        "quantiles_ms": [round(v, 1) for v in ordered[::step]] + ([round(ordered[-1], 1)] if ordered else []),
    }


def ratios(phases: Mapping[str, PhaseResult], latency: Mapping[str, Any], batch_max_wait_ms: int) -> dict[str, Any]:
    service = phases["service"].rps
    consume, decode, sink = (phases[n].rps for n in ("consume_ceiling", "decode_ceiling", "sink_ceiling"))
    limiting = min(("consume", consume), ("sink", sink), key=lambda pair: pair[1])
    ceilings = {"consume": consume, "decode": decode, "sink": sink}
    workers1, workers2 = phases["workers_1"].rps, phases["workers_2"].rps
    latency_target = batch_max_wait_ms + 300
    return {
        "service/ceiling": _ratio(service, limiting[1]),
        "limiting_ceiling": limiting[0],
        "lowest_ceiling_incl_decode": min(ceilings, key=lambda name: ceilings[name]),
        "service/consume_ceiling": _ratio(service, consume),
        "service/decode_ceiling": _ratio(service, decode),
        "service/sink_ceiling": _ratio(service, sink),
        "service_workers_2/ceiling": _ratio(phases["service_workers_2"].rps, limiting[1]),
        "service_decoder/decode_ceiling": _ratio(phases["service_decoder"].rps, decode),
        "service_sink/sink_ceiling": _ratio(phases["service_sink"].rps, sink),
        "workers_2/workers_1": _ratio(workers2, workers1),
        "rss_ratio": _ratio(phases["service"].peak_rss_bytes or 0, phases["memory_small"].peak_rss_bytes or 0),
        **cpu_budget(phases, limiting[1]),
        "p99_ms": latency["p99_ms"],
        "p99_target_ms": latency_target,
        "p99/target": _ratio(latency["p99_ms"], latency_target),
    }


def cpu_budget(phases: Mapping[str, PhaseResult], ceiling_rps: float) -> dict[str, Any]:
    """What the CPU seconds per million records allow on this machine's cores: the single process at one core
    (its Python work holds the GIL), WORKERS=2 with its database and broker on all of them, and the CPU per
    million records that 0.8 x the ceiling would leave for everything."""
    cores = usable_cpus()
    service, workers = phases["service"].cpu_per_million(), phases["service_workers_2"]
    parts = [workers.cpu_per_million(), workers.db_cpu_per_million(), workers.broker_cpu_per_million()]
    figures: dict[str, Any] = {"cores": cores}
    if service:
        figures["service_max_rps_at_one_core"] = round(1e6 / service)
    together = [part for part in parts if part]
    if len(together) == len(parts):
        figures["workers_2_cpu_s_per_million_with_db_and_broker"] = round(sum(together), 1)
        figures["workers_2_max_rps_on_all_cores"] = round(cores * 1e6 / sum(together))
    if ceiling_rps:
        figures["cpu_s_per_million_allowed_at_0.8_ceiling"] = round(cores * 1e6 / (0.8 * ceiling_rps), 1)
    return figures


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


def last_line(phases: Mapping[str, PhaseResult], figures: Mapping[str, Any]) -> str:
    return (
        f"bench: service/ceiling={figures['service/ceiling']:.2f} service_rps={phases['service'].rps:.0f} "
        f"consume_rps={phases['consume_ceiling'].rps:.0f} sink_rps={phases['sink_ceiling'].rps:.0f} "
        f"p99_ms={figures['p99_ms']:.0f} rss_ratio={figures['rss_ratio']:.2f}"
    )


def parse_last_line(line: str) -> dict[str, float]:
    """The inverse of `last_line`, for scripts and the smoke test; raises ValueError on anything else."""
    prefix = "bench: "
    if not line.startswith(prefix):
        raise ValueError(f"not a bench line: {line!r}")
    fields = dict(part.split("=", 1) for part in line[len(prefix):].split())
    if tuple(fields) != LAST_LINE_FIELDS:
        raise ValueError(f"fields {tuple(fields)} are not {LAST_LINE_FIELDS}")
    return {name: float(value) for name, value in fields.items()}


def table(phases: Sequence[PhaseResult]) -> Table:
    out = Table(title="make bench", title_justify="left")
    for name, justify in (("phase", "left"), ("records", "right"), ("records/s", "right"), ("MB/s", "right"),
                          ("CPU s / M rec", "right"), ("DB CPU s / M rec", "right"), ("broker CPU s / M rec", "right"),
                          ("peak RSS MiB", "right"),
                          ("group join s", "right")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for phase in phases:
        out.add_row(
            phase.label, f"{phase.records:,}", f"{phase.rps:,.0f}", f"{phase.mbps:.1f}",
            _maybe(phase.cpu_per_million(), "{:.1f}"), _maybe(phase.db_cpu_per_million(), "{:.1f}"),
            _maybe(phase.broker_cpu_per_million(), "{:.1f}"),
            _maybe(phase.peak_rss_bytes / MIB if phase.peak_rss_bytes else None, "{:.0f}"),
            _maybe(phase.extra.get("group_join_s"), "{:.1f}"),
        )
    return out


def markdown_table(phases: Sequence[PhaseResult]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    lines = [("| phase | records | records/s | MB/s | CPU s / M rec | DB CPU s / M rec | broker CPU s / M rec | "
              "peak RSS MiB |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in phases:
        lines.append(
            f"| {p.label} | {p.records:,} | {p.rps:,.0f} | {p.mbps:.1f} | {_maybe(p.cpu_per_million(), '{:.1f}')} | "
            f"{_maybe(p.db_cpu_per_million(), '{:.1f}')} | {_maybe(p.broker_cpu_per_million(), '{:.1f}')} | "
            f"{_maybe(p.peak_rss_bytes / MIB if p.peak_rss_bytes else None, '{:.0f}')} |"
        )
    return "\n".join(lines)


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def print_ratios(console: Console, figures: Mapping[str, Any]) -> None:
    console.print("ratios:")
    for name, value in figures.items():
        console.print(f"  {name:<34} {value}")


# --- environment --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": list(os.getloadavg()),
    }


def versions(broker: str, server_version: str) -> dict[str, Any]:
    import confluent_kafka
    import fastavro
    import psycopg
    import sqlalchemy

    import consumer

    return {
        "python": platform.python_version(),
        "consumer": consumer.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "consumer")),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "sqlalchemy": sqlalchemy.__version__,
        "postgresql_server": server_version,
        "broker": broker,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except OSError:
        return ""


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    text = json.dumps(document, indent=1, default=str)
    # Lists of numbers (series points, quantiles) on one line each: the file stays small and readable.
    text = re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


# --- chart --------------------------------------------------------------------------------------------------


def chart(path: Path, phases: Mapping[str, PhaseResult], latencies_ms: Sequence[float], latency_target_ms: int,
          title: str) -> None:
    """Records/s over time per variant (left) and the produce-to-commit latency distribution (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, style in (("consume_ceiling", ":"), ("decode_ceiling", ":"), ("sink_ceiling", ":"),
                        ("service", "-"), ("service_workers_2", "-"), ("workers_1", "--"), ("workers_2", "--")):
        phase = phases.get(name)
        if phase is None or not phase.series:
            continue
        # Committed offsets move a batch at a time: windows of several batches show a rate, not the steps.
        points = rate_series(phase.series, max(1.0, phase.seconds / 40))
        if points:
            left.step([0.0, *(t for t, _ in points)], [points[0][1], *(r for _, r in points)], style,
                      where="pre", label=phase.label)
    left.set_xlabel("seconds since the first record (timed part)")
    left.set_ylabel("records/s")
    left.set_title("throughput over time")
    left.set_yscale("log")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    if latencies_ms:
        ordered = sorted(latencies_ms)
        right.hist(ordered, bins=60, color="tab:blue", alpha=0.8)
        for q, colour in ((50, "tab:green"), (99, "tab:red")):
            value = percentile(ordered, q)
            right.axvline(value, color=colour, linestyle="--", label=f"p{q} {value:.0f} ms")
        right.axvline(ordered[-1], color="black", linestyle=":", label=f"max {ordered[-1]:.0f} ms")
        right.axvline(latency_target_ms, color="tab:orange", label=f"target p99 ≤ {latency_target_ms} ms")
        right.legend(fontsize=8)
    right.set_xlabel("produce-to-commit latency, ms")
    right.set_ylabel("records")
    right.set_title("latency at half the measured throughput")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
