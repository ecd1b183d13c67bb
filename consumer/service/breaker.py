"""CircuitBreaker: a pure closed / half-open / open state machine on the injected clock.

Opens after `failure_threshold` consecutive failures, stays open for `reset_timeout_s`, then allows one
probe (half-open): its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

from consumer.clock import Clock
from consumer.observability.metrics import BreakerState


class CircuitBreaker:
    def __init__(self, failure_threshold: int, reset_timeout_s: float, clock: Clock) -> None:
        self._failure_threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._changed_at = clock.wall()

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock.monotonic() - self._opened_at >= self._reset_timeout_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def changed_at(self) -> float:
        """Wall time of the last transition, for /status."""
        return self._changed_at

    def seconds_until_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_timeout_s - self._clock.monotonic())

    def record_success(self) -> None:
        if self._opened_at is not None:
            self._changed_at = self._clock.wall()
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        half_open = self.state is BreakerState.HALF_OPEN
        if half_open or (self._opened_at is None and self._failures >= self._failure_threshold):
            self._opened_at = self._clock.monotonic()
            self._changed_at = self._clock.wall()
