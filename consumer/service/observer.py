"""RunnerObserver: what the runner reports as it goes, one method per event, so its control flow holds no
metric, status, health or log call. consumer.observability.runner_events.RunnerEvents is the service's.

Every method is called on the polling thread, per turn or per batch, never per record; an observer must
neither block nor raise. Metric names, label values and log messages belong to the implementation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from consumer.errors import GuardTrippedError, PermanentError, TransientError
from consumer.observability.lag import LagInputs
from consumer.observability.metrics import Dependency
from consumer.observability.runner_events import BreakerReading
from consumer.records import Batch, BatchResult, CommitOutcome, TopicPartition


class RunnerObserver(Protocol):
    # --- the loop ----------------------------------------------------------------------------------
    def polled(self, view: LagInputs) -> None:
        """A turn polled: the loop is alive. Lag is refreshed from `view` when it is due."""

    def waited_for_sink(self) -> None:
        """A turn waited on the write in flight instead of polling: the loop is alive, on purpose."""

    def partitions_paused(self, paused: Collection[TopicPartition]) -> None:
        """The set of paused partitions changed; `paused` is all of them now."""

    # --- batches -----------------------------------------------------------------------------------
    def breakers_changed(self, breakers: Mapping[Dependency, BreakerReading]) -> None:
        """At start and after every batch attempt: each dependency's circuit breaker as it is now."""

    def retry_scheduled(
        self, batch: Batch, error: TransientError, dependency: Dependency, delay_s: float, failures: int
    ) -> None:
        """An attempt at `batch` failed transiently on `dependency`; it goes again after `delay_s`.
        `failures` counts the attempts failed in a row: 1 starts an incident."""

    def batch_failed(self, error: PermanentError) -> None:
        """A batch (or its commit) failed for good; the run ends with `error`, nothing of it committed."""

    def guard_tripped(self, batch: Batch, error: GuardTrippedError, dropped: int) -> None:
        """The dead-letter guard refused `batch`: the runner holds from now on; `dropped` records of the
        batch and of the open one were let go uncommitted."""

    def batch_size_adapted(self, max_records: int) -> None:
        """BATCH_TARGET_LATENCY_MS set the record count batches close at."""

    def batch_through(self, result: BatchResult) -> None:
        """A batch went through (written, its dead letters acknowledged); its offsets go out next. Its
        outcomes count from here, so they are counted before the broker shows the commit."""

    def batch_committed(self, result: BatchResult, commit_seconds: float) -> None:
        """The commit carrying a batch that went through was answered (taken or refused) or given up on."""

    def commit_refused(self, outcome: CommitOutcome) -> None:
        """The broker refused some offsets; they stay pending (replayed harmlessly if the partition moved)."""

    def offsets_committed(self, offsets: Mapping[TopicPartition, int], view: LagInputs) -> None:
        """The broker took these offsets; lag is refreshed from `view`."""

    # --- rebalances (inside the source's calls) ------------------------------------------------------
    def partitions_assigned(self, partitions: Sequence[TopicPartition], assigned: Collection[TopicPartition]) -> None:
        """`partitions` joined the assignment; `assigned` is all of it now."""

    def partitions_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """A revoke began; what is in hand for them is finished next, then they are released."""

    def revoke_left_uncommitted(self) -> None:
        """A revoke could not finish what was in hand in time; the partitions' next owner replays it."""

    def partitions_lost(self, partitions: Sequence[TopicPartition], dropped: int) -> None:
        """`partitions` were lost; `dropped` records of the open batch went with them, uncommitted."""

    def partitions_released(self, partitions: Sequence[TopicPartition], assigned: Collection[TopicPartition]) -> None:
        """Revoked or lost partitions are gone; `assigned` is what remains."""

    # --- stopping ----------------------------------------------------------------------------------
    def stop_requested(self) -> None:
        """The stop was seen: from now on the service is shutting down."""

    def finishing(self, batches: int) -> None:
        """The stop finishes `batches` batches in hand before it closes the source."""

    def stop_timed_out(self) -> None:
        """The shutdown timeout ran out with records in hand or offsets uncommitted; the source closes next."""

    def stopped(self, held: bool) -> None:
        """The source closed after a clean stop, or one while the dead-letter guard `held`."""
