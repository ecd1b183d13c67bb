"""InHand: the closed batches the runner holds and has not committed, in polling order.

At most one is in the sink (`in_flight`); the others wait, oldest first, so offsets go out in order. A batch
that failed goes back first in line. The first waiting batch may be decoded ahead, on the polling thread,
while the one before is in the database; that work is used only by the batch it was done for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from consumer.errors import TransientError
from consumer.records import Batch, BatchResult
from consumer.service.pipeline import Decoded


@dataclass(frozen=True, slots=True)
class InFlight:
    batch: Batch
    future: Future[BatchResult]
    started_at: float  # monotonic


class InHand:
    def __init__(self) -> None:
        self.in_flight: InFlight | None = None
        self.waiting: deque[Batch] = deque()
        self._ahead: Decoded | None = None

    def __bool__(self) -> bool:
        return self.in_flight is not None or bool(self.waiting)

    def __len__(self) -> int:
        return len(self.waiting) + (self.in_flight is not None)

    def add(self, batch: Batch | None) -> None:
        if batch is not None:
            self.waiting.append(batch)

    def extend(self, batches: Iterable[Batch]) -> None:
        self.waiting.extend(batches)

    def put_back(self, batch: Batch) -> None:
        """A failed batch: first in line again, before any that closed after it."""
        self.waiting.appendleft(batch)

    def decode_next(self, decode: Callable[[Batch], Decoded]) -> None:
        """Decode the first waiting batch unless done already; a registry outage leaves it to the write."""
        upcoming = self.waiting[0]
        if self._ahead is not None and self._ahead.batch is upcoming:
            return
        try:
            self._ahead = decode(upcoming)
        except TransientError:
            self._ahead = None

    def next(self) -> tuple[Batch, Decoded | None]:
        """The first waiting batch, with its decoding if it was done ahead (not if done for another batch
        that a retry has since put back in front of it)."""
        batch = self.waiting.popleft()
        ahead, self._ahead = self._ahead, None
        return batch, ahead if ahead is not None and ahead.batch is batch else None

    def finished(self) -> InFlight | None:
        """The batch in flight once its write is done, no longer in flight."""
        done = self.in_flight
        if done is None or not done.future.done():
            return None
        self.in_flight = None
        return done

    def drop_waiting(self) -> None:
        self.waiting.clear()
        self._ahead = None

    def first_timestamps(self) -> list[int]:
        """Kafka timestamp of each batch's first record (its oldest), for lag."""
        batches = [*self.waiting, self.in_flight.batch] if self.in_flight is not None else self.waiting
        return [batch.records[0].timestamp_ms for batch in batches if batch.records]
