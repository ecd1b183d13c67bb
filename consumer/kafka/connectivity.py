"""Broker connectivity: librdkafka's per-retry connection noise turned into one state and one line per change.

While no broker answers, librdkafka retries for ever and reports every attempt twice, through error_cb
(`_TRANSPORT`, `_RESOLVE`) and as a log line (facility FAIL): about 20 lines a second. Here those become a
state (`BrokerReachability`, shown on /status and /readyz), one WARNING when the broker is lost (librdkafka's
`_ALL_BROKERS_DOWN`), a reminder every `reminder_interval_s`, and one INFO when a statistics report shows a
broker up again. Connection failures never carry a fatal error; those still end the service elsewhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError

from consumer.clock import Clock
from consumer.records import BrokerReachability

log = logging.getLogger(__name__)

REMINDER_INTERVAL_S = 60.0
CONNECTION_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})
# librdkafka's log facility for a failed or dropped connection: one line per attempt, said once by the state
_PER_ATTEMPT_FACILITIES = frozenset({"FAIL"})


class LibrdkafkaLog:
    """The `logger` every client is given: librdkafka's lines into Python logging (so LOG_FORMAT holds for
    them), its per-attempt connection failures at DEBUG (BrokerConnectivity says them once)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def log(self, level: int, msg: str, *args: object) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, text)
        if args and args[0] in _PER_ATTEMPT_FACILITIES:
            level = logging.DEBUG
        self._logger.log(level, msg, *args)


def quiet_error_cb(error: KafkaError) -> None:
    """error_cb of the clients without a connectivity state of their own (the dead-letter producer): the
    consumer's state already says the broker is away, so connection errors are DEBUG here."""
    level = logging.DEBUG if error.code() in CONNECTION_CODES else logging.WARNING
    log.log(level, "kafka client error", extra={"error": error.str(), "code": error.name()})


class BrokerConnectivity:
    """Fed by a client's error_cb and stats_cb (on the polling thread); `on_change` gets each new state."""

    def __init__(
        self, clock: Clock, on_change: Callable[[BrokerReachability], None] = lambda _state: None,
        reminder_interval_s: float = REMINDER_INTERVAL_S,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._reminder_interval_s = reminder_interval_s
        self._state = BrokerReachability()
        self._last_error: str | None = None
        self._remind_at = 0.0
        self._lock = threading.Lock()

    @property
    def state(self) -> BrokerReachability:
        return self._state

    def error(self, error: KafkaError) -> bool:
        """Take an error_cb report; True when it was about reaching the broker (nothing more to log)."""
        code = error.code()
        if code not in CONNECTION_CODES:
            return False
        with self._lock:
            if code != KafkaError._ALL_BROKERS_DOWN or self._last_error is None:
                self._last_error = error.str()  # "1/1 brokers are down" says less than the attempt's own error
            if code == KafkaError._ALL_BROKERS_DOWN and self._state.reachable:
                self._lost()
            elif not self._state.reachable:
                self._remind()
        return True

    def statistics(self, brokers: Mapping[str, Any]) -> None:
        """Take the `brokers` of a statistics report: a real broker (node id >= 0, not a bootstrap entry or
        the coordinator alias) in state UP means the cluster answers again."""
        up = any(isinstance(b, Mapping) and b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
                 for b in brokers.values())
        with self._lock:
            if up:
                self._last_error = None
                if not self._state.reachable:
                    self._found()
            elif not self._state.reachable:
                self._remind()

    def _lost(self) -> None:
        now = self._clock.monotonic()
        self._state = BrokerReachability(False, self._clock.wall(), now, self._last_error)
        self._remind_at = now + self._reminder_interval_s
        log.warning("broker unreachable; retrying (no line per retry)", extra={"error": self._last_error})
        self._on_change(self._state)

    def _remind(self) -> None:
        now = self._clock.monotonic()
        if self._state.last_error != self._last_error:
            self._state = BrokerReachability(False, self._state.since_wall, self._state.since_monotonic,
                                             self._last_error)
            self._on_change(self._state)
        if now >= self._remind_at:
            self._remind_at = now + self._reminder_interval_s
            log.warning("broker still unreachable", extra={
                "for_seconds": round(now - (self._state.since_monotonic or now)), "error": self._last_error})

    def _found(self) -> None:
        down_s = self._clock.monotonic() - (self._state.since_monotonic or self._clock.monotonic())
        self._state = BrokerReachability()
        log.info("broker reachable again", extra={"down_seconds": round(down_s, 1)})
        self._on_change(self._state)
