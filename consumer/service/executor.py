"""Where the runner's writes run: off the polling thread, one batch at a time, so polling never waits on the
database. The runner takes a `SinkExecutor`; `app.build` gives it a `SinkThread`, unit tests a stepped fake.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
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

    def cancel_running(self) -> None:
        """Ask the write running now, if any, to give up (the sink's `cancel`); it then ends with
        WriteCancelledError. Returns within seconds; the write itself may take a moment more to end."""

    def shutdown(self) -> None:
        """Take no more writes; one still running is not waited for."""


class SinkThread:
    """One daemon thread for the sink. Not a ThreadPoolExecutor: concurrent.futures joins its threads at
    interpreter exit, so a write hung in the database (a lock wait, a peer gone silent) kept the process
    alive after the shutdown timeout had given up on it. Left behind at exit, the write's transaction is
    rolled back when its connection drops; its offsets were never committed, so it is replayed, as after
    a kill. `cancel` is the sink's (Sink.cancel): a stop that ran out of time cancels the write first, so its
    transaction does not outlive us holding locks until the database notices we are gone."""

    def __init__(self, cancel: Callable[[], None] = lambda: None) -> None:
        self._cancel = cancel
        self._writes: queue.SimpleQueue[tuple[Write, Future[BatchResult]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="sink", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> Future[BatchResult]:
        future: Future[BatchResult] = Future()
        self._writes.put((write, future))
        return future

    def wait(self, future: Future[BatchResult], timeout_s: float) -> None:
        wait([future], timeout=timeout_s)

    def cancel_running(self) -> None:
        self._cancel()

    def shutdown(self) -> None:
        self._writes.put(None)

    def _work(self) -> None:
        while (item := self._writes.get()) is not None:
            write, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(write())
            except BaseException as exc:  # noqa: BLE001 - not handled here: future.result() raises it in the runner
                future.set_exception(exc)
