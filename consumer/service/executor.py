"""Where the runner's writes run: off the polling thread, one batch at a time, so polling never waits on the
database. The runner takes a `SinkExecutor`; `app.build` gives it a `SinkThread`, unit tests a stepped fake.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

from consumer.records import BatchResult

Write = Callable[[], BatchResult]


class SinkExecutor(Protocol):
    """Runs one batch's write at a time; the runner submits the next only after collecting the last."""

    def submit(self, write: Write) -> Future[BatchResult]:
        """Start `write`; its outcome, value or exception, is the future's."""
        ...

    def wait(self, future: Future[BatchResult], timeout_s: float) -> None:
        """Return once `future` is done or `timeout_s` has passed, whichever comes first."""

    def shutdown(self) -> None:
        """Take no more writes; one still running is not waited for."""


class SinkThread:
    """One worker thread for the sink."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")

    def submit(self, write: Write) -> Future[BatchResult]:
        return self._pool.submit(write)

    def wait(self, future: Future[BatchResult], timeout_s: float) -> None:
        wait([future], timeout=timeout_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
