"""SinkThread: writes run off the calling thread and hand back their value or exception; a write still
running at exit does not keep the process alive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from consumer.errors import SinkUnavailableError
from consumer.records import Batch, BatchResult, CloseReason
from consumer.service.executor import SinkThread

ROOT = Path(__file__).resolve().parents[2]


def _result() -> BatchResult:
    return BatchResult(Batch(1, [], CloseReason.RECORDS, 0, 0.0), {})


def test_a_write_runs_on_the_sink_thread_and_its_value_or_exception_comes_back_through_the_future() -> None:
    sink = SinkThread()
    ran_on: list[str] = []

    def write() -> BatchResult:
        ran_on.append(threading.current_thread().name)
        return _result()

    def failing() -> BatchResult:
        raise SinkUnavailableError("db away")

    done = sink.submit(write)
    sink.wait(done, 10)
    assert done.result().next_offsets == {} and ran_on == ["sink"]
    failed = sink.submit(failing)
    sink.wait(failed, 10)
    with pytest.raises(SinkUnavailableError):
        failed.result()
    sink.shutdown()


def test_a_write_hung_at_exit_does_not_keep_the_process_alive() -> None:
    """The stop gave up on it (SHUTDOWN_TIMEOUT_MS ran out): `consumer run` must still exit."""
    program = textwrap.dedent("""
        import threading
        from consumer.service.executor import SinkThread

        sink, started = SinkThread(), threading.Event()

        def hung():
            started.set()
            threading.Event().wait()

        sink.submit(hung)
        assert started.wait(10)
        sink.shutdown()
    """)
    exited = subprocess.run([sys.executable, "-c", program], cwd=ROOT, timeout=20, check=False)
    assert exited.returncode == 0
