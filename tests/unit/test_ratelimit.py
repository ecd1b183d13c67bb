"""TokenBucket: SINK_MAX_RECORDS_PER_SECOND on a fake clock (no sleeping)."""

from __future__ import annotations

import pytest
from fakeclock import FakeClock

from consumer.service.ratelimit import TokenBucket


def test_a_batch_larger_than_a_seconds_worth_passes_and_the_next_waits_out_the_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock)
    assert bucket.seconds_until_ready() == 0.0
    bucket.take(5000)
    assert bucket.seconds_until_ready() == 4.0  # 1000 tokens in hand, 5000 taken
    clock.advance(3.0)
    assert bucket.seconds_until_ready() == 1.0
    clock.advance(1.0)
    assert bucket.seconds_until_ready() == 0.0


def test_the_average_rate_holds_over_many_batches() -> None:
    clock = FakeClock()
    bucket = TokenBucket(200, clock)
    started, sent = clock.monotonic(), 0
    for _ in range(50):
        clock.advance(bucket.seconds_until_ready())
        bucket.take(300)
        sent += 300
    elapsed = clock.monotonic() - started
    # The last batch starts once all but it and the first second's burst are paid for at 200/s.
    assert elapsed == pytest.approx((sent - 200 - 300) / 200)


def test_an_idle_spell_earns_at_most_one_seconds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock)
    clock.advance(3600)
    bucket.take(100)
    assert bucket.seconds_until_ready() == 0.0
    bucket.take(100)
    assert bucket.seconds_until_ready() == 1.0
