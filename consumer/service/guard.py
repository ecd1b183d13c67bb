"""DlqGuard: stop dead-lettering when a batch would take the share of dead letters over DLQ_MAX_RATIO."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.errors import GuardTrippedError


@dataclass(frozen=True, slots=True)
class _Judged:
    """A batch the guard let through: its size and the sorted positions of its dead letters in it."""

    size: int
    dead_positions: Sequence[int]

    def dead_in_last(self, records: int) -> int:
        return len(self.dead_positions) - bisect_left(self.dead_positions, self.size - records)


class DlqGuard:
    """A bad deploy upstream or a wrong schema must not empty a topic into the dead-letter queue
    (arroyo's DlqLimit). Before a batch's dead letters go out, it judges the most recent `min_records`
    records processed, all outcomes counted, this batch included (the whole batch when it is larger):
    a share of dead letters above `max_ratio` trips it, and it stays tripped until a restart.

    Work is per batch and per dead letter, never per record: batches are kept whole in the window, with
    the positions of their dead letters, so the oldest one can be cut exactly at the window's edge."""

    def __init__(self, max_ratio: float, min_records: int) -> None:
        self._max_ratio = max_ratio
        self._min_records = min_records
        self._window: deque[_Judged] = deque()  # newest last; the oldest is dropped once it is not needed
        self._window_records = 0
        self.tripped = False

    def check(self, batch_size: int, dead_positions: Sequence[int]) -> None:
        """Raise GuardTrippedError (and trip for good) when this batch would take the window over the
        ratio; the batch is not remembered, so it may be checked again with more dead letters."""
        if self.tripped:
            raise GuardTrippedError("the dead-letter guard has tripped; restart after fixing the cause")
        seen, dead = batch_size, len(dead_positions)
        for judged in reversed(self._window):
            if seen >= self._min_records:
                break
            taken = min(judged.size, self._min_records - seen)
            seen += taken
            dead += judged.dead_in_last(taken)
        if seen >= self._min_records and dead > self._max_ratio * seen:
            self.tripped = True
            raise GuardTrippedError(
                f"{dead} of the last {seen} records would be dead-lettered, over DLQ_MAX_RATIO="
                f"{self._max_ratio}; nothing more is written, dead-lettered or committed until a restart"
            )

    def record(self, batch_size: int, dead_positions: Sequence[int]) -> None:
        """Remember a batch that passed `check` and whose dead letters went out."""
        self._window.append(_Judged(batch_size, sorted(dead_positions)))
        self._window_records += batch_size
        while self._window_records - self._window[0].size >= self._min_records:
            self._window_records -= self._window.popleft().size
