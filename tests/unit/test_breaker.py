from __future__ import annotations

from fakeclock import FakeClock

from consumer.observability.metrics import BreakerState
from consumer.service.breaker import CircuitBreaker
from consumer.service.retry import Backoff


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    b = CircuitBreaker(3, 10.0, clock)
    assert b.state is BreakerState.CLOSED and b.seconds_until_probe() == 0
    b.record_failure()
    b.record_failure()
    b.record_success()  # resets the count
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    clock.advance(1)
    b.record_failure()
    assert b.state is BreakerState.OPEN and b.seconds_until_probe() > 0
    assert b.changed_at == clock.wall()
    assert b.seconds_until_probe() == 10.0


def test_half_open_probe_success_closes() -> None:
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock)
    b.record_failure()
    clock.advance(4.9)
    assert b.state is BreakerState.OPEN
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN and b.seconds_until_probe() == 0
    assert b.seconds_until_probe() == 0.0
    clock.advance(2)
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.changed_at == clock.wall()


def test_half_open_probe_failure_reopens() -> None:
    clock = FakeClock()
    b = CircuitBreaker(2, 5.0, clock)
    b.record_failure()
    b.record_failure()
    clock.advance(5)
    assert b.state is BreakerState.HALF_OPEN
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.seconds_until_probe() == 5.0


def test_failures_while_open_do_not_extend() -> None:
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock)
    b.record_failure()
    clock.advance(3)
    b.record_failure()
    assert abs(b.seconds_until_probe() - 2.0) < 1e-9


def test_backoff_full_jitter_capped() -> None:
    class MaxRng:
        def uniform(self, a: float, b: float) -> float:
            return b

    backoff = Backoff(0.2, 1.0, MaxRng())  # type: ignore[arg-type]
    delays = [backoff.next_delay() for _ in range(5)]
    assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() == 0.2
    for _ in range(100):
        backoff.next_delay()  # no overflow after many failures
