"""BATCH_TARGET_LATENCY_MS: size the next batch so that its sink write takes about the target.

A write of n rows takes roughly `fixed + per_row * n`. Aiming the next limit at
`target / (seconds / n)` has its fixed point where `fixed + per_row * n == target`, and it is stable
while the fixed part is below the target (the step's slope there is fixed / target < 1). Each step is
bounded to x2 or /2, so one slow write (a checkpoint, a lock) does not collapse the size at once, and
the limit stays within 1..BATCH_MAX_RECORDS.
"""

from __future__ import annotations

_MAX_STEP = 2.0


class AdaptiveBatchSize:
    def __init__(self, target_s: float, max_records: int) -> None:
        self._target_s = target_s
        self._max_records = max_records
        self.limit = max_records  # start at the configured size; the first writes tell how fast the sink is

    def observe(self, records: int, sink_seconds: float) -> int:
        """Learn from one committed batch's write; return the record limit for the next batch."""
        if records <= 0 or sink_seconds <= 0:
            return self.limit  # nothing was written (all poison, all duplicates collapsed away): no signal
        aimed = self._target_s * records / sink_seconds
        stepped = min(max(aimed, self.limit / _MAX_STEP), self.limit * _MAX_STEP)
        self.limit = max(1, min(self._max_records, round(stepped)))
        return self.limit
