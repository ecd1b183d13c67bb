"""The ceilings, each a bare loop over one dependency, and beside each the service's own code on the same
data: consume (confluent-kafka), decode (fastavro vs consumer.decode.decoder), sink (psycopg binary COPY vs
consumer.sql.sink.SqlSink). Preparation (building records, decoding rows for a sink) is never timed; the
service's and the bare loop's turns alternate batch by batch, so noise on a shared machine hits both.
"""

from __future__ import annotations

import datetime as dt
import io
import time
import uuid
from collections.abc import Sequence
from typing import Any

import fastavro
import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from consumer.decode.avro import SchemalessAvroDecoder
from consumer.decode.decoder import Decoder
from consumer.decode.keys import key_source
from consumer.decode.schema import field_names, load_schema_file
from consumer.records import DecodedRecord, RawRecord
from consumer.service.pipeline import collapse_duplicates
from consumer.settings import Settings
from consumer.sql.engine import create_sink_engine
from consumer.sql.sink import SqlSink
from ops.bench.config import SCHEMA_FILE
from ops.bench.db import backend_cpu_seconds, libpq_url, named
from ops.bench.events import IDEMPOTENCY_KEY
from ops.bench.kafka import EndOffsets
from ops.bench.measure import PhaseResult, Progress, Stopwatch

_CONSUME_CHUNK = 10_000
_CONSUME_TIMEOUT_S = 1.0
_STALL_S = 60.0
BATCH_RECORDS: int = Settings.model_fields["batch_max_records"].default  # the service's default batch
_MAX_RECORD_BYTES: int = Settings.model_fields["max_record_bytes"].default


class BenchError(Exception):
    """A phase saw wrong counts or a dependency failed; the benchmark stops with this line."""


# --- consume ---------------------------------------------------------------------------------------------


def consume_ceiling(bootstrap: str, topic: str, ends: EndOffsets, group: str, progress: Progress) -> PhaseResult:
    """A bare confluent-kafka loop over the whole topic: consume(), count, nothing else.

    assign() from offset 0 skips the group join (reported for the service apart); librdkafka's fetch
    settings are its defaults, the same the service runs with. Timed from the first record: a one-record
    consume() waits for it, so no chunk fetched before the clock started is counted as free."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "log_level": 3})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    expected = sum(ends.values())
    series: list[tuple[float, int]] = []
    count = nbytes = 0
    last_progress = time.monotonic()
    try:
        while not (first := consumer.consume(num_messages=1, timeout=_CONSUME_TIMEOUT_S)):
            _stalled(last_progress, "consume ceiling: no records")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        messages = first
        while True:
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BenchError(f"consume ceiling: {error.str()}")
                count += 1
                nbytes += len(message.value() or b"")
            if messages:
                last_progress = time.monotonic()
                series.append((time.perf_counter() - wall0, count))
                progress(count)
            else:
                _stalled(last_progress, f"consume ceiling stuck at {count} of {expected}")
            if count >= expected:
                break
            messages = consumer.consume(num_messages=_CONSUME_CHUNK, timeout=_CONSUME_TIMEOUT_S)
        seconds, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        consumer.close()
    return PhaseResult("consume_ceiling", "consume ceiling (bare confluent-kafka)", count, nbytes, seconds, cpu,
                       series=series)


def fetch_values(bootstrap: str, topic: str, ends: EndOffsets, group: str, progress: Progress) -> list[bytes]:
    """Every value of the topic, read back (untimed) for the decode and sink phases, placed at the index the
    round-robin producer gave it (offset * partitions + partition), so those phases see the broker's bytes
    at the coordinates their RawRecords claim."""
    partitions = len(ends)
    expected = sum(ends.values())
    values: list[bytes | None] = [None] * expected
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "log_level": 3})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    count = 0
    last_progress = time.monotonic()
    try:
        while count < expected:
            messages = consumer.consume(num_messages=_CONSUME_CHUNK, timeout=_CONSUME_TIMEOUT_S)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BenchError(f"fetching values: {error.str()}")
                index = (message.offset() or 0) * partitions + (message.partition() or 0)
                if index >= expected:
                    raise BenchError(f"fetching values: offset {message.offset()} of partition "
                                     f"{message.partition()} is past the delivered end offsets {ends}")
                if values[index] is None:
                    count += 1
                values[index] = message.value() or b""
            if messages:
                last_progress = time.monotonic()
                progress(count)
            else:
                _stalled(last_progress, f"fetching values stuck at {count} of {expected}")
    finally:
        consumer.close()
    return [value for value in values if value is not None]


def _stalled(since: float, what: str) -> None:
    if time.monotonic() - since > _STALL_S:
        raise BenchError(f"{what} for {_STALL_S:.0f}s")


# --- decode ----------------------------------------------------------------------------------------------


def service_decoder() -> Decoder:
    """consumer.decode.decoder as the service builds it for SCHEMA_FILE + IDEMPOTENCY_KEY=field:event_id."""
    schema = load_schema_file(SCHEMA_FILE)
    return Decoder(SchemalessAvroDecoder(schema), key_source(IDEMPOTENCY_KEY, field_names(schema)),
                   IDEMPOTENCY_KEY, _MAX_RECORD_BYTES)


def raw_records(topic: str, values: Sequence[bytes], start: int, partitions: int, ts_ms: int) -> list[RawRecord]:
    """RawRecords as the service's source builds them; record i sits at (i % partitions, i // partitions),
    where the round-robin producer put it."""
    return [RawRecord(topic, i % partitions, i // partitions, ts_ms, None, value)
            for i, value in enumerate(values, start)]


def decode_pair(
    values: Sequence[bytes], topic: str, partitions: int, progress: Progress
) -> tuple[PhaseResult, PhaseResult]:
    """fastavro.schemaless_reader over the pre-fetched values, and consumer.decode.decoder.Decoder.decode_batch
    beside it on the same values."""
    schema = fastavro.parse_schema(load_schema_file(SCHEMA_FILE))
    decoder = service_decoder()
    reader = fastavro.schemaless_reader
    bare, ours = Stopwatch(), Stopwatch()
    ts_ms = int(time.time() * 1000)
    nbytes = 0
    for start in range(0, len(values), BATCH_RECORDS):
        chunk = values[start:start + BATCH_RECORDS]
        raws = raw_records(topic, chunk, start, partitions, ts_ms)
        nbytes += sum(len(v) for v in chunk)
        with bare:
            for value in chunk:
                reader(io.BytesIO(value), schema, None)
        bare.count(len(chunk))
        with ours:
            decoded = decoder.decode_batch(raws)
        ours.count(len(chunk))
        if len(decoded.decoded) != len(chunk):
            raise BenchError(f"service decoder set {len(decoded.dead_letters)} records aside: "
                             f"{decoded.dead_letters[:1]}")
        progress(start + len(chunk))
    return (
        PhaseResult("decode_ceiling", "decode ceiling (bare fastavro)", bare.records, nbytes, bare.seconds,
                    bare.cpu_seconds, series=bare.series),
        PhaseResult("service_decoder", "service decoder (consumer.decode.decoder)", ours.records, nbytes, ours.seconds,
                    ours.cpu_seconds, series=ours.series),
    )


# --- sink ------------------------------------------------------------------------------------------------

# The table SqlSink creates for schemas/event.avsc, written out by hand so the ceiling owes nothing to it.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid NOT NULL"), ("occurred_at", "timestamptz NOT NULL"), ("user_id", "bigint NOT NULL"),
    ("event_type", "text NOT NULL"), ("amount", "numeric(12,2)"), ("currency", "text"),
    ("page_url", "text NOT NULL"), ("score", "double precision NOT NULL"), ("is_test", "boolean NOT NULL"),
    ("event_date", "date NOT NULL"), ("attributes", "jsonb NOT NULL"), ("_kafka_topic", "text NOT NULL"),
    ("_kafka_partition", "integer NOT NULL"), ("_kafka_offset", "bigint NOT NULL"),
    ("_kafka_timestamp", "timestamptz"), ("_idempotency_key", "text PRIMARY KEY"),
)
_COPY_TYPES = ("uuid", "timestamptz", "int8", "text", "numeric", "text", "text", "float8", "bool", "date",
               "jsonb", "text", "int4", "int8", "timestamptz", "text")


class CopyCeiling:
    """The fastest idempotent bulk path PostgreSQL offers, straight on psycopg 3: per batch, one
    transaction of a binary COPY into a temporary table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING."""

    def __init__(self, url: str, table: str) -> None:
        self.table = table
        self.url = named(url, f"bench-{table}")
        self._conn = psycopg.connect(libpq_url(self.url), autocommit=True)
        target, stage = sql.Identifier(table), sql.Identifier(f"{table}_stage")
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in _COLUMNS)
        with self._conn.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE TABLE {} ({})").format(
                target, sql.SQL(", ").join(sql.SQL(f"{{}} {ddl}").format(sql.Identifier(n)) for n, ddl in _COLUMNS)))
            cursor.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DELETE ROWS").format(stage, target))
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(stage, names)
        self._insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (_idempotency_key) DO NOTHING"
                               ).format(target, names, names, stage)

    def write(self, rows: Sequence[tuple[Any, ...]]) -> int:
        with self._conn.transaction(), self._conn.cursor() as cursor:
            with cursor.copy(self._copy) as copy:
                copy.set_types(list(_COPY_TYPES))
                for row in rows:
                    copy.write_row(row)
            cursor.execute(self._insert)
            return cursor.rowcount

    def close(self) -> None:
        self._conn.close()


def ceiling_rows(values: Sequence[bytes], winners: Sequence[DecodedRecord], start: int, partitions: int,
                 schema: Any) -> list[tuple[Any, ...]]:
    """The rows the service will write, decoded by bare fastavro into the driver's native types."""
    reader = fastavro.schemaless_reader
    rows = []
    for record in winners:
        raw = record.raw
        value = values[raw.offset * partitions + raw.partition - start]
        event = reader(io.BytesIO(value), schema, None)
        assert isinstance(event, dict)
        rows.append((
            uuid.UUID(str(event["event_id"])), event["occurred_at"], event["user_id"], event["event_type"],
            event["amount"], event["currency"], event["page_url"], event["score"], event["is_test"],
            event["event_date"], Jsonb(event["attributes"]), raw.topic, raw.partition, raw.offset,
            _timestamp(raw.timestamp_ms), record.key,
        ))
    return rows


def _timestamp(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def sink_pair(
    url: str, values: Sequence[bytes], topic: str, partitions: int, tables: tuple[str, str], progress: Progress
) -> tuple[PhaseResult, PhaseResult]:
    """The COPY ceiling and consumer.sql.sink.SqlSink, each on a fresh table, fed the same de-duplicated rows
    batch by batch (BATCH_MAX_RECORDS records a batch, as the service cuts them)."""
    schema = fastavro.parse_schema(load_schema_file(SCHEMA_FILE))
    decoder = service_decoder()
    ceiling = CopyCeiling(url, tables[0])
    our_url = named(url, f"bench-{tables[1]}")
    ours = SqlSink(create_sink_engine(our_url, None), tables[1], upsert=False)
    ours.prepare(decoder.columns())
    bare_watch, our_watch = Stopwatch(), Stopwatch()
    written = [0, 0]
    ts_ms = int(time.time() * 1000)
    nbytes = 0
    try:
        for start in range(0, len(values), BATCH_RECORDS):
            chunk = values[start:start + BATCH_RECORDS]
            nbytes += sum(len(v) for v in chunk)
            winners = collapse_duplicates(
                decoder.decode_batch(raw_records(topic, chunk, start, partitions, ts_ms)).decoded, upsert=False
            ).winners
            rows = ceiling_rows(values, winners, start, partitions, schema)
            with bare_watch:
                written[0] += ceiling.write(rows)
            with our_watch:
                result = ours.write(winners)
            written[1] += sum(result.written.values())
            bare_watch.count(len(chunk))
            our_watch.count(len(chunk))
            progress(start + len(chunk))
        bare_db, our_db = backend_cpu_seconds(ceiling.url), backend_cpu_seconds(our_url)
    finally:
        ceiling.close()
        ours.close()
    return (
        PhaseResult("sink_ceiling", "sink ceiling (psycopg binary COPY)", bare_watch.records, nbytes,
                    bare_watch.seconds, bare_watch.cpu_seconds, bare_db,
                    series=bare_watch.series, extra={"rows_written": written[0], "table": tables[0]}),
        PhaseResult("service_sink", "service sink (consumer.sql.sink)", our_watch.records, nbytes,
                    our_watch.seconds, our_watch.cpu_seconds, our_db,
                    series=our_watch.series, extra={"rows_written": written[1], "table": tables[1]}),
    )
