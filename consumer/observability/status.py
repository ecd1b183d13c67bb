"""StatusBoard: the JSON snapshot behind /status, rebuilt from events the runner reports, and the
periodic INFO summary line (records/s, lag, outcomes) logged from the same numbers.

Each update replaces `HealthState.status` with a new dict, so HTTP threads read a consistent snapshot.
The time-to-drain estimate is the total lag in records over the rate of records handled in the last
minute; it is null while lag is positive and nothing was handled (not draining at all).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from consumer.clock import Clock, SystemClock
from consumer.observability.health import HealthState
from consumer.observability.lag import PartitionLag
from consumer.observability.metrics import BreakerState, Outcome
from consumer.records import BatchResult, TopicPartition
from consumer.secrets import Redactor

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0  # records/s for the drain estimate: smooths batches, still follows a change


@dataclass(slots=True)
class _Totals:
    """Cumulative outcome counts since start; the summary logs the difference between two of these."""

    outcomes: dict[str, int] = field(default_factory=lambda: {outcome.value: 0 for outcome in Outcome})
    batches: int = 0

    def copy(self) -> _Totals:
        return _Totals(dict(self.outcomes), self.batches)


class StatusBoard:
    def __init__(
        self, health: HealthState, version: str, settings: Mapping[str, Any], clock: Clock | None = None,
        summary_interval_s: float = 60.0, dead_letter_topic: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._health = health
        self._redact = redact or Redactor()
        self._clock = clock or SystemClock()
        self._summary_interval_s = summary_interval_s
        self._totals = _Totals()
        self._summarised = _Totals()
        self._started_at = self._clock.monotonic()
        self._next_summary_at = self._started_at + summary_interval_s
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, records) of recent batches
        self._lag = (0, 0.0)
        # Times are wall seconds here; /status shows them as ISO 8601 with their age (health.status_body)
        self._snapshot: dict[str, Any] = {
            "version": version,
            "started_at": self._clock.wall(),
            "dead_letter_topic": dead_letter_topic,
            "assignment": [],
            "lag": {"records": 0, "seconds": 0.0},
            "records_per_second": 0.0,
            "time_to_drain_seconds": 0.0,
            "totals": {"records": dict(self._totals.outcomes), "batches": 0},
            "guard": {"max_ratio": settings.get("DLQ_MAX_RATIO"),
                      "min_records": settings.get("DLQ_GUARD_MIN_RECORDS")},
            "breaker": {},  # per dependency: {"state": "closed" | "half_open" | "open", "since": wall time}
            "last_batch": None,
            "last_commit_at": None,
            "last_error": None,
            "settings": dict(settings),
        }
        self._publish()

    def assignment(self, partitions: Iterable[TopicPartition]) -> None:
        """The assignment changed: keep what is known of partitions still held, list new ones bare."""
        known = {(row["topic"], row["partition"]): row for row in self._snapshot["assignment"]}
        rows = []
        for topic, partition in sorted(partitions):
            rows.append(known.get((topic, partition)) or {
                "topic": topic, "partition": partition, "committed": None, "high_watermark": None,
                "lag_records": None, "lag_seconds": 0.0, "paused": False,
            })
        self._snapshot["assignment"] = rows
        self._publish()

    def committed(self, offsets: Mapping[TopicPartition, int], at: float) -> None:
        self._snapshot["assignment"] = [
            {**row, "committed": offsets[(row["topic"], row["partition"])]}
            if (row["topic"], row["partition"]) in offsets else row
            for row in self._snapshot["assignment"]
        ]
        self._snapshot["last_commit_at"] = at
        self._publish()

    def partitions(self, rows: Iterable[PartitionLag], paused: Collection[TopicPartition]) -> None:
        """Every assigned partition with its committed offset, lag and pause state (each lag refresh);
        logs the periodic summary when it is due."""
        shown = [{**asdict(row), "paused": (row.topic, row.partition) in paused} for row in rows]
        self._snapshot["assignment"] = shown
        self._lag = (sum(row["lag_records"] or 0 for row in shown),
                     max((row["lag_seconds"] for row in shown), default=0.0))
        self._snapshot["lag"] = {"records": self._lag[0], "seconds": self._lag[1]}
        self._refresh_rate()
        self._publish()
        if self._clock.monotonic() >= self._next_summary_at:
            self._log_summary(paused=len(paused))

    def counted(self, result: BatchResult) -> None:
        """A batch's outcomes in the totals, once it went through (its commit is sent, not yet answered)."""
        for counts in result.counts.values():
            for outcome in Outcome:
                self._totals.outcomes[outcome.value] += getattr(counts, outcome.value)
        self._totals.batches += 1
        self._snapshot["totals"] = {"records": dict(self._totals.outcomes), "batches": self._totals.batches}
        self._recent.append((self._clock.monotonic(), len(result.batch)))
        self._refresh_rate()
        self._publish()

    def batch(self, result: BatchResult, commit_seconds: float = 0.0, total_seconds: float = 0.0) -> None:
        """The last batch whose commit was answered (or given up on), with its durations."""
        batch = result.batch
        self._snapshot["last_batch"] = {
            "id": batch.batch_id, "records": len(batch), "bytes": batch.value_bytes,
            "close_reason": batch.close_reason.value, "dead_lettered": result.dead_letters,
            "decode_seconds": round(result.decode_seconds, 6), "sink_seconds": round(result.sink_seconds, 6),
            "commit_seconds": round(commit_seconds, 6), "total_seconds": round(total_seconds, 6),
            "committed_at": self._clock.wall(),
        }
        self._publish()

    def breaker(self, dependency: str, state: BreakerState, since: float) -> None:
        self._snapshot["breaker"] = {**self._snapshot["breaker"], dependency: {"state": state.name.lower(),
                                                                               "since": since}}
        self._publish()

    def error(self, exc: BaseException) -> None:
        # redacted before the cut: the endpoint redacts again, but half a secret would no longer be found
        self._snapshot["last_error"] = {"class": type(exc).__name__, "message": self._redact(str(exc))[:500]}
        self._publish()

    def _refresh_rate(self) -> None:
        now = self._clock.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        span = min(RATE_WINDOW_S, max(now - self._started_at, 1.0))
        rate = sum(n for _, n in self._recent) / span
        self._snapshot["records_per_second"] = round(rate, 3)
        lag = self._lag[0]
        drain = round(lag / rate, 1) if rate > 0 else None  # null: lagging and not draining at all
        self._snapshot["time_to_drain_seconds"] = 0.0 if lag == 0 else drain

    def _log_summary(self, paused: int) -> None:
        now = self._clock.monotonic()
        elapsed = now - (self._next_summary_at - self._summary_interval_s)
        self._next_summary_at = now + self._summary_interval_s
        before, self._summarised = self._summarised, self._totals.copy()
        outcomes = {name: n - before.outcomes[name] for name, n in self._totals.outcomes.items()}
        log.info("summary", extra={
            "interval_s": round(elapsed, 1),
            "records_per_second": round(sum(outcomes.values()) / max(elapsed, 1e-9), 1),
            "batches": self._totals.batches - before.batches,
            **{f"records_{name}": n for name, n in outcomes.items()},
            "lag_records": self._lag[0], "lag_seconds": self._lag[1], "paused_partitions": paused,
            "time_to_drain_s": self._snapshot["time_to_drain_seconds"],
        })

    def _publish(self) -> None:
        self._health.status = dict(self._snapshot)
