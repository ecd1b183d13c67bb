"""The service under test as a real subprocess (`python -m consumer ...`), observed from outside.

Delivery guarantees (kill between write and commit, graceful SIGTERM) can only be proven on a real process;
tests see it the way an operator does: exit codes, its log file, and its HTTP endpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.testbed.net import free_port

from .waiting import wait_until

MetricKey = tuple[str, frozenset[tuple[str, str]]]

# A short session, so a killed service's partitions move on within seconds (the broker allows 1 s and up).
BASE_ENV: Mapping[str, str] = {
    "KAFKA_SESSION_TIMEOUT_MS": "6000",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",  # log lines reach the file as they happen, for log_text() assertions
}
_HTTP_TIMEOUT_S = 5.0
_LOG_TAIL_CHARS = 4000


class ServiceProcess:
    """One run of the service; start with `ServiceProcess.start`, stop with terminate() or kill()."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log_path: Path, log_file: IO[bytes]
    ) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self._log_file = log_file

    @classmethod
    def start(cls, env: Mapping[str, str], workdir: Path, args: Sequence[str] = ("run",)) -> ServiceProcess:
        """Start `python -m consumer *args` in `workdir` with os.environ + BASE_ENV + a free METRICS_PORT + env.

        Output goes to a new `service-N.log` in `workdir`, so a restarted service keeps its own log.
        """
        full_env = {**os.environ, **BASE_ENV, "METRICS_PORT": str(free_port()), **env}
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = _next_log_path(workdir)
        log_file = log_path.open("wb")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "consumer", *args],
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError:
            log_file.close()
            raise
        return cls(process, int(full_env["METRICS_PORT"]), log_path, log_file)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout_s: float = 45) -> int:
        """SIGTERM, as Kubernetes stops a pod, then wait; returns the exit code (fails the test on a hang).

        The wait outlasts the default SHUTDOWN_TIMEOUT_MS (30 s): a stop that uses its whole timeout under
        load shows as its own exit code, not as a kill by the test."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> int:
        """SIGKILL: the crash case, nothing gets to run; returns the exit code (-9)."""
        if self.running:
            self.process.kill()
        return self.wait(_HTTP_TIMEOUT_S)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit and return its code; on timeout kill it and fail showing the log."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self._log_file.close()
            pytest.fail(
                f"service pid {self.pid} still running after {timeout_s}s (killed)\n{self.log_tail()}"
            )
        self._log_file.close()
        return code

    def log_text(self) -> str:
        """Everything the service printed so far (stdout and stderr interleaved)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the log, labelled, for failure messages."""
        return f"--- {self.log_path} (tail) ---\n{self.log_text()[-chars:]}"

    def http_get(self, path: str) -> tuple[int, str]:
        """Status and body of GET `path` on the service's port (4xx/5xx are returned, not raised)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
                return int(response.status), response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode("utf-8", errors="replace")

    def metrics(self) -> dict[MetricKey, float]:
        """Every sample on /metrics keyed by (sample name, labels); {} while the port is not open yet.

        Sample names are as exposed (`consumer_records_total`, `consumer_batch_records_count`, ...). A service
        that exited fails the test at once with its log, so a wait_until on a metric does not sit out its
        timeout after a crash.
        """
        self._fail_if_exited()
        try:
            status, body = self.http_get("/metrics")
        except (ConnectionError, TimeoutError, urllib.error.URLError):
            return {}
        if status != 200:
            pytest.fail(f"GET /metrics answered {status}: {body[:500]}")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels, 0.0 if absent (absent and zero mean the same to a counter)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def metric_sum(self, name: str, **labels: str) -> float:
        """The sum over samples whose labels include these (e.g. records sunk over all topics)."""
        wanted = labels.items()
        return sum(v for (n, got), v in self.metrics().items() if n == name and wanted <= dict(got).items())

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until /readyz answers 200 (joined the group, sink answered); fails early if the process dies."""
        wait_until(lambda: self._ready_status() == 200, timeout_s, f"service pid {self.pid} /readyz = 200")

    def _ready_status(self) -> int | None:
        self._fail_if_exited()
        try:
            return self.http_get("/readyz")[0]
        except (ConnectionError, TimeoutError, urllib.error.URLError):
            return None

    def _fail_if_exited(self) -> None:
        code = self.process.poll()
        if code is not None:
            pytest.fail(f"service pid {self.pid} exited with {code}\n{self.log_tail()}")


def _next_log_path(workdir: Path) -> Path:
    n = 1
    while (workdir / f"service-{n}.log").exists():
        n += 1
    return workdir / f"service-{n}.log"
