"""The sink's table DDL when several processes of one group start at once (WORKERS, a rollout of pods).

Each racer has its own engine, as separate processes would; a barrier releases them together so their
"table missing?" looks overlap. Losing the race must never stop a process (CI once saw exit 1 with
"table ... already exists" when two services started side by side on SQLite).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from support.db import make_engine

from consumer.errors import ConsumerError
from consumer.schema import ColumnKind, ColumnSpec
from consumer.sink import SqlSink, create_sink_engine

RACERS = 6
BASE = [ColumnSpec("event_id", ColumnKind.TEXT, nullable=False), ColumnSpec("n", ColumnKind.BIGINT, True)]
EVOLVED = [*BASE, ColumnSpec("note", ColumnKind.TEXT, nullable=True)]


def _race(sink_url: str, table: str, columns: list[ColumnSpec]) -> list[BaseException]:
    """Prepare the same table from RACERS sinks at once; the errors they raised (none expected)."""
    barrier = threading.Barrier(RACERS)
    errors: list[BaseException] = []
    sinks = [SqlSink(create_sink_engine(sink_url, None), table, upsert=False) for _ in range(RACERS)]

    def prepare(sink: SqlSink) -> None:
        barrier.wait()
        try:
            sink.prepare(columns)
        except ConsumerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for sink in sinks:
        sink.close()
    return errors


def _columns(sink_url: str, table: str) -> set[str]:
    engine = make_engine(sink_url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


@pytest.mark.parametrize("step", ["create", "add column"])
def test_processes_racing_to_create_or_evolve_the_table_all_go_on(
    sink_url: str, sink_table: str, step: str
) -> None:
    race: Callable[[list[ColumnSpec]], list[BaseException]] = lambda cols: _race(sink_url, sink_table, cols)
    if step == "add column":
        assert race(BASE) == []
    assert race(EVOLVED) == []
    assert {"event_id", "n", "note", "_idempotency_key", "_kafka_offset"} <= _columns(sink_url, sink_table)
