"""`produce`: a load generator of random valid events for any Avro schema, with poison, duplicates and
tombstones mixed in at chosen ratios, paced at `--rate`, in schemaless Avro or Confluent wire format.

Each valid event gets a fresh value in its id field (`--id-field`, by default the first uuid field), which is
also the message key, so valid events never collide and a duplicate (an earlier valid event sent again, key
and bytes unchanged) is recognised by `IDEMPOTENCY_KEY=field:<id>` or `key`. The summary counts each kind
and the end offsets from delivery reports, so tests and the demo know exactly what to expect downstream.
The demo, the benchmark and docker-compose use `produce_events`.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from consumer.clock import Clock, SystemClock
from consumer.decode.keys import key_text
from consumer.decode.schema import AvroSchema, load_schema_file, parse_schema
from consumer.errors import BrokerUnavailableError, ConfigError
from consumer.kafka.errors import delivery_failure
from consumer.kafka.produce import blocking_produce, idempotent_producer
from consumer.settings import Settings
from consumer.tools.avro_random import RandomValues, encode, poison

KINDS = ("valid", "duplicate", "poison", "tombstone")
_RECENT = 1000  # earlier valid events a duplicate is drawn from
_FLUSH_TIMEOUT_S = 30.0
_WIRE_MAGIC = b"\x00"
_SLEEP_SLACK_S = 0.005  # pace in steps of at least this much: sleeping per record would cost more than it paces


@dataclass(frozen=True, slots=True)
class ProducePlan:
    topic: str
    count: int | None = 1000  # stop after this many records ...
    duration_s: float | None = None  # ... or after this long
    rate: float | None = None  # records per second; None: as fast as the broker takes them
    poison_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    tombstone_ratio: float = 0.0
    schema_id: int | None = None  # set: Confluent wire format with this id
    id_field: str | None = None
    seed: int | None = None

    def check(self) -> None:
        """Raise ConfigError naming the first bad option."""
        for name in ("poison_ratio", "duplicate_ratio", "tombstone_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be between 0 and 1")
        if self.poison_ratio + self.duplicate_ratio + self.tombstone_ratio > 1.0:
            raise ConfigError("--poison-ratio: poison, duplicate and tombstone ratios add up to more than 1")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate: must be above 0")
        if (self.count is None) == (self.duration_s is None):
            raise ConfigError("--count: give either --count or --duration")


@dataclass(slots=True)
class ProduceReport:
    topic: str
    counts: Counter[str] = field(default_factory=Counter)
    end_offsets: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "total": self.total, **{kind: self.counts[kind] for kind in KINDS},
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "elapsed_s": round(self.elapsed_s, 3), "interrupted": self.interrupted,
        }


class Pacer:
    """Holds a producer to `rate` records per second on average, sleeping in small steps."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._start = clock.monotonic()

    def wait_for(self, sent: int) -> None:
        """Before sending record number `sent` (0-based): sleep until its slot has come."""
        if not self._interval:
            return
        ahead = self._start + sent * self._interval - self._clock.monotonic()
        if ahead >= _SLEEP_SLACK_S:
            self._clock.sleep(ahead)


def default_id_field(schema: AvroSchema) -> str | None:
    """The first top-level uuid field (string with logicalType uuid), if any."""
    for f in schema["fields"]:
        kind = f["type"]
        if isinstance(kind, dict) and kind.get("logicalType") == "uuid":
            return str(f["name"])
    return None


class EventMaker:
    """Makes the next record of each kind; valid ones get a fresh id, duplicates repeat a recent valid one."""

    def __init__(self, schema: AvroSchema, plan: ProducePlan, rng: random.Random) -> None:
        self._schema = schema
        self._values = RandomValues(schema, rng)
        self._rng = rng
        self._plan = plan
        self._id_kind = self._id_type(schema, plan.id_field)
        self._recent: list[tuple[bytes | None, bytes]] = []

    @staticmethod
    def _id_type(schema: AvroSchema, name: str | None) -> str | None:
        if name is None:
            return None
        for f in schema["fields"]:
            if f["name"] == name:
                kind = f["type"]
                base = kind.get("type") if isinstance(kind, dict) else kind
                if base in ("string", "int", "long"):
                    return str(base)
                raise ConfigError(f"--id-field: {name!r} must be a string, int or long field")
        raise ConfigError(f"--id-field: {name!r} is not a field of the schema")

    def kind(self) -> str:
        roll, plan = self._rng.random(), self._plan
        if roll < plan.poison_ratio:
            return "poison"
        roll -= plan.poison_ratio
        if roll < plan.tombstone_ratio:
            return "tombstone"
        roll -= plan.tombstone_ratio
        if roll < plan.duplicate_ratio and self._recent:
            return "duplicate"
        return "valid"

    def make(self, kind: str) -> tuple[bytes | None, bytes | None]:
        """(key, value) of the next record of `kind`."""
        if kind == "duplicate":
            return self._rng.choice(self._recent)
        key, value = self._valid()
        if kind == "valid":
            self._recent.append((key, value))
            if len(self._recent) > _RECENT:
                self._recent.pop(0)
            return key, value
        if kind == "tombstone":
            return key, None
        return key, self._wire(poison(self._body(value), self._rng))

    def _valid(self) -> tuple[bytes | None, bytes]:
        event = self._values.record()
        key: bytes | None = None
        if self._plan.id_field is not None:
            event[self._plan.id_field] = self._fresh_id()
            text = key_text(event[self._plan.id_field])
            key = text.encode() if text else None
        return key, self._wire(encode(self._schema, event))

    def _fresh_id(self) -> Any:
        if self._id_kind == "string":
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        bound = 2**31 - 1 if self._id_kind == "int" else 2**63 - 1
        return self._rng.randint(1, bound)

    def _wire(self, body: bytes) -> bytes:
        if self._plan.schema_id is None:
            return body
        return _WIRE_MAGIC + struct.pack(">I", self._plan.schema_id) + body

    def _body(self, value: bytes) -> bytes:
        return value[5:] if self._plan.schema_id is not None else value


def produce_events(
    config: Mapping[str, Any], schema: AvroSchema, plan: ProducePlan, clock: Clock | None = None,
    advance: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Produce per `plan`, wait for every delivery report, return what was produced where."""
    plan.check()
    clock = clock or SystemClock()
    maker = EventMaker(schema, plan, random.Random(plan.seed))
    report = ProduceReport(plan.topic)
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
            return
        partition, offset = message.partition() or 0, message.offset() or 0
        report.end_offsets[partition] = max(report.end_offsets.get(partition, 0), offset + 1)

    producer = idempotent_producer(config, linger_ms=10)
    started = clock.monotonic()
    pacer = Pacer(plan.rate, clock)
    try:
        while not _done(plan, report.total, clock.monotonic() - started):
            pacer.wait_for(report.total)
            kind = maker.kind()
            key, value = maker.make(kind)
            _send(producer, plan.topic, key, value, delivered)
            report.counts[kind] += 1
            if advance is not None:
                advance(1)
    except KeyboardInterrupt:
        report.interrupted = True
    _finish(producer, errors)
    report.elapsed_s = clock.monotonic() - started
    return report


def _done(plan: ProducePlan, sent: int, elapsed_s: float) -> bool:
    if plan.count is not None:
        return sent >= plan.count
    return plan.duration_s is not None and elapsed_s >= plan.duration_s


def _send(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
          delivered: Callable[[KafkaError | None, Message], None]) -> None:
    blocking_produce(producer, topic, f"produce to {topic}", value=value, key=key, on_delivery=delivered)
    producer.poll(0)


def _finish(producer: Producer, errors: list[KafkaError]) -> None:
    remaining = producer.flush(_FLUSH_TIMEOUT_S)
    if errors:
        raise delivery_failure(errors[0], len(errors), "produce")
    if remaining:
        raise BrokerUnavailableError(f"produce: {remaining} records not acknowledged in {_FLUSH_TIMEOUT_S:.0f}s")


# --- command line ------------------------------------------------------------------------------------

PRODUCE_EPILOG = """examples:
  consumer produce --schema {event_schema} --topic events --count 10000
  consumer produce --schema {all_types_schema} --topic types --count 100   # every Avro type
  consumer produce --topic events --rate 500 --duration 60 --poison-ratio 0.01 --duplicate-ratio 0.05
  consumer produce --topic events --wire-format --registry-url http://localhost:8081 --schema-id 3
  consumer produce --count 100 --format json | jq .end_offsets
defaults come from the service settings: --topic from CONSUMER_TOPICS, --schema from SCHEMA_FILE,
--registry-url from SCHEMA_REGISTRY_URL. Without --schema-id, wire format takes the latest <topic>-value.
Both schemas above are the examples shipped with the package."""


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def configure_produce(parser: argparse.ArgumentParser) -> None:
    from consumer.tools.dlq_inspect import positive_int

    parser.add_argument("--topic", help="topic to produce to (default: the first of CONSUMER_TOPICS)")
    parser.add_argument("--schema", type=Path, help="Avro schema file (.avsc) (default SCHEMA_FILE)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--count", type=positive_int, help="records to produce (default 1000)")
    size.add_argument("--duration", type=float, metavar="S", help="produce for this many seconds instead")
    parser.add_argument("--rate", type=float, metavar="N", help="records per second (default: as fast as possible)")
    parser.add_argument("--poison-ratio", type=_ratio, default=0.0, help="share of undecodable values (0..1)")
    parser.add_argument("--duplicate-ratio", type=_ratio, default=0.0,
                        help="share of records repeating an earlier valid one, key and bytes (0..1)")
    parser.add_argument("--tombstone-ratio", type=_ratio, default=0.0, help="share of null values (0..1)")
    parser.add_argument("--wire-format", action="store_true",
                        help="Confluent wire format (magic byte, schema id) instead of schemaless Avro")
    parser.add_argument("--registry-url", help="schema registry for --wire-format (default SCHEMA_REGISTRY_URL)")
    parser.add_argument("--schema-id", type=positive_int, help="registry id of the schema for --wire-format")
    parser.add_argument("--id-field", help="field given a fresh value per valid event, also the message key "
                                           "(default: the first uuid field)")
    parser.add_argument("--partitions", type=positive_int, default=3,
                        help="partitions if the topic has to be created (default 3)")
    parser.add_argument("--seed", type=int, help="random seed, for a repeatable stream")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format of the summary")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the produce options say about the settings, so CONSUMER_TOPICS/SCHEMA_FILE are optional."""
    overrides: dict[str, Any] = {}
    if args.topic:
        overrides["consumer_topics"] = args.topic
    if args.schema:
        overrides["schema_file"] = str(args.schema)
    if args.registry_url:
        overrides["schema_registry_url"] = args.registry_url
    return overrides


def _schema_for(settings: Settings, args: argparse.Namespace, topic: str) -> tuple[AvroSchema, int | None]:
    """The schema to generate from and, for wire format, its registry id."""
    if not args.wire_format:
        if settings.schema_file is None:
            raise ConfigError("SCHEMA_FILE: required by produce (or pass --schema)")
        return load_schema_file(settings.schema_file), None
    from consumer.decode.registry import SchemaNotFound
    from consumer.service.components import registry_client

    if not settings.schema_registry_url:
        raise ConfigError("SCHEMA_REGISTRY_URL: required by produce --wire-format (or pass --registry-url)")
    registry = registry_client(settings)
    try:
        if args.schema_id is not None:
            found = (args.schema_id, registry.schema(args.schema_id))
        else:
            latest = registry.latest(f"{topic}-value")
            if latest is None:
                raise ConfigError(f"--schema-id: subject {topic}-value has no schema in the registry")
            found = latest
    except SchemaNotFound:
        raise ConfigError(f"--schema-id: {args.schema_id} is not in the registry") from None
    schema_id, registry_schema = found
    if settings.schema_file is not None and args.schema:
        return load_schema_file(settings.schema_file), schema_id
    try:
        return parse_schema(registry_schema), schema_id
    except ValueError as exc:
        raise ConfigError(f"--schema-id: schema {schema_id} is not usable: {exc}") from None


def run_produce(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.kafka.admin import ensure_topic
    from consumer.kafka.config import kafka_client_config
    from consumer.tools.progress import progress_bar, stderr_console

    topic = settings.consumer_topics[0]
    schema, schema_id = _schema_for(settings, args, topic)
    plan = ProducePlan(
        topic=topic, count=args.count if args.count or args.duration else 1000, duration_s=args.duration,
        rate=args.rate, poison_ratio=args.poison_ratio, duplicate_ratio=args.duplicate_ratio,
        tombstone_ratio=args.tombstone_ratio, schema_id=schema_id,
        id_field=args.id_field or default_id_field(schema), seed=args.seed,
    )
    plan.check()
    config = kafka_client_config(settings)
    ensure_topic(config, topic, args.partitions)
    total = plan.count if plan.count is not None else (int(plan.rate * plan.duration_s)
                                                       if plan.rate and plan.duration_s else None)
    with progress_bar(f"producing to {topic}", total, stderr_console()) as advance:
        report = produce_events(config, schema, plan, advance=advance)
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(summary_text(report))
    return 130 if report.interrupted else 0


def summary_text(report: ProduceReport) -> str:
    mix = ", ".join(f"{kind} {report.counts[kind]}" for kind in KINDS)
    rate = report.total / report.elapsed_s if report.elapsed_s > 0 else 0.0
    ends = ", ".join(f"{p}:{o}" for p, o in sorted(report.end_offsets.items()))
    return (f"produced {report.total} records to {report.topic} in {report.elapsed_s:.1f}s ({rate:,.0f}/s): {mix}\n"
            f"  end offsets {ends or 'none'}" + ("\n  interrupted" if report.interrupted else ""))
