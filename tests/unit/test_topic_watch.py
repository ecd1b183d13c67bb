"""TopicWatch: a missing source topic is waited for, reported once and reminded every interval, never created."""

from __future__ import annotations

import logging

import pytest
from fakeclock import FakeClock

from consumer.errors import BrokerUnavailableError
from consumer.observability.health import HealthState
from consumer.service.topic_watch import TopicWatch


class Broker:
    """What the watch asks: the missing topics, or no answer at all."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        self.answers = True

    def find_missing(self) -> list[str]:
        if not self.answers:
            raise BrokerUnavailableError("kafka: no broker answered in 5 s")
        return list(self.missing)


NOTICED = "topic does not exist; waiting for it to be created (it is not created for you, nor its dead-letter topic)"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_missing_topic_warns_once_then_reminds_every_interval_and_readiness_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, broker = FakeClock(), Broker(["orders"])
    health = HealthState(clock, 60)
    health.joined = health.sink_ok = True
    watch = TopicWatch(broker.find_missing, health, clock, reminder_interval_s=60)
    caplog.set_level(logging.INFO, logger="consumer.service.topic_watch")

    assert watch.check() is False
    assert health.not_ready_because() == "topic orders does not exist"
    for _ in range(29):  # a check every 2 s for 58 s: no line per check
        clock.advance(2)
        watch.check()
    assert _warnings(caplog) == [NOTICED]
    clock.advance(2)  # 60 s after the first notice
    watch.check()
    clock.advance(2)
    watch.check()
    assert _warnings(caplog)[1:] == ["topic still does not exist"]
    clock.advance(58)
    watch.check()
    assert _warnings(caplog)[1:] == ["topic still does not exist"] * 2

    broker.missing = []
    assert watch.check() is True
    assert health.not_ready_because() is None
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["topic exists now; consuming it"]


def test_a_broker_that_does_not_answer_leaves_what_is_known_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, broker = FakeClock(), Broker(["a", "b"])
    health = HealthState(clock, 60)
    watch = TopicWatch(broker.find_missing, health, clock)
    watch.check()
    broker.answers = False
    caplog.clear()
    for _ in range(5):
        clock.advance(2)
        assert watch.check() is False
    assert _warnings(caplog) == ["could not check the topics; trying again"]
    assert health.not_ready_because() == "topic a does not exist; topic b does not exist"
