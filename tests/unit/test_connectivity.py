"""Broker connectivity: librdkafka's per-retry errors and log lines become one state and one line per change."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError
from fakeclock import FakeClock

from consumer.kafka.connectivity import BrokerConnectivity, LibrdkafkaLog
from consumer.observability.health import HealthState
from consumer.records import BrokerReachability

REFUSED = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed")
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
UP = {"127.0.0.1:9092/1": {"nodeid": 1, "state": "UP"}, "GroupCoordinator": {"nodeid": -1, "state": "UP"}}
DOWN = {"127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "INIT"},
        "GroupCoordinator": {"nodeid": -1, "state": "TRY_CONNECT"}}


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_an_outage_is_one_warning_a_reminder_a_minute_and_one_line_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    health = HealthState(clock, 60)
    health.joined = health.sink_ok = True
    connectivity = BrokerConnectivity(clock, health.broker_changed, reminder_interval_s=60)
    caplog.set_level(logging.DEBUG, logger="consumer.kafka.connectivity")

    assert connectivity.error(REFUSED) and connectivity.error(ALL_DOWN)
    for second in range(1, 150):  # librdkafka: ~20 failed attempts a second, a statistics report every 5 s
        clock.advance(1)
        for _ in range(20):
            connectivity.error(REFUSED)
        if second % 5 == 0:
            connectivity.statistics(DOWN)
        if second == 30:
            assert health.not_ready_because() == "broker unreachable"
            assert health.broker_view() == {"reachable": False, "since": "2023-11-14T22:13:20.000Z",
                                            "for_seconds": 30.0, "last_error": REFUSED.str()}
    connectivity.statistics(UP)

    assert _lines(caplog) == [("WARNING", "broker unreachable; retrying (no line per retry)"),
                              ("WARNING", "broker still unreachable"), ("WARNING", "broker still unreachable"),
                              ("INFO", "broker reachable again")]
    assert caplog.records[-1].down_seconds == 149.0
    assert health.broker == BrokerReachability() and health.not_ready_because() is None
    assert health.broker_view() == {"reachable": True}


def test_a_transport_error_alone_does_not_mark_the_broker_lost_and_other_errors_are_not_taken() -> None:
    clock = FakeClock()
    connectivity = BrokerConnectivity(clock)
    assert connectivity.error(REFUSED)  # one broker of several dropping a connection: others may answer
    assert connectivity.state.reachable
    assert not connectivity.error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))


def test_librdkafka_connection_failures_are_debug_and_other_lines_keep_their_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="consumer.kafka")
    out = LibrdkafkaLog(logging.getLogger("consumer.kafka"))
    out.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to ipv4#127.0.0.1:1 failed")
    out.log(logging.WARNING, "%s [%s] %s", "MAXPOLL", "rdkafka#consumer-1", "max.poll.interval.ms exceeded")
    assert [(r.levelno, r.getMessage().split(" ")[0]) for r in caplog.records] == [
        (logging.DEBUG, "FAIL"), (logging.WARNING, "MAXPOLL")]
