"""`dlq inspect`: read the dead-letter topic without disturbing any consumer group, summarise and list it.

Reading (the records, the selection, the reader) is consumer/tools/dlq_reading.py, shared with `dlq replay`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from consumer.decode.decoder import ValueDecoder
from consumer.decode.schema import to_json_text
from consumer.errors import ConsumerError
from consumer.kafka import headers as h
from consumer.kafka.config import kafka_client_config
from consumer.records import RawRecord
from consumer.service.components import value_decoder
from consumer.settings import Settings
from consumer.tools.dlq_reading import (
    DlqEntry,
    ForeignRecord,
    Scan,
    Selection,
    add_selection_arguments,
    bytes_preview,
    header_map,
    iso,
    parse,
    read_topic,
    selection_from,
    shorten,
    tool_consumer,
)

_PIPE_WIDTH = 160
_TEXT_LIMIT = 50  # a table longer than this is not read by anyone; the summary still counts everything
_MESSAGE_CHARS = 60


# --- inspecting --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Inspection:
    """The matching entries (all of them counted, the first `limit` kept) and every foreign record."""

    scan: Scan
    selection: Selection
    limit: int | None
    matched: int = 0
    shown: list[DlqEntry] = field(default_factory=list)
    foreign: list[ForeignRecord] = field(default_factory=list)
    by_stage: Counter[str] = field(default_factory=Counter)
    by_error_class: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    first_failed: dt.datetime | None = None
    last_failed: dt.datetime | None = None

    def add(self, raw: RawRecord) -> None:
        entry = parse(raw)
        if isinstance(entry, ForeignRecord):
            self.foreign.append(entry)
            return
        if not self.selection.matches(entry):
            return
        self.matched += 1
        self.by_stage[entry.stage] += 1
        self.by_error_class[entry.error_class] += 1
        self.by_topic[entry.original_topic] += 1
        if entry.failed_at is not None:
            self.first_failed = min(self.first_failed or entry.failed_at, entry.failed_at)
            self.last_failed = max(self.last_failed or entry.failed_at, entry.failed_at)
        if self.limit is None or len(self.shown) < self.limit:
            self.shown.append(entry)

    def summary(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.scan.topic, "scanned": self.scan.scanned, "matched": self.matched,
            "shown": len(self.shown), "foreign": len(self.foreign),
            "by_stage": dict(sorted(self.by_stage.items())),
            "by_error_class": dict(sorted(self.by_error_class.items())),
            "by_topic": dict(sorted(self.by_topic.items())),
            "failed_at": {"first": iso(self.first_failed), "last": iso(self.last_failed)},
            "end_offsets": {str(p): o for p, o in sorted(self.scan.ends.items())},
            "selection": self.selection.describe(),
        }


def inspect_topic(
    config: Mapping[str, Any], topic: str, group_id: str, selection: Selection, limit: int | None, timeout_s: float
) -> Inspection:
    consumer = tool_consumer(config, group_id)
    try:
        inspection = Inspection(Scan(topic), selection, limit)
        for raw in read_topic(consumer, inspection.scan, timeout_s):
            inspection.add(raw)
        return inspection
    finally:
        consumer.close()


class Previewer:
    """A short, readable rendering of a value: decoded with the service's decoder when it can be."""

    def __init__(self, decoder: ValueDecoder | None) -> None:
        self._decoder = decoder

    def entry(self, entry: DlqEntry) -> str:
        """A letter's value, or what its headers say of the value it was published without."""
        if entry.value_dropped:
            return f"<value dropped: {header_map(entry.raw).get(h.VALUE_SIZE, '?')} bytes>"
        return self(entry.raw.value)

    def __call__(self, value: bytes | None) -> str:
        if value is None:
            return "<null>"
        if self._decoder is not None:
            try:
                _fields, row = self._decoder.decode(value)
                return shorten(to_json_text(row) or "")
            except ConsumerError:  # poison does not decode: that is often why it is here
                pass
        return bytes_preview(value)




def render_json(inspection: Inspection, preview: Previewer) -> str:
    return json.dumps({
        "summary": inspection.summary(),
        "records": [entry.as_json(preview.entry(entry)) for entry in inspection.shown],
        "foreign": [record.as_json() for record in inspection.foreign],
    }, indent=2)


def render_text(inspection: Inspection, preview: Previewer, console: Console) -> None:
    summary = inspection.summary()
    console.print(f"[bold]dead-letter topic {summary['dlq_topic']}[/]: {summary['scanned']} records scanned, "
                  f"{summary['matched']} match, {summary['foreign']} foreign")
    first, last = summary["failed_at"]["first"], summary["failed_at"]["last"]
    if first:
        console.print(f"  failed between {first} and {last}")
    counts = Table(title="summary", show_edge=False, title_justify="left")
    for column in ("by stage", "by error class", "by original topic"):
        counts.add_column(column)
    groups = [_count_lines(summary[name]) for name in ("by_stage", "by_error_class", "by_topic")]
    for row in range(max((len(group) for group in groups), default=0)):
        counts.add_row(*(group[row] if row < len(group) else "" for group in groups))
    console.print(counts)
    if inspection.shown:
        console.print(_records_table(inspection, preview))
    if inspection.foreign:
        console.print(_foreign_table(inspection.foreign))


def _count_lines(counts: Mapping[str, int]) -> list[str]:
    return [f"{name}  {count}" for name, count in counts.items()]


def _records_table(inspection: Inspection, preview: Previewer) -> Table:
    more = inspection.matched - len(inspection.shown)
    table = Table(title=f"records ({len(inspection.shown)} shown" + (f", {more} more)" if more else ")"),
                  title_justify="left", show_edge=False)
    for column in ("dlq p/offset", "original topic/p/offset", "stage", "error class", "attempts", "failed at"):
        table.add_column(column, no_wrap=True)
    table.add_column("message", ratio=3, overflow="fold")
    table.add_column("value", ratio=2, overflow="fold")
    for entry in inspection.shown:
        table.add_row(
            f"{entry.raw.partition}/{entry.raw.offset}",
            f"{entry.original_topic}/{entry.original_partition}/{entry.original_offset}",
            entry.stage, entry.error_class, str(entry.attempts), iso(entry.failed_at) or "",
            shorten(entry.error_message, _MESSAGE_CHARS), preview.entry(entry),
        )
    return table


def _foreign_table(foreign: list[ForeignRecord]) -> Table:
    table = Table(title=f"foreign records: {len(foreign)} without dead-letter headers", title_justify="left",
                  show_edge=False)
    table.add_column("dlq p/offset", no_wrap=True)
    table.add_column("missing headers", ratio=3, overflow="fold")
    table.add_column("value", ratio=2, overflow="fold")
    for record in foreign:
        table.add_row(f"{record.raw.partition}/{record.raw.offset}", ", ".join(record.missing),
                      bytes_preview(record.raw.value))
    return table


# --- command line ------------------------------------------------------------------------------------

INSPECT_EPILOG = """examples:
  consumer dlq inspect                                  # summary and table of the whole DLQ_TOPIC
  consumer dlq inspect --stage sink --since 2h          # sink rejections of the last two hours
  consumer dlq inspect --error-class DecodeError --topic orders --limit 20
  consumer dlq inspect --format json | jq '.summary.by_stage'
reads from the beginning to the end seen on arrival; joins no consumer group and commits nothing."""


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help=f"list at most N records (default {_TEXT_LIMIT} in text, all in JSON); counts cover all")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--no-decode", action="store_true", help="preview raw bytes instead of decoded values")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def dlq_topic(settings: Settings, args: argparse.Namespace) -> str:
    return str(args.dlq_topic or settings.dead_letter_topic)


def previewer(settings: Settings, enabled: bool) -> Previewer:
    if not enabled:
        return Previewer(None)
    try:
        decoder, _fields = value_decoder(settings)
    except ConsumerError:  # a preview is a nicety: an unreadable schema or a silent registry means raw bytes
        return Previewer(None)
    return Previewer(decoder)


def output_console() -> Console:
    """Wide enough for the tables when stdout is a pipe or a file (rich assumes 80 columns there)."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=_PIPE_WIDTH)


def run_inspect(settings: Settings, args: argparse.Namespace) -> int:
    selection = selection_from(args)
    limit = args.limit or (None if args.format == "json" else _TEXT_LIMIT)
    inspection = inspect_topic(kafka_client_config(settings), dlq_topic(settings, args),
                               f"{settings.consumer_group_id}.dlq-inspect", selection, limit, args.timeout)
    preview = previewer(settings, not args.no_decode)
    if args.format == "json":
        print(render_json(inspection, preview))
    else:
        render_text(inspection, preview, output_console())
    return 0
