"""StatusBoard: the JSON snapshot behind /status, rebuilt from events the runner reports.

Each update replaces `HealthState.status` with a new dict, so HTTP threads read a consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from consumer.breaker import BreakerState
from consumer.health import HealthState
from consumer.records import BatchResult, TopicPartition


class StatusBoard:
    def __init__(self, health: HealthState, version: str, settings: Mapping[str, Any]) -> None:
        self._health = health
        self._committed: dict[str, int] = {}
        self._snapshot: dict[str, Any] = {
            "version": version,
            "assignment": [],
            "breaker": {},  # per dependency: {"state": "closed" | "half_open" | "open", "since": wall time}
            "last_batch": None,
            "last_commit_at": None,
            "last_error": None,
            "settings": dict(settings),
        }
        self._publish()

    def assignment(self, partitions: Iterable[TopicPartition]) -> None:
        names = sorted(f"{t}/{p}" for t, p in partitions)
        self._committed = {name: self._committed[name] for name in names if name in self._committed}
        self._snapshot["assignment"] = [{"partition": name, "committed": self._committed.get(name)}
                                        for name in names]
        self._publish()

    def committed(self, offsets: Mapping[TopicPartition, int], at: float) -> None:
        for (topic, partition), offset in offsets.items():
            self._committed[f"{topic}/{partition}"] = offset
        self._snapshot["assignment"] = [{"partition": row["partition"], "committed": self._committed.get(
            row["partition"])} for row in self._snapshot["assignment"]]
        self._snapshot["last_commit_at"] = at
        self._publish()

    def batch(self, result: BatchResult) -> None:
        batch = result.batch
        self._snapshot["last_batch"] = {
            "id": batch.batch_id, "records": len(batch), "bytes": batch.value_bytes,
            "close_reason": batch.close_reason.value, "dead_lettered": result.dead_letters,
            "decode_seconds": round(result.decode_seconds, 6), "sink_seconds": round(result.sink_seconds, 6),
        }
        self._publish()

    def breaker(self, dependency: str, state: BreakerState, since: float) -> None:
        self._snapshot["breaker"] = {**self._snapshot["breaker"], dependency: {"state": state.name.lower(),
                                                                               "since": since}}
        self._publish()

    def error(self, exc: BaseException) -> None:
        self._snapshot["last_error"] = {"class": type(exc).__name__, "message": str(exc)[:500]}
        self._publish()

    def _publish(self) -> None:
        self._health.status = dict(self._snapshot)
