"""The dead-letter guard against a real broker: a wave of undecodable records must not empty the topic into
the dead-letter queue. Once tripped the service holds (paused, nothing written, dead-lettered or committed),
stays in its group and live but not ready, and exits 0 on SIGTERM; an operator who decides the records are
really poison restarts it with a higher DLQ_MAX_RATIO and they are dead-lettered then.

One partition and batches that close only on count make the batch edges, and so the guard's decision,
deterministic: the first all-poison batch (100 records) meets a window of 100 poison + 100 valid records.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.db import count_rows
from support.events import encode, make_event
from support.kafka import Msg, TopicWriter, committed_offsets, read_all
from support.runs import service_env
from support.service import ServiceProcess
from support.waiting import wait_until

VALID, POISON = 1000, 1000

StartService = Callable[..., ServiceProcess]


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_a_wave_of_poison_trips_the_guard_and_nothing_more_is_dead_lettered_or_committed(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    sink_url: str,
    sink_table: str,
    service: StartService,
) -> None:
    topic = make_topic(partitions=1)
    group = unique("group")
    writer = TopicWriter(kafka_bootstrap, topic)
    writer.send([Msg(value=encode(make_event(i))) for i in range(VALID)])
    writer.send([Msg(value=b"\x00 a bad deploy upstream") for _ in range(POISON)])
    env = service_env(
        kafka_bootstrap, topic, group, sink_url, sink_table,
        BATCH_MAX_RECORDS="100",
        BATCH_MAX_WAIT_MS="60000",  # batches close on count only: their edges are offsets 0, 100, ...
        DLQ_GUARD_MIN_RECORDS="200",
        DLQ_MAX_RATIO="0.2",
    )

    held = service(env)
    wait_until(lambda: held.metric("consumer_dlq_guard_tripped"), 90, "the guard to trip", until=lambda v: v == 1)
    assert held.http_get("/readyz")[0] == 503
    assert held.http_get("/healthz")[0] == 200  # still polling: the group keeps it and its partition
    assert "dead-letter guard tripped" in held.log_text()
    assert held.metric("consumer_paused_partitions") == 1
    assert held.metric_sum("consumer_records_total", outcome="sunk") == VALID
    assert held.metric_sum("consumer_records_total", outcome="dlq") == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: VALID}
    assert held.terminate() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: VALID}
    assert count_rows(sink_url, sink_table) == VALID
    assert read_all(kafka_bootstrap, f"{topic}.dlq", expected=0) == []

    # The operator looked: the records are garbage indeed. A restart with the guard relaxed lets them go.
    released = service({**env, "DLQ_MAX_RATIO": "1.0"})
    wait_until(
        lambda: committed_offsets(kafka_bootstrap, group, topic, 1), 90, "every offset committed",
        until=lambda offsets: offsets == writer.end_offsets,
    )
    assert len(read_all(kafka_bootstrap, f"{topic}.dlq", expected=POISON)) == POISON
    assert released.metric("consumer_dlq_guard_tripped") == 0
    assert count_rows(sink_url, sink_table) == VALID
    assert released.terminate() == 0
