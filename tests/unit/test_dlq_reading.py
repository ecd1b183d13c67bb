"""Reading dead-letter records: the header names match what the publisher writes, parsing never crashes on
foreign records, the selection filters exactly, and the replay group follows the selection."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest
from support.contract import read_contract_dead_letter_headers

from consumer.kafka.dead_letters import dead_letter_headers
from consumer.records import DeadLetter, RawRecord, Stage
from consumer.settings import Settings
from consumer.tools.dlq_reading import (
    DlqEntry,
    ForeignRecord,
    Selection,
    parse,
    parse_moment,
)
from consumer.tools.dlq_replay import default_group

FAILED_AT = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)


def _letter(stage: Stage = Stage.SINK, topic: str = "orders", prior: tuple[tuple[str, bytes | None], ...] = ()
            ) -> RawRecord:
    raw = RawRecord(topic, 2, 41, 1_700_000_000_000, b"k", b"v", (("trace", b"t1"), *prior))
    headers = dead_letter_headers(DeadLetter(raw, stage, "RecordRejectedError", "too long"), "g", FAILED_AT)
    return RawRecord("orders.dlq", 0, 7, 1_700_000_000_500, b"k", b"v",
                     tuple((n, v if isinstance(v, bytes) else None) for n, v in headers))


def test_the_publisher_writes_exactly_the_contract_headers() -> None:
    written = [name for name, _ in _letter().headers if name.startswith("dlq.")]
    contract = read_contract_dead_letter_headers()
    assert set(written) == set(contract) and len(written) == len(contract)


def test_parse_reads_every_contract_header() -> None:
    entry = parse(_letter())
    assert isinstance(entry, DlqEntry)
    assert (entry.original_topic, entry.original_partition, entry.original_offset) == ("orders", 2, 41)
    assert (entry.stage, entry.error_class, entry.error_message) == ("sink", "RecordRejectedError", "too long")
    assert (entry.consumer_group, entry.failed_at, entry.attempts, entry.replay_count) == ("g", FAILED_AT, 1, 0)
    assert entry.original_timestamp_ms == 1_700_000_000_000


def test_a_replayed_record_that_fails_again_counts_its_attempts() -> None:
    entry = parse(_letter(prior=(("dlq.attempts", b"2"), ("dlq.replay.count", b"2"))))
    assert isinstance(entry, DlqEntry) and entry.attempts == 3


@pytest.mark.parametrize(
    "headers",
    [(), (("dlq.stage", b"sink"),),
     (("dlq.original.topic", b"t"), ("dlq.original.partition", b"x"), ("dlq.original.offset", b"1"),
      ("dlq.stage", b"sink"), ("dlq.error.class", b"E"))],
)
def test_records_without_usable_headers_are_foreign(headers: tuple[tuple[str, bytes | None], ...]) -> None:
    found = parse(RawRecord("orders.dlq", 0, 1, 0, None, b"?", headers))
    assert isinstance(found, ForeignRecord) and found.missing


def test_selection_matches_on_every_filter() -> None:
    entry = parse(_letter())
    assert isinstance(entry, DlqEntry)
    assert Selection().matches(entry)
    assert Selection(stages=frozenset({"sink"}), topics=frozenset({"orders"})).matches(entry)
    assert not Selection(stages=frozenset({"decode"})).matches(entry)
    assert not Selection(error_classes=frozenset({"DecodeError"})).matches(entry)
    assert Selection(since=FAILED_AT, until=FAILED_AT + dt.timedelta(seconds=1)).matches(entry)
    assert not Selection(until=FAILED_AT).matches(entry)  # until is exclusive
    assert not Selection(since=FAILED_AT + dt.timedelta(milliseconds=1)).matches(entry)


def test_moments_are_iso_or_an_age() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_moment("2h", now) == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert parse_moment("7d", now) == dt.datetime(2024, 4, 24, 12, 0, tzinfo=dt.UTC)
    assert parse_moment("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert parse_moment("2024-05-01T12:00:00+02:00") == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_moment("last tuesday")


def test_each_selection_and_destination_remembers_its_own_position() -> None:
    settings = Settings(consumer_topics="orders", schema_file=None, value_format="json")  # type: ignore[arg-type]
    sink = Selection(stages=frozenset({"sink"}))
    assert default_group(settings, sink, None) == default_group(settings, Selection(stages=frozenset({"sink"})), None)
    assert default_group(settings, sink, None) != default_group(settings, Selection(), None)
    assert default_group(settings, sink, None) != default_group(settings, sink, "orders-fixed")
    assert default_group(settings, sink, None).startswith("microbatch-consumer.dlq-replay.")
