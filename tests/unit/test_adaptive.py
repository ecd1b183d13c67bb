"""AdaptiveBatchSize against a simulated sink whose write takes fixed + per_row * n seconds."""

from __future__ import annotations

import pytest

from consumer.service.adaptive import AdaptiveBatchSize


def _settle(adaptive: AdaptiveBatchSize, fixed_s: float, per_row_s: float, rounds: int = 30) -> list[int]:
    limits = []
    for _ in range(rounds):
        n = adaptive.limit
        limits.append(adaptive.observe(n, fixed_s + per_row_s * n))
    return limits


def test_a_slow_sink_shrinks_batches_until_a_write_takes_the_target() -> None:
    adaptive = AdaptiveBatchSize(target_s=0.2, max_records=5000)
    limits = _settle(adaptive, fixed_s=0.02, per_row_s=0.0002)  # 5000 rows would take 1.02 s
    assert limits[0] < 5000
    assert 0.02 + 0.0002 * limits[-1] == pytest.approx(0.2, rel=0.01)  # n = 900


def test_a_fast_sink_grows_back_but_never_past_batch_max_records() -> None:
    adaptive = AdaptiveBatchSize(target_s=0.5, max_records=5000)
    _settle(adaptive, fixed_s=0.01, per_row_s=0.001)  # slow spell: about 490 rows per write
    assert adaptive.limit == pytest.approx(490, abs=5)
    limits = _settle(adaptive, fixed_s=0.01, per_row_s=0.00001)  # the database got fast again
    assert limits == sorted(limits) and limits[-1] == 5000


def test_one_slow_write_halves_the_limit_at_most() -> None:
    adaptive = AdaptiveBatchSize(target_s=0.1, max_records=4000)
    assert adaptive.observe(4000, 60.0) == 2000  # a 60 s lock wait would have asked for 7 rows


def test_a_batch_that_wrote_nothing_teaches_nothing() -> None:
    adaptive = AdaptiveBatchSize(target_s=0.1, max_records=1000)
    assert adaptive.observe(0, 0.5) == 1000
    assert adaptive.observe(100, 0.0) == 1000
