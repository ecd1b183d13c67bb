"""TopicWatch: source topics that do not exist yet, waited for instead of created.

Topics are often created after the consumer is deployed, and a misspelt one must not be created at all.
While a source topic is missing, /readyz says `topic <name> does not exist`, one WARNING says so when it is
noticed and a reminder follows every `reminder_interval_s` (never a line per check). The subscription picks
the topic up by itself once it appears (librdkafka refreshes the metadata of a subscribed topic it does not
know); this watch then creates the dead-letter topic, which is ours to create only from an existing source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from consumer.clock import Clock
from consumer.errors import TransientError
from consumer.observability.health import HealthState

log = logging.getLogger(__name__)

REMINDER_INTERVAL_S = 60.0
CHECK_INTERVAL_S = 2.0  # a metadata request while waiting: the topic shows up within this of its creation
CHECK_TIMEOUT_S = 5.0  # one background check's metadata wait
CLOSE_WAIT_S = CHECK_TIMEOUT_S

# Names the source topics that are missing; when none is, has made sure the dead-letter topic exists.
FindMissing = Callable[[], Sequence[str]]


class TopicWatch:
    def __init__(
        self, find_missing: FindMissing, health: HealthState, clock: Clock,
        reminder_interval_s: float = REMINDER_INTERVAL_S, check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._find_missing = find_missing
        self._health = health
        self._clock = clock
        self._reminder_interval_s = reminder_interval_s
        self._check_interval_s = check_interval_s
        self._missing: tuple[str, ...] = ()
        self._remind_at = 0.0
        self._unanswered = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._wait_for_topics, name="topic-watch", daemon=True)

    def check(self) -> bool:
        """One look at the broker; True once every source topic exists (and the dead-letter topic with it)."""
        try:
            missing = tuple(self._find_missing())
        except TransientError as exc:
            # The broker did not answer: nothing learnt. The broker's own connectivity line says why.
            if not self._unanswered:
                log.warning("could not check the topics; trying again", extra={"error": str(exc)})
            self._unanswered = True
            return False
        self._unanswered = False
        self._report(missing)
        return not missing

    def _report(self, missing: tuple[str, ...]) -> None:
        now = self._clock.monotonic()
        for topic in missing:
            if topic not in self._missing:
                log.warning("topic does not exist; waiting for it to be created (it is not created for you, "
                            "nor its dead-letter topic)", extra={"topic": topic})
        for topic in self._missing:
            if topic not in missing:
                log.info("topic exists now; consuming it", extra={"topic": topic})
        if missing and missing == self._missing and now >= self._remind_at:
            log.warning("topic still does not exist", extra={"topics": list(missing)})
        if missing and (missing != self._missing or now >= self._remind_at):
            self._remind_at = now + self._reminder_interval_s
        self._missing = missing
        self._health.missing_topics = missing

    def start(self) -> None:
        """Keep checking in the background until every topic exists (call after a `check()` said no)."""
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a check in flight ends within its metadata timeout; do not wait longer
            self._thread.join(CLOSE_WAIT_S)

    def _wait_for_topics(self) -> None:
        while not self._stop.wait(self._check_interval_s):
            if self.check():
                return
