"""`dlq replay`: put selected dead-letter records back on their original topic (or `--to-topic`).

Each record keeps its key, value and original (non-`dlq.*`) headers, keeps `dlq.attempts` (so a record that
fails again is dead-lettered with its previous count plus one) and gains `dlq.replay.count`.

Progress is remembered by the replay's own consumer group on the dead-letter topic, named after the
selection (`<CONSUMER_GROUP_ID>.dlq-replay.<digest>`, or `--group`): after every chunk the broker has
acknowledged, the DLQ position just past that chunk is committed. An interrupted replay (Ctrl-C, a kill,
`--limit`) therefore resumes after the last acknowledged chunk; at most one chunk is produced twice after a
kill, which the sink absorbs because the idempotency key travels with the record. The group never joins
(partitions are assigned), so replays do not rebalance anything.

A replay reads up to the end the dead-letter topic had when it started: records that fail again while it
runs land after that end and wait for the next replay, so a replay always terminates.

A replay stays inside its lane: a header names each record's original topic, and anyone who can write to the
dead-letter topic writes headers, so a record goes back only to a consumed topic (CONSUMER_TOPICS) or one
named by `--allow-topic`, unless `--to-topic` names the destination for all. Records it may not send, and
letters published without their value (too large for the dead-letter topic), are refused: passed over,
counted by reason and topic in the summary, and the exit code is 1 (a dry run says what it would refuse).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Message, TopicPartition
from rich.console import Console

from consumer.errors import BrokerUnavailableError, ConfigError
from consumer.kafka import headers as h
from consumer.kafka.config import dead_letter_max_bytes, kafka_client_config
from consumer.kafka.errors import delivery_failure, translated
from consumer.kafka.produce import blocking_produce, idempotent_producer
from consumer.settings import Settings
from consumer.tools.dlq_inspect import (
    Inspection,
    dlq_topic,
    output_console,
    positive_int,
    previewer,
    render_text,
)
from consumer.tools.dlq_reading import (
    DlqEntry,
    Scan,
    Selection,
    add_selection_arguments,
    names,
    parse,
    partitions_of,
    read_topic,
    selection_from,
    tool_consumer,
)
from consumer.tools.progress import Advance, progress_bar, stderr_console

_FLUSH_TIMEOUT_S = 30.0
_DEFAULT_CHUNK = 500
_DRY_RUN_SHOWN = 50  # records a dry run lists; all of them are counted
EXIT_REFUSED = 1  # some selected records were refused (not an allowed topic, no value): the summary says which
VALUE_DROPPED = "value dropped"
TOPIC_NOT_ALLOWED = "topic not allowed"


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    dlq_topic: str
    selection: Selection
    group_id: str
    to_topic: str | None = None
    limit: int | None = None
    dry_run: bool = False
    from_beginning: bool = False
    keep_timestamp: bool = False
    chunk_records: int = _DEFAULT_CHUNK
    timeout_s: float = 30.0
    allowed_topics: frozenset[str] = frozenset()  # CONSUMER_TOPICS and --allow-topic; unused with to_topic
    message_max_bytes: int = 1_000_000  # the producer's limit: room for what the dead-letter topic holds


def refusal(entry: DlqEntry, plan: ReplayPlan) -> str | None:
    """Why `entry` may not be replayed under `plan`, or None when it may."""
    if entry.value_dropped:
        return VALUE_DROPPED
    if plan.to_topic is None and entry.original_topic not in plan.allowed_topics:
        return TOPIC_NOT_ALLOWED
    return None


@dataclass(slots=True)
class ReplayReport:
    plan: ReplayPlan
    resumed_from: dict[int, int]
    selected: Inspection
    replayed: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    committed: dict[int, int] = field(default_factory=dict)
    target_ends: dict[str, dict[int, int]] = field(default_factory=dict)  # from delivery reports
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, original topic)

    def refused_by_reason(self) -> dict[str, dict[str, int]]:
        grouped: dict[str, dict[str, int]] = {}
        for (reason, topic), n in sorted(self.refused.items()):
            grouped.setdefault(reason, {})[topic] = n
        return grouped

    def as_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "dlq_topic": plan.dlq_topic, "group": plan.group_id, "dry_run": plan.dry_run,
            "resumed_from": {str(p): o for p, o in sorted(self.resumed_from.items())},
            "scanned": self.selected.scan.scanned, "matched": self.selected.matched,
            "foreign": len(self.selected.foreign), "replayed": self.replayed,
            "to_topics": dict(sorted(self.by_target.items())),
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
            "end_offsets": {topic: {str(p): o for p, o in sorted(ends.items())}
                            for topic, ends in sorted(self.target_ends.items())},
            "selection": plan.selection.describe(), "limit": plan.limit,
            "allowed_topics": sorted(plan.allowed_topics) if plan.to_topic is None else [plan.to_topic],
            "refused": sum(self.refused.values()), "refused_by_reason": self.refused_by_reason(),
        }


def default_group(
    settings: Settings, selection: Selection, to_topic: str | None, allowed_extra: frozenset[str] = frozenset()
) -> str:
    """One remembered position per (selection, destination, --allow-topic): another filter starts from the
    beginning, so records refused before are found again when their topic is allowed."""
    allowed = f"|{','.join(sorted(allowed_extra))}" if allowed_extra else ""
    digest = hashlib.sha256(f"{selection.digest()}|{to_topic or ''}{allowed}".encode()).hexdigest()[:10]
    return f"{settings.consumer_group_id}.dlq-replay.{digest}"


def select(config: Mapping[str, Any], plan: ReplayPlan) -> ReplayReport:
    """1. find where this group got to  2. count what is selected up to the end the DLQ has now (this is
    all a dry run does)."""
    consumer = tool_consumer(config, plan.group_id)
    try:
        starts = {} if plan.from_beginning else _committed(consumer, plan.dlq_topic, plan.timeout_s)
        shown = min(plan.limit or _DRY_RUN_SHOWN, _DRY_RUN_SHOWN)  # counted in full, only a few kept
        selected = Inspection(Scan(plan.dlq_topic, starts=dict(starts)), plan.selection, shown)
        report = ReplayReport(plan, starts, selected)
        for raw in read_topic(consumer, selected.scan, plan.timeout_s):
            selected.add(raw)
            entry = parse(raw) if plan.dry_run else None
            if isinstance(entry, DlqEntry) and plan.selection.matches(entry):
                reason = refusal(entry, plan)
                if reason is not None:
                    report.refused[(reason, entry.original_topic)] += 1
    finally:
        consumer.close()
    return report


def publish(config: Mapping[str, Any], report: ReplayReport, advance: Advance | None = None) -> None:
    """3. re-publish the selection chunk by chunk up to the end `select` saw, committing the DLQ position
    after each chunk the broker acknowledged."""
    _Replayer(config, report.plan, report, advance or (lambda _n: None)).run(
        report.resumed_from, report.selected.scan.ends
    )


def to_replay(report: ReplayReport) -> int:
    """How many records `publish` will send (after a dry run: without the refused ones)."""
    matched, limit = report.selected.matched - sum(report.refused.values()), report.plan.limit
    return matched if limit is None else min(matched, limit)


def _committed(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    partitions = partitions_of(consumer, topic, timeout_s)
    with translated("kafka: cannot read the replay position"):
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    return {tp.partition: tp.offset for tp in found if tp.error is None and tp.offset != OFFSET_INVALID}


class _Replayer:
    def __init__(self, config: Mapping[str, Any], plan: ReplayPlan, report: ReplayReport, advance: Advance) -> None:
        self._config = config
        self._plan = plan
        self._report = report
        self._advance = advance
        self._producer = idempotent_producer(config, linger_ms=5,
                                             **{"message.max.bytes": plan.message_max_bytes})
        self._partitions: dict[str, int] = {}
        self._errors: list[KafkaError] = []
        self._positions: dict[int, int] = {}
        self._in_chunk = 0

    def run(self, starts: dict[int, int], ends: dict[int, int]) -> None:
        consumer = tool_consumer(self._config, self._plan.group_id)
        try:
            self._replay(consumer, starts, ends)
        finally:
            consumer.close()

    def _replay(self, consumer: Consumer, starts: dict[int, int], ends: dict[int, int]) -> None:
        limit = self._plan.limit
        scan = Scan(self._plan.dlq_topic, starts=dict(starts))
        exhausted = True
        for raw in read_topic(consumer, scan, self._plan.timeout_s, stop_at=ends):
            entry = parse(raw)
            if isinstance(entry, DlqEntry) and self._plan.selection.matches(entry):
                reason = refusal(entry, self._plan)
                if reason is not None:  # passed over like an unselected record, and counted
                    self._report.refused[(reason, entry.original_topic)] += 1
                elif limit is not None and self._report.replayed + self._in_chunk >= limit:
                    exhausted = False
                    break
                else:
                    self._produce(entry)
            self._positions[raw.partition] = raw.offset + 1
            if self._in_chunk >= self._plan.chunk_records:
                self._finish_chunk(consumer)
        if exhausted:  # everything up to the end was handled, trailing unselected records included
            for partition, end in ends.items():
                if end > starts.get(partition, 0):
                    self._positions[partition] = max(self._positions.get(partition, 0), end)
        self._finish_chunk(consumer)

    def _target(self, entry: DlqEntry) -> tuple[str, int | None]:
        if self._plan.to_topic:
            return self._plan.to_topic, None  # the partitioner places it (by key when keyed)
        topic = entry.original_topic
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = self._partition_count(topic)
        return topic, entry.original_partition if entry.original_partition < partitions else None

    def _partition_count(self, topic: str) -> int:
        with translated(f"kafka: cannot read metadata of {topic}"):
            metadata = self._producer.list_topics(topic, timeout=self._plan.timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            name = "--to-topic" if self._plan.to_topic else "dlq.original.topic"
            raise ConfigError(f"{name}: topic {topic!r} does not exist")
        return len(metadata.partitions)

    def _produce(self, entry: DlqEntry) -> None:
        topic, partition = self._target(entry)
        headers: list[tuple[str, bytes | None]] = [
            (n, v) for n, v in entry.raw.headers if not h.is_dead_letter_header(n)
        ]
        headers += [(h.ATTEMPTS, str(entry.attempts).encode()), (h.REPLAY_COUNT, str(entry.replay_count + 1).encode())]
        kwargs: dict[str, Any] = {"key": entry.raw.key, "value": entry.raw.value, "headers": headers,
                                  "on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if self._plan.keep_timestamp and entry.original_timestamp_ms is not None and entry.original_timestamp_ms >= 0:
            kwargs["timestamp"] = entry.original_timestamp_ms
        blocking_produce(self._producer, topic, f"replay produce to {topic}", **kwargs)
        self._producer.poll(0)
        self._report.by_target[topic] += 1
        self._in_chunk += 1

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._errors.append(error)
            return
        ends = self._report.target_ends.setdefault(message.topic() or "", {})
        partition, offset = message.partition() or 0, message.offset() or 0
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    def _finish_chunk(self, consumer: Consumer) -> None:
        """Wait for every record of the chunk to be acknowledged, then commit the DLQ position past it."""
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if self._errors:
            raise delivery_failure(self._errors[0], len(self._errors), "replay delivery")
        if remaining:
            raise BrokerUnavailableError(f"replay: {remaining} records not acknowledged in {_FLUSH_TIMEOUT_S:.0f}s")
        if self._positions:
            self._commit(consumer)
        self._report.replayed += self._in_chunk
        self._advance(self._in_chunk)
        self._in_chunk = 0

    def _commit(self, consumer: Consumer) -> None:
        offsets = [TopicPartition(self._plan.dlq_topic, p, o) for p, o in sorted(self._positions.items())]
        with translated("kafka: cannot commit the replay position"):
            result = consumer.commit(offsets=offsets, asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise BrokerUnavailableError(f"kafka: replay position refused: {failed[0].error}")
        self._report.committed.update(self._positions)


# --- command line ------------------------------------------------------------------------------------

REPLAY_EPILOG = """examples:
  consumer dlq replay --dry-run --stage sink            # what would go back, nothing sent
  consumer dlq replay --stage sink                      # after fixing the cause (e.g. widening a column)
  consumer dlq replay --error-class DecodeError --to-topic orders-fixed
  consumer dlq replay --limit 100                       # a first slice; running it again continues
  consumer dlq replay --from-beginning                  # ignore the remembered position, send all again
  consumer dlq replay --topic payments --allow-topic payments   # a topic outside CONSUMER_TOPICS, on purpose
only CONSUMER_TOPICS and --allow-topic topics (or --to-topic) are destinations; other records, and letters
published without their value, are refused and counted (exit 1);
each selection remembers how far it got (group <CONSUMER_GROUP_ID>.dlq-replay.<digest>, or --group);
replaying twice writes nothing twice when IDEMPOTENCY_KEY comes from the record (field, key or header)."""


def configure_replay(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--to-topic", metavar="TOPIC", help="publish here instead of each record's original topic")
    parser.add_argument("--allow-topic", action="append", metavar="TOPIC",
                        help="also replay records whose original topic is TOPIC (by default only CONSUMER_TOPICS); "
                             "repeat or comma-separate")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="replay at most N records this run")
    parser.add_argument("--dry-run", action="store_true", help="show what would be replayed, send nothing")
    parser.add_argument("--group", metavar="GROUP", help="consumer group remembering the position")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the beginning of the DLQ, not where this selection got to")
    parser.add_argument("--keep-timestamp", action="store_true",
                        help="give replayed records their original timestamp (default: now)")
    parser.add_argument("--chunk", type=positive_int, default=_DEFAULT_CHUNK, metavar="N",
                        help=f"records per acknowledged chunk before the position is committed ({_DEFAULT_CHUNK})")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format of the summary")
    parser.add_argument("--no-decode", action="store_true", help="dry run: preview raw bytes, not decoded values")


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    selection = selection_from(args)
    allowed_extra = names(args.allow_topic)
    plan = ReplayPlan(
        dlq_topic=dlq_topic(settings, args), selection=selection,
        group_id=args.group or default_group(settings, selection, args.to_topic, allowed_extra),
        to_topic=args.to_topic, allowed_topics=frozenset(settings.consumer_topics) | allowed_extra,
        message_max_bytes=dead_letter_max_bytes(settings),
        limit=args.limit, dry_run=args.dry_run, from_beginning=args.from_beginning,
        keep_timestamp=args.keep_timestamp, chunk_records=args.chunk, timeout_s=args.timeout,
    )
    errors = stderr_console()
    if settings.idempotency_key == "coordinates" and not plan.dry_run:
        errors.print("[yellow]warning[/]: IDEMPOTENCY_KEY=coordinates: the sink cannot recognise a record "
                     "replayed twice; only the remembered position prevents repeats")
    config = kafka_client_config(settings)
    report = select(config, plan)
    interrupted = False
    if not plan.dry_run:
        try:
            with progress_bar("replaying", to_replay(report), errors) as advance:
                publish(config, report, advance)
        except KeyboardInterrupt:  # the acknowledged chunks are committed: the next run resumes after them
            interrupted = True
    if args.format == "json":
        print(json.dumps({**report.as_json(), "interrupted": interrupted}, indent=2))
    else:
        _print_report(report, settings, args.no_decode)
        if interrupted:
            print("interrupted: run the same command again to resume after the last acknowledged chunk")
    if interrupted:
        return 130
    return EXIT_REFUSED if report.refused else 0


def _print_report(report: ReplayReport, settings: Settings, no_decode: bool) -> None:
    console = output_console()
    plan = report.plan
    if plan.dry_run:
        render_text(report.selected, previewer(settings, not no_decode), console)
        console.print(f"dry run: would replay {to_replay(report)} records (group {plan.group_id}); nothing was sent")
        _print_refused(report, console, "would be refused")
        return
    targets = ", ".join(f"{topic} {n}" for topic, n in sorted(report.by_target.items())) or "none"
    console.print(f"replayed {report.replayed} of {report.selected.matched} selected records from "
                  f"{plan.dlq_topic} ({targets})")
    console.print(f"  position (group {plan.group_id}): "
                  f"{ {p: o for p, o in sorted(report.committed.items())} or 'unchanged'}")
    _print_refused(report, console, "refused")
    if report.selected.foreign:
        console.print(f"  {len(report.selected.foreign)} foreign records (no dead-letter headers) left alone")


_REFUSAL_HINTS = {
    VALUE_DROPPED: "published without their value (too large for the dead-letter topic): nothing to send back; "
                   "dlq.value.size and dlq.value.sha256 identify the original",
    TOPIC_NOT_ALLOWED: "their original topic is not in CONSUMER_TOPICS; if that is really where they belong: "
                       "--topic NAME --allow-topic NAME (or --to-topic)",
}


def _print_refused(report: ReplayReport, console: Console, verb: str) -> None:
    for reason, topics in report.refused_by_reason().items():
        counted = ", ".join(f"{topic} {n}" for topic, n in topics.items())
        console.print(f"  {sum(topics.values())} {verb}, {reason} ({counted}): {_REFUSAL_HINTS[reason]}")
