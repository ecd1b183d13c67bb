"""Exponential backoff with full jitter (AWS architecture blog): sleep = random(0, min(cap, base * 2**n))."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next try."""
        ceiling = min(self._max_s, self._initial_s * (2 ** min(self._failures, 32)))
        self._failures += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self._failures = 0
