"""The benchmark's settings, from the environment; a bad one exits 2 with one line naming it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas" / "event.avsc"
BROKERS = ("kafka", "tansu")  # BENCH_BROKER: Apache Kafka (ops/testbed) by default, or the bundled Tansu
DEFAULT_RESULTS_DIR = REPO / "ops" / "bench" / "results"
DEFAULT_RECORDS = 1_000_000
PARTITIONS = 6
# The full run holds the latency phase this long; smaller runs shrink it in proportion (never below the
# floor, so even the smoke run sees a few batches close on time and on size).
FULL_LATENCY_S = 30.0
MIN_LATENCY_S = 4.0
# The memory phase compares the full backlog with one this many times smaller.
MEMORY_SHRINK = 10


class BenchConfigError(Exception):
    """A bad BENCH_* setting; the message names it."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    records: int
    database_url: str | None  # None: a private PostgreSQL cluster made for the run (ops/testbed)
    bootstrap: str | None  # None: start the broker BENCH_BROKER names
    broker: str
    results_dir: Path
    latency_s: float
    partitions: int = PARTITIONS

    @property
    def small_records(self) -> int:
        return max(1, self.records // MEMORY_SHRINK)

    def as_dict(self) -> dict[str, object]:
        return {
            "BENCH_RECORDS": self.records,
            "BENCH_DATABASE_URL": _masked(self.database_url) if self.database_url else "private PostgreSQL",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap or f"started by the bench ({self.broker})",
            "BENCH_LATENCY_S": self.latency_s,
            "partitions": self.partitions,
            "memory_small_records": self.small_records,
        }


def load_config(env: Mapping[str, str] | None = None) -> BenchConfig:
    env = os.environ if env is None else env
    records = _positive_int(env, "BENCH_RECORDS", DEFAULT_RECORDS)
    default_latency = max(MIN_LATENCY_S, FULL_LATENCY_S * min(1.0, records / DEFAULT_RECORDS))
    database_url = env.get("BENCH_DATABASE_URL") or None
    if database_url:
        _masked(database_url)  # validates it
    broker = (env.get("BENCH_BROKER") or BROKERS[0]).strip().lower()
    if broker not in BROKERS:
        raise BenchConfigError(f"BENCH_BROKER: one of {', '.join(BROKERS)} (got {env['BENCH_BROKER']!r})")
    return BenchConfig(
        records=records,
        database_url=database_url,
        bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        broker=broker,
        results_dir=Path(env.get("BENCH_RESULTS_DIR") or DEFAULT_RESULTS_DIR),
        latency_s=_positive_float(env, "BENCH_LATENCY_S", default_latency),
    )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BenchConfigError(f"{name}: not an integer (got {env[name]!r})") from None
    if value < 1:
        raise BenchConfigError(f"{name}: must be at least 1 (got {env[name]!r})")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BenchConfigError(f"{name}: not a number (got {raw!r})") from None
    if not value > 0:
        raise BenchConfigError(f"{name}: must be positive (got {raw!r})")
    return value


def _masked(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        raise BenchConfigError(f"BENCH_DATABASE_URL: not a database URL (got {url!r})") from None
