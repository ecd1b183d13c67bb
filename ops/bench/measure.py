"""What each phase reports, and how processes are measured (CPU seconds, peak RSS) with psutil."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil

MB = 1_000_000
MIB = 1024 * 1024
_SERIES_POINTS = 120  # points kept per variant in the JSON: enough for the chart, small to commit

Progress = Callable[[int], None]


@dataclass(slots=True)
class PhaseResult:
    """One measured phase: `seconds` is the timed part only; `series` is (elapsed s, records done)."""

    name: str
    label: str
    records: int
    value_bytes: int
    seconds: float
    cpu_seconds: float | None = None
    db_cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    broker_cpu_seconds: float | None = None  # the bundled broker's process, during the timed part
    series: list[tuple[float, int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mbps(self) -> float:
        return self.value_bytes / MB / self.seconds if self.seconds > 0 else 0.0

    def cpu_per_million(self) -> float | None:
        if self.cpu_seconds is None or not self.records:
            return None
        return self.cpu_seconds * 1_000_000 / self.records

    def db_cpu_per_million(self) -> float | None:
        if self.db_cpu_seconds is None or not self.records:
            return None
        return self.db_cpu_seconds * 1_000_000 / self.records

    def broker_cpu_per_million(self) -> float | None:
        if self.broker_cpu_seconds is None or not self.records:
            return None
        return self.broker_cpu_seconds * 1_000_000 / self.records

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "records": self.records,
            "value_bytes": self.value_bytes,
            "seconds": round(self.seconds, 4),
            "records_per_s": round(self.rps, 1),
            "mb_per_s": round(self.mbps, 3),
            "cpu_seconds": _round(self.cpu_seconds),
            "cpu_s_per_million": _round(self.cpu_per_million()),
            "db_cpu_seconds": _round(self.db_cpu_seconds),
            "db_cpu_s_per_million": _round(self.db_cpu_per_million()),
            "broker_cpu_seconds": _round(self.broker_cpu_seconds),
            "broker_cpu_s_per_million": _round(self.broker_cpu_per_million()),
            "peak_rss_bytes": self.peak_rss_bytes,
            "series": [[round(t, 3), n] for t, n in downsample(self.series, _SERIES_POINTS)],
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def downsample(series: list[tuple[float, int]], points: int) -> list[tuple[float, int]]:
    if len(series) <= points:
        return list(series)
    step = len(series) / points
    kept = [series[int(i * step)] for i in range(points)]
    return [*kept, series[-1]] if kept[-1] != series[-1] else kept


def rate_series(series: list[tuple[float, int]], window_s: float) -> list[tuple[float, float]]:
    """Records/s over consecutive windows of about `window_s`, at each window's end."""
    out: list[tuple[float, float]] = []
    if not series:
        return out
    start_t, start_n = 0.0, 0
    for t, n in series:
        if t - start_t >= window_s:
            out.append((t, (n - start_n) / (t - start_t)))
            start_t, start_n = t, n
    return out


class Stopwatch:
    """Accumulates the timed parts of a phase (wall and this process's CPU), leaving preparation out."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.records = 0
        self.series: list[tuple[float, int]] = []
        self._wall0 = 0.0
        self._cpu0 = 0.0

    def __enter__(self) -> Self:
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._wall0
        self.cpu_seconds += time.process_time() - self._cpu0

    def count(self, records: int) -> None:
        self.records += records
        self.series.append((self.seconds, self.records))


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The process and its live descendants (WORKERS runs children)."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_sample(processes: list[psutil.Process]) -> tuple[int, float]:
    """(summed RSS bytes, summed CPU seconds) of processes still alive."""
    rss, cpu = 0, 0.0
    for p in processes:
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss, cpu


def high_water_rss(pid: int) -> int | None:
    """The kernel's own peak RSS of `pid` (VmHWM), which catches peaks between samples (Linux only)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
