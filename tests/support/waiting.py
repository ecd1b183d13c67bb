"""Polling instead of sleeping: a test waits for a condition, never for a guessed duration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

_MAX_SHOWN_CHARS = 2000


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    describe: str,
    interval_s: float = 0.1,
    ignore: tuple[type[Exception], ...] = (),
    until: Callable[[T], object] | None = None,
) -> T:
    """Call `predicate` until it returns a truthy value (or one `until` accepts) and return that value.

    On timeout the test fails naming `describe` and the last value seen (or the last ignored exception), so
    a failure says how far things got instead of just "timed out". A bare boolean shows little, hence
    `until`: `wait_until(lambda: count_rows(url, t), 30, "100 rows", until=lambda n: n == 100)` fails with
    "last value: 73". Exceptions listed in `ignore` count as "not yet" (e.g. a table the service has not
    created yet); any other exception propagates at once, which lets a predicate abort the wait early (a
    helper that sees its process die calls pytest.fail).
    """
    accept: Callable[[T], object] = until if until is not None else bool
    deadline = time.monotonic() + timeout_s
    last: object = "<predicate never ran>"
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if accept(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {describe}; last value: {_shown(last)}")
        time.sleep(interval_s)


def hold(seconds: float, invariant: Callable[[], None], describe: str) -> None:
    """Keep a fault in place for `seconds` (the fault's length is the test's input, not a guess at timing),
    checking `invariant` (it raises on a breach) all along."""
    end = time.monotonic() + seconds

    def held() -> bool:
        invariant()
        return time.monotonic() >= end

    wait_until(held, seconds + 60, describe, interval_s=0.5)


def _shown(value: object) -> str:
    """A repr short enough to keep a failure message readable."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= _MAX_SHOWN_CHARS:
        return text
    return text[:_MAX_SHOWN_CHARS] + f"... ({len(text)} chars)"
