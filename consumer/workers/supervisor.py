"""Supervisor: `run` with WORKERS > 1 runs that many consumer processes of one pod in one consumer group.

Workers are child processes `python -m consumer run --worker I --worker-metrics-port P`: each is the very
service `run` is with WORKERS=1 (same settings from the same environment, same loop, signals and exit
codes), so every guarantee proven for one process holds for each worker, and librdkafka never meets
`fork()`. The two hidden flags are the only difference: the worker's index (tagging its log lines) and an
internal METRICS_PORT on 127.0.0.1; nothing reads os.environ for them. A worker's stdin is a pipe the
supervisor never writes: when the supervisor dies, even by SIGKILL, the pipe closes and the worker stops
gracefully, so no orphan keeps consuming.

The supervisor owns METRICS_PORT. `/metrics` scrapes the workers and merges their expositions
(`consumer.workers.aggregate`) rather than using prometheus_client's multiprocess mode: that mode needs a shared
directory named by an environment variable read inside prometheus_client, a per-gauge merge mode declared
on every metric, and cleanup of dead processes' files, and it would not give `/healthz`, `/readyz` and
`/status` anyway, which must come from the workers. `/healthz` is 200 only while every worker runs and
answers live; `/readyz` only while every worker is ready; `/status` shows each worker and the supervisor.

Restart policy: a worker that exits on its own (crash, SIGKILL, exit 1, even exit 0) is restarted after a
backoff doubling from 1 s to 30 s, counted in `consumer_worker_restarts_total`. A worker exiting 2 (a
configuration error: restarting cannot fix it) stops everything with exit 2; five failures in a row of one
worker, each within 60 s of its start, stop everything with exit 1 instead of crash-looping. SIGTERM/SIGINT
forwards SIGTERM to every worker and waits SHUTDOWN_TIMEOUT_MS plus a margin: exit 0 if all exited 0.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.clock import Clock, SystemClock
from consumer.observability.health import EndpointHandler
from consumer.observability.http_server import BoundedHTTPServer
from consumer.observability.metrics import SupervisorMetrics
from consumer.settings import Settings
from consumer.workers.aggregate import CONTENT_TYPE, Families, cumulative, families_of, merge, parse, render

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_FAILURE = 1
_TICK_S = 0.2  # how often children are checked: bounds how late a death or a due restart is noticed
_METRICS_REFRESH_S = 5.0  # how stale the counters a dead worker leaves behind can be
_STOP_MARGIN_S = 10.0  # beyond SHUTDOWN_TIMEOUT_MS: a worker also closes its consumer and leaves the group
_HTTP_TIMEOUT_S = 2.0


# --- restart policy (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a worker exited on its own: restart after `restart_in_s`, or stop with `exit_code`."""

    streak: int
    restart_in_s: float | None
    exit_code: int = EXIT_FAILURE


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0  # a worker that ran this long failed once, not repeatedly: the streak restarts
    max_failures: int = 5

    def decide(self, exit_code: int, lived_s: float, streak: int) -> Decision:
        if exit_code == EXIT_CONFIG:
            return Decision(streak + 1, None, EXIT_CONFIG)
        streak = 1 if lived_s >= self.stable_s else streak + 1
        if streak >= self.max_failures:
            return Decision(streak, None, EXIT_FAILURE)
        return Decision(streak, min(self.max_s, self.initial_s * 2 ** (streak - 1)))


# --- the supervisor ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One worker position; its process is replaced on restart (`generation` counts incarnations)."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    generation: int = 0
    started_at: float = 0.0
    started_wall: float = 0.0
    restarts: int = 0
    streak: int = 0
    last_exit: int | None = None
    restart_at: float | None = None
    last_seen: Families = field(default_factory=list)  # its last scraped metric families


@dataclass(frozen=True, slots=True)
class _View:
    """A slot as HTTP threads see it, copied under the lock."""

    index: int
    pid: int | None
    alive: bool
    port: int
    generation: int
    started_at: float
    started_wall: float
    restarts: int
    last_exit: int | None
    restart_at: float | None
    last_seen: Families


def worker_command(index: int, port: int) -> list[str]:
    return [sys.executable, "-m", "consumer", "run", "--worker", str(index), "--worker-metrics-port", str(port)]


class Supervisor:
    def __init__(
        self, settings: Settings, clock: Clock | None = None, policy: RestartPolicy | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self._policy = policy or RestartPolicy()
        self._workers = settings.workers
        self._metrics_port = settings.metrics_port
        self._metrics_host = settings.metrics_host
        self._liveness_window_s = float(settings.liveness_window_s)
        self._stop_timeout_s = settings.shutdown_timeout_ms / 1000 + _STOP_MARGIN_S
        self._registry = CollectorRegistry()
        self._metrics = SupervisorMetrics(self._registry, settings.workers)
        self._slots = [_Slot(index) for index in range(settings.workers)]
        self._lock = threading.Lock()
        self._retired: Families = []  # counters and histograms of workers that died, merged
        self._stopping = False
        self._started_wall = self._clock.wall()

    # --- the loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        """Start the workers, keep them running until `stop` is set or one fails for good; the exit code."""
        server = _serve(self._metrics_host, self._metrics_port, self)
        log.info("supervising workers", extra={"workers": self._workers, "port": server.server_address[1]})
        try:
            for slot in self._slots:
                self._spawn(slot)
            failed = self._supervise(stop)
            return self._stop_all(failed)
        finally:
            server.shutdown()
            server.server_close()

    def _supervise(self, stop: threading.Event) -> int | None:
        """Check the children every tick; return an exit code when a worker failed for good, else None."""
        next_refresh = self._clock.monotonic() + _METRICS_REFRESH_S
        while not stop.is_set():
            for slot in self._slots:
                code = self._check(slot)
                if code is not None:
                    return code
            if self._clock.monotonic() >= next_refresh:
                self._refresh()
                next_refresh = self._clock.monotonic() + _METRICS_REFRESH_S
            stop.wait(_TICK_S)
        return None

    def _check(self, slot: _Slot) -> int | None:
        now = self._clock.monotonic()
        if slot.process is None:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot, restart=True)
                self._metrics.worker_restarts_total.labels(str(slot.index)).inc()
                log.info("worker restarted", extra={"worker": slot.index, "pid": self._pid(slot),
                                                    "restarts": slot.restarts})
            return None
        code = slot.process.poll()
        if code is None:
            return None
        pid = slot.process.pid
        decision = self._policy.decide(code, now - slot.started_at, slot.streak)
        with self._lock:
            self._retire(slot)
            slot.process, slot.last_exit, slot.streak = None, code, decision.streak
            slot.restart_at = None if decision.restart_in_s is None else now + decision.restart_in_s
        self._metrics.workers_running.dec()
        context = {"worker": slot.index, "pid": pid, "exit_code": code, "failures_in_a_row": decision.streak}
        if decision.restart_in_s is None:
            log.error("worker failed; stopping every worker", extra={**context, "exit": decision.exit_code})
            return decision.exit_code
        log.warning("worker exited unexpectedly; restarting", extra={**context, "restart_in_s": decision.restart_in_s})
        return None

    def _spawn(self, slot: _Slot, restart: bool = False) -> None:
        port = _free_port()
        process = subprocess.Popen(worker_command(slot.index, port), stdin=subprocess.PIPE)
        with self._lock:
            slot.process, slot.port, slot.restart_at = process, port, None
            slot.generation += 1
            slot.restarts += restart
            slot.started_at, slot.started_wall = self._clock.monotonic(), self._clock.wall()
        self._metrics.workers_running.inc()
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid, "worker_port": port})

    def _retire(self, slot: _Slot) -> None:
        """Keep a dead worker's counters (as last scraped) so the merged ones never go backwards."""
        self._retired = merge([self._retired, cumulative(slot.last_seen)])
        slot.last_seen = []

    def _refresh(self) -> None:
        for view in self._views():
            if view.alive:
                self._scrape(view)

    def _stop_all(self, failed: int | None) -> int:
        """SIGTERM every worker, wait for them within the shutdown timeout plus a margin, then SIGKILL."""
        with self._lock:
            self._stopping = True
        running = [slot.process for slot in self._slots if slot.process is not None]
        log.info("stopping workers", extra={"workers": len(running)})
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = self._clock.monotonic() + self._stop_timeout_s
        codes = [self._wait(process, deadline) for process in running]
        if failed is not None:
            return failed
        if all(code == 0 for code in codes):
            log.info("every worker stopped cleanly")
            return 0
        log.error("not every worker stopped cleanly", extra={"exit_codes": codes})
        return EXIT_FAILURE

    def _wait(self, process: subprocess.Popen[bytes], deadline: float) -> int:
        try:
            return process.wait(timeout=max(0.0, deadline - self._clock.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
            process.kill()
            process.wait()
            return EXIT_FAILURE

    @staticmethod
    def _pid(slot: _Slot) -> int | None:
        return slot.process.pid if slot.process is not None else None

    # --- endpoints (HTTP threads) ------------------------------------------------------------------
    def _views(self) -> list[_View]:
        with self._lock:
            return [
                _View(s.index, self._pid(s), s.process is not None and s.process.poll() is None, s.port,
                      s.generation, s.started_at, s.started_wall, s.restarts, s.last_exit, s.restart_at,
                      s.last_seen)
                for s in self._slots
            ]

    def _scrape(self, view: _View) -> Families | None:
        got = _get(view.port, "/metrics")
        if got is None or got[0] != 200:
            return None
        try:
            families = parse(got[1].decode("utf-8"))
        except ValueError:
            return None
        with self._lock:
            slot = self._slots[view.index]
            if slot.generation == view.generation and slot.process is not None:
                slot.last_seen = families
        return families

    def metrics(self) -> bytes:
        """Every worker's metrics merged, plus what dead workers counted and the supervisor's own."""
        expositions: list[Families] = []
        for view in self._views():
            scraped = self._scrape(view) if view.alive else None
            # a worker not answering right now still counted what it last showed: keep counters monotonic
            expositions.append(scraped if scraped is not None else cumulative(view.last_seen))
        with self._lock:
            expositions.append(self._retired)
        expositions.append(families_of(self._registry))
        return render(merge(expositions))

    def health(self) -> tuple[int, dict[str, Any]]:
        problems: list[str] = []
        for view in self._views():
            if not view.alive:
                problems.append(f"worker {view.index}: not running")
                continue
            got = _get(view.port, "/healthz")
            starting = self._clock.monotonic() - view.started_at <= self._liveness_window_s
            if got is None and not starting:
                problems.append(f"worker {view.index}: not answering")
            elif got is not None and got[0] != 200:
                problems.append(f"worker {view.index}: {_status_text(got[1])}")
        return (503, {"status": "; ".join(problems)}) if problems else (200, {"status": "ok"})

    def readiness(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            stopping = self._stopping
        if stopping:
            return 503, {"status": "shutting down"}
        problems: list[str] = []
        for view in self._views():
            got = _get(view.port, "/readyz") if view.alive else None
            if not view.alive:
                problems.append(f"worker {view.index}: not running")
            elif got is None:
                problems.append(f"worker {view.index}: starting")
            elif got[0] != 200:
                problems.append(f"worker {view.index}: {_status_text(got[1])}")
        return (503, {"status": "; ".join(problems)}) if problems else (200, {"status": "ready"})

    def status(self) -> dict[str, Any]:
        """One entry per worker (its own /status inside), the supervisor's view, and the union of the
        assignments, so tools that read `assignment` from a single process keep working."""
        now = self._clock.monotonic()
        workers: list[dict[str, Any]] = []
        assignment: list[dict[str, Any]] = []
        for view in self._views():
            own = _json(_get(view.port, "/status")) if view.alive else None
            workers.append({
                "worker": view.index, "pid": view.pid, "alive": view.alive, "port": view.port,
                "started_at": view.started_wall if view.pid is not None else None, "restarts": view.restarts,
                "last_exit_code": view.last_exit,
                "restart_in_s": None if view.restart_at is None else round(max(0.0, view.restart_at - now), 3),
                "status": own,
            })
            for entry in (own or {}).get("assignment", []):
                assignment.append({**entry, "worker": view.index})
        with self._lock:
            stopping = self._stopping
        return {
            "version": __version__,
            "supervisor": {"pid": os.getpid(), "workers": self._workers, "running": sum(w["alive"] for w in workers),
                           "restarts": sum(w["restarts"] for w in workers), "stopping": stopping, "started_at": self._started_wall},
            "assignment": sorted(assignment, key=lambda e: (str(e.get("topic", "")), str(e.get("partition")))),
            "workers": workers,
        }


def supervise(settings: Settings, stop: threading.Event) -> int:
    return Supervisor(settings).run(stop)


# --- plumbing ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, bytes] | None:
    """Status and body of a worker's endpoint; None while it does not answer (starting, gone)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=_HTTP_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, http.client.HTTPException):
        return None


def _json(got: tuple[int, bytes] | None) -> dict[str, Any] | None:
    if got is None or got[0] != 200:
        return None
    try:
        body = json.loads(got[1])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _status_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("status", "not ok"))
    except (ValueError, AttributeError):
        return "not ok"


def _serve(host: str, port: int, supervisor: Supervisor) -> BoundedHTTPServer:
    server = BoundedHTTPServer(host, port, _handler(supervisor))
    threading.Thread(target=server.serve_forever, name="supervisor-http", daemon=True).start()
    return server


def _handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(EndpointHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, supervisor.metrics(), CONTENT_TYPE)
            elif path == "/healthz":
                self._send_json(*supervisor.health())
            elif path == "/readyz":
                self._send_json(*supervisor.readiness())
            elif path == "/status":
                self._send_json(200, supervisor.status())
            else:
                self._send_json(404, {"error": "not found"})

    return Handler
