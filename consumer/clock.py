"""Time as a parameter: the only module that calls `time.*`, so tests can drive time by hand."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; for durations and deadlines."""

    def wall(self) -> float:
        """Seconds since the epoch; for timestamps shown to people and latency against record time."""

    def sleep(self, seconds: float) -> None:
        """Block this thread; only for backoff, never to wait for something observable."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def iso8601(wall_s: float) -> str:
    """A wall-clock time as people and log searches read it: UTC, milliseconds, `Z`."""
    return dt.datetime.fromtimestamp(wall_s, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
