"""HTTP on METRICS_PORT: /metrics, /healthz (the loop polled recently), /readyz (a broker answers, every
topic exists, joined, sink answered, not held), /status (a JSON snapshot the runner publishes, its times
made readable when read; the live consumer is never touched here)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeGuard

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.clock import Clock, iso8601
from consumer.observability.http_server import (
    IDLE_TIMEOUT_S,
    MAX_CONNECTION_S,
    MAX_CONNECTIONS,
    MAX_IDLE,
    BoundedHTTPServer,
)
from consumer.records import BrokerReachability
from consumer.secrets import Redactor

log = logging.getLogger(__name__)


class HealthState:
    """What the probes read. Written by the runner's thread, read by the HTTP threads; plain attribute
    assignments of immutable values, so no lock is needed."""

    def __init__(self, clock: Clock, liveness_window_s: float) -> None:
        self._clock = clock
        self._liveness_window_s = liveness_window_s
        self._last_beat = clock.monotonic()
        self.joined = False
        self.sink_ok = False
        self.breaker_open = False
        self.guard_tripped = False
        self.shutting_down = False
        self.missing_topics: tuple[str, ...] = ()  # source topics the broker does not know (yet)
        self.broker = BrokerReachability()
        self.status: dict[str, Any] = {}

    def beat(self) -> None:
        self._last_beat = self._clock.monotonic()

    def wall(self) -> float:
        return self._clock.wall()

    def broker_changed(self, state: BrokerReachability) -> None:
        self.broker = state

    def broker_view(self) -> dict[str, Any]:
        """/status `broker`: reachable, or since when (ISO 8601 and seconds) and the last error."""
        state = self.broker
        if state.reachable:
            return {"reachable": True}
        since_wall = state.since_wall if state.since_wall is not None else self._clock.wall()
        since = state.since_monotonic if state.since_monotonic is not None else self._clock.monotonic()
        return {"reachable": False, "since": iso8601(since_wall),
                "for_seconds": round(self._clock.monotonic() - since, 1), "last_error": state.last_error}

    def live(self) -> bool:
        return self._clock.monotonic() - self._last_beat <= self._liveness_window_s

    def not_ready_because(self) -> str | None:
        if self.shutting_down:
            return "shutting down"
        if not self.broker.reachable:
            return "broker unreachable"
        if self.missing_topics:
            return "; ".join(f"topic {topic} does not exist" for topic in self.missing_topics)
        if not self.joined:
            return "not joined to the consumer group yet"
        if not self.sink_ok:
            return "the sink has not answered yet"
        if self.breaker_open:
            return "circuit breaker open"
        if self.guard_tripped:
            return "dead-letter guard tripped"
        return None


def status_body(state: HealthState) -> dict[str, Any]:
    """The runner's snapshot plus what only the probes know right now (liveness, readiness, the guard), its
    times made readable as of now."""
    reason = state.not_ready_because()
    guard = {**state.status.get("guard", {}), "tripped": state.guard_tripped}
    readable = readable_times(state.status, state.wall())
    return {**readable, "live": state.live(), "ready": reason is None, "not_ready_because": reason,
            "shutting_down": state.shutting_down, "guard": guard, "missing_topics": list(state.missing_topics),
            "broker": state.broker_view()}


def readable_times(snapshot: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The snapshot's wall times (seconds since the epoch) as ISO 8601, each with its age in seconds beside
    it, computed when /status is read: a snapshot published an hour ago still shows the right ages."""
    body = dict(snapshot)
    started = body.get("started_at")
    if _is_time(started):
        body["started_at"], body["uptime_seconds"] = iso8601(started), _age(now, started)
    if "last_commit_at" in body:
        commit = body["last_commit_at"]
        body["last_commit_at"] = iso8601(commit) if _is_time(commit) else None
        body["last_commit_age_seconds"] = _age(now, commit) if _is_time(commit) else None
    batch = body.get("last_batch")
    if isinstance(batch, Mapping) and _is_time(batch.get("committed_at")):
        body["last_batch"] = {**batch, "committed_at": iso8601(batch["committed_at"]),
                              "committed_age_seconds": _age(now, batch["committed_at"])}
    breakers = body.get("breaker")
    if isinstance(breakers, Mapping):
        body["breaker"] = {name: {**b, "since": iso8601(b["since"]), "for_seconds": _age(now, b["since"])}
                           if isinstance(b, Mapping) and _is_time(b.get("since")) else b
                           for name, b in breakers.items()}
    return body


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _age(now: float, then: float) -> float:
    return round(max(0.0, now - then), 1)


class HealthServer:
    """Binds at construction (a port in use is a ConfigError naming METRICS_PORT), serves from start()."""

    def __init__(
        self, port: int, registry: CollectorRegistry, state: HealthState, secrets: Iterable[str] = (),
        host: str = "0.0.0.0", max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_idle: int = MAX_IDLE, max_connection_s: float = MAX_CONNECTION_S,
    ) -> None:
        handler = _handler(registry, state, Redactor(secrets))
        self._server = BoundedHTTPServer(host, port, handler, max_connections=max_connections,
                                         idle_timeout_s=idle_timeout_s, max_idle=max_idle,
                                         max_connection_s=max_connection_s)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def idle_connections(self) -> int:
        return self._server.idle_connections

    def start(self) -> None:
        self._thread.start()
        log.info("serving metrics and health", extra={"host": self.host, "port": self.port})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class EndpointHandler(BaseHTTPRequestHandler):
    """The plumbing every endpoint server here shares (this one and the WORKERS supervisor's): JSON and
    raw answers, no access log. `redact_value` runs over every JSON body before it is encoded (so escaping
    cannot hide a secret), `redact` over the encoded text."""

    def redact(self, text: str) -> str:
        return text

    def redact_value(self, body: Any) -> Any:
        return body

    def _send_json(self, code: int, body: Any) -> None:
        text = self.redact(json.dumps(self.redact_value(body), default=str))
        self._send(code, text.encode("utf-8"), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the logs


def _handler(
    registry: CollectorRegistry, state: HealthState, redact: Redactor
) -> type[BaseHTTPRequestHandler]:
    class Handler(EndpointHandler):
        def redact(self, text: str) -> str:
            return redact(text)

        def redact_value(self, body: Any) -> Any:
            return redact.value(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                live = state.live()
                self._send_json(200 if live else 503, {"status": "ok" if live else "poll loop stalled"})
            elif path == "/readyz":
                reason = state.not_ready_because()
                self._send_json(503 if reason else 200, {"status": reason or "ready"})
            elif path == "/status":
                self._send_json(200, status_body(state))
            else:
                self._send_json(404, {"error": "not found"})

    return Handler
