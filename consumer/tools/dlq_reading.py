"""Reading the dead-letter topic, shared by `dlq inspect` and `dlq replay`: a dead-letter record parsed from
its headers, the selection (filters) and the reader.

The reader assigns every partition and reads from a start offset up to the end it saw when it got there
(librdkafka's partition EOF, which comes from the high watermark of a fetch response), with no extra
round trip; it also holds on Tansu, the demo's broker, whose ListOffsets(latest) is wrong once a partition
holds multi-record batches. Reading never joins a group and never commits, so neither the service's group
nor the replay's position moves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from consumer.errors import BrokerUnavailableError, ConfigError
from consumer.kafka import headers as h
from consumer.kafka.errors import client_construction, translate, translated
from consumer.records import RawRecord, Stage

_PREVIEW_CHARS = 40
_POLL_RECORDS = 1000
_POLL_TIMEOUT_S = 1.0
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# --- records -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One dead-letter record: where it sits in the DLQ, where it came from, why it failed."""

    raw: RawRecord  # as read from the dead-letter topic (topic, partition, offset are the DLQ's)
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int | None
    stage: str
    error_class: str
    error_message: str
    consumer_group: str
    failed_at: dt.datetime | None
    attempts: int
    replay_count: int
    value_dropped: bool = False  # published without its value (too large for the dead-letter topic)

    def as_json(self, preview: str) -> dict[str, Any]:
        return {
            "dlq_partition": self.raw.partition, "dlq_offset": self.raw.offset,
            "original_topic": self.original_topic, "original_partition": self.original_partition,
            "original_offset": self.original_offset, "original_timestamp_ms": self.original_timestamp_ms,
            "stage": self.stage, "error_class": self.error_class, "error_message": self.error_message,
            "consumer_group": self.consumer_group,
            "failed_at": iso(self.failed_at), "attempts": self.attempts, "replay_count": self.replay_count,
            "key": bytes_preview(self.raw.key) if self.raw.key is not None else None, "value_bytes": self.raw.size, "value_preview": preview,
            "value_dropped": self.value_dropped,
        }


@dataclass(frozen=True, slots=True)
class ForeignRecord:
    """A record on the dead-letter topic that lacks the dead-letter headers (written by something else)."""

    raw: RawRecord
    missing: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"dlq_partition": self.raw.partition, "dlq_offset": self.raw.offset,
                "missing_headers": list(self.missing), "value_bytes": self.raw.size,
                "value_preview": bytes_preview(self.raw.value)}


def header_map(raw: RawRecord) -> dict[str, str]:
    """Headers as text (the last of a repeated name wins); values that are not UTF-8 are replaced."""
    return {name: (value or b"").decode("utf-8", errors="replace") for name, value in raw.headers}


def parse(raw: RawRecord) -> DlqEntry | ForeignRecord:
    """A dead-letter entry, or a foreign record when a required header is missing or malformed."""
    headers = header_map(raw)
    missing = tuple(name for name in h.REQUIRED if not headers.get(name))
    partition, offset = _int(headers.get(h.ORIGINAL_PARTITION)), _int(headers.get(h.ORIGINAL_OFFSET))
    if partition is None and h.ORIGINAL_PARTITION not in missing:
        missing += (h.ORIGINAL_PARTITION,)
    if offset is None and h.ORIGINAL_OFFSET not in missing:
        missing += (h.ORIGINAL_OFFSET,)
    if missing or partition is None or offset is None:
        return ForeignRecord(raw, missing)
    return DlqEntry(
        raw=raw, original_topic=headers[h.ORIGINAL_TOPIC], original_partition=partition, original_offset=offset,
        original_timestamp_ms=_int(headers.get(h.ORIGINAL_TIMESTAMP)), stage=headers[h.STAGE],
        error_class=headers[h.ERROR_CLASS], error_message=headers.get(h.ERROR_MESSAGE, ""),
        consumer_group=headers.get(h.CONSUMER_GROUP, ""), failed_at=_timestamp(headers.get(h.FAILED_AT)),
        attempts=_int(headers.get(h.ATTEMPTS)) or 0, replay_count=_int(headers.get(h.REPLAY_COUNT)) or 0,
        value_dropped=headers.get(h.VALUE_DROPPED) == "true",
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _timestamp(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


# --- the selection -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """The filters shared by inspect and replay; an empty set or None means "any"."""

    stages: frozenset[str] = frozenset()
    error_classes: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def matches(self, entry: DlqEntry) -> bool:
        if self.stages and entry.stage not in self.stages:
            return False
        if self.error_classes and entry.error_class not in self.error_classes:
            return False
        if self.topics and entry.original_topic not in self.topics:
            return False
        if self.since is not None and (entry.failed_at is None or entry.failed_at < self.since):
            return False
        return not (self.until is not None and (entry.failed_at is None or entry.failed_at >= self.until))

    def describe(self) -> dict[str, Any]:
        return {"stage": sorted(self.stages), "error_class": sorted(self.error_classes),
                "topic": sorted(self.topics), "since": iso(self.since), "until": iso(self.until)}

    def digest(self) -> str:
        """A short stable name for this selection (the replay's consumer group is named after it)."""
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_moment(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`--since`/`--until`: ISO 8601 (`2024-05-01`, `2024-05-01T12:00:00Z`; naive means UTC) or an age
    before now (`90s`, `30m`, `2h`, `7d`)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(**{_UNITS[unit]: amount})
    parsed = _timestamp(text.strip())
    if parsed is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2024-05-01T12:00:00Z) nor an age like 30m, 2h, 7d"
        )
    return parsed


def names(values: Sequence[str] | None) -> frozenset[str]:
    """A repeatable, comma-separated option's names."""
    return frozenset(v.strip() for value in values or () for v in value.split(",") if v.strip())


def selection_from(args: argparse.Namespace) -> Selection:
    stages = names(args.stage)
    unknown = stages - {stage.value for stage in Stage}
    if unknown:
        raise ConfigError(f"--stage: unknown stage {sorted(unknown)}; one of {[s.value for s in Stage]}")
    if args.since and args.until and args.since >= args.until:
        raise ConfigError("--since: must be before --until")
    return Selection(stages, names(args.error_class), names(args.topic), args.since, args.until)


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dlq-topic", help="dead-letter topic to read (default DLQ_TOPIC, or <first topic>.dlq)")
    parser.add_argument("--stage", action="append", metavar="STAGE",
                        help="only this stage (decode, validate, transform, sink); repeat or comma-separate")
    parser.add_argument("--error-class", action="append", metavar="CLASS",
                        help="only this error class (e.g. RecordRejectedError); repeat or comma-separate")
    parser.add_argument("--topic", action="append", metavar="TOPIC",
                        help="only records that came from this topic; repeat or comma-separate")
    parser.add_argument("--since", type=parse_moment, metavar="TIME",
                        help="only records dead-lettered at or after TIME (ISO 8601, or an age: 30m, 2h, 7d)")
    parser.add_argument("--until", type=parse_moment, metavar="TIME",
                        help="only records dead-lettered before TIME (ISO 8601, or an age)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="give up when the broker does not answer for this long (default 30)")


# --- reading -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Scan:
    """What a read covered: where it started and where it stopped, per partition of the DLQ topic."""

    topic: str
    starts: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    scanned: int = 0


def tool_consumer(config: Mapping[str, Any], group_id: str) -> Consumer:
    """A consumer that only assigns (never subscribes, so it joins no group) and never auto-commits."""
    with client_construction():
        return Consumer({
            **config, "group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        })


def partitions_of(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    with translated(f"kafka: cannot read metadata of {topic}"):
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigError(f"DLQ_TOPIC: topic {topic!r} does not exist")
    return sorted(metadata.partitions)


def read_topic(
    consumer: Consumer, scan: Scan, timeout_s: float, stop_at: Mapping[int, int] | None = None
) -> Iterator[RawRecord]:
    """Records of `scan.topic` from `scan.starts` (default: the beginning) until every partition reached its
    end: the end seen on arrival (partition EOF), or `stop_at` when given (so records that arrive meanwhile,
    such as replayed records failing again, are left for next time). Fills `scan.ends` as partitions finish.
    """
    partitions = list(stop_at) if stop_at is not None else partitions_of(consumer, scan.topic, timeout_s)
    with translated(f"kafka: cannot assign {scan.topic}"):
        consumer.assign([TopicPartition(scan.topic, p, scan.starts.get(p, OFFSET_BEGINNING)) for p in partitions])
    pending = set(partitions)
    if stop_at is not None:
        for partition in partitions:
            if stop_at[partition] <= scan.starts.get(partition, 0):
                pending.discard(partition)
                scan.ends[partition] = stop_at[partition]
    idle_since: float | None = None
    while pending:
        messages = _consume(consumer)
        if not messages:
            idle_since = _check_idle(idle_since, timeout_s, scan.topic, pending)
            continue
        idle_since = None
        for message in messages:
            partition = message.partition() or 0
            if partition not in pending:
                continue
            error = message.error()
            if error is not None:
                _on_error(error, scan, partition, pending, stop_at, message)
                continue
            raw = _to_raw(message)
            if stop_at is not None and raw.offset >= stop_at[partition]:
                pending.discard(partition)
                scan.ends[partition] = stop_at[partition]
                continue
            scan.scanned += 1
            yield raw
            if stop_at is not None and raw.offset + 1 >= stop_at[partition]:
                pending.discard(partition)
                scan.ends[partition] = stop_at[partition]


def _consume(consumer: Consumer) -> list[Message]:
    with translated():
        return consumer.consume(num_messages=_POLL_RECORDS, timeout=_POLL_TIMEOUT_S)


def _check_idle(idle_since: float | None, timeout_s: float, topic: str, pending: set[int]) -> float:
    # Each empty consume waited _POLL_TIMEOUT_S, so counting them measures the silence without a clock.
    waited = (idle_since or 0.0) + _POLL_TIMEOUT_S
    if waited >= timeout_s:
        raise BrokerUnavailableError(
            f"kafka: no answer for {timeout_s:.0f}s while reading {topic} (partitions {sorted(pending)} unfinished)"
        )
    return waited


def _on_error(
    error: KafkaError, scan: Scan, partition: int, pending: set[int], stop_at: Mapping[int, int] | None,
    message: Message,
) -> None:
    if error.code() == KafkaError._PARTITION_EOF:  # the end, as a fetch response's high watermark says
        end = message.offset() or 0
        pending.discard(partition)
        scan.ends[partition] = end if stop_at is None else min(end, stop_at[partition])
        return
    if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION) and not error.fatal():
        raise ConfigError(f"DLQ_TOPIC: {scan.topic}: {error.str()}")
    raise translate(error)


def _to_raw(message: Message) -> RawRecord:
    _kind, timestamp = message.timestamp()
    headers: Any = message.headers() or ()
    return RawRecord(message.topic() or "", message.partition() or 0, message.offset() or 0, timestamp,
                     message.key(), message.value(), tuple(headers))


def bytes_preview(value: bytes | None) -> str:
    if value is None:
        return "<null>"
    text = value.decode("utf-8", errors="replace")
    if text.isprintable() and "\ufffd" not in text:
        return shorten(text)
    return shorten(repr(value)[2:-1])  # printable bytes as they are, the others as \xNN


def shorten(text: str, limit: int = _PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
