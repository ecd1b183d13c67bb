"""SINK_MAX_RECORDS_PER_SECOND: a token bucket in front of the sink, on the injected clock.

A batch may start once the bucket is out of debt and then takes its whole size, going into debt if
needed: batches larger than a second's worth still pass, and the average rate holds. The runner asks
how long to wait instead of sleeping, so polling (and the group membership) never stops.
"""

from __future__ import annotations

from consumer.clock import Clock


class TokenBucket:
    def __init__(self, records_per_second: float, clock: Clock) -> None:
        self._rate = records_per_second
        self._capacity = records_per_second  # a second's worth of burst after an idle spell
        self._clock = clock
        self._tokens = records_per_second
        self._updated = clock.monotonic()

    def seconds_until_ready(self) -> float:
        self._refill()
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def take(self, records: int) -> None:
        self._refill()
        self._tokens -= records

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
