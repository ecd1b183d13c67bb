from __future__ import annotations

import datetime as dt
import hashlib

from consumer.kafka.dead_letters import Shape, dead_letter_headers, dead_letter_message
from consumer.records import DeadLetter, RawRecord, Stage

WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


def letter(headers=(), attempts: int = 1, message: str = "boom") -> DeadLetter:
    record = RawRecord("orders", 3, 42, 1700000000123, b"k", b"v", tuple(headers))
    return DeadLetter(record, Stage.DECODE, "DecodeError", message, attempts)


def test_all_contract_headers() -> None:
    headers = dead_letter_headers(letter(headers=[("trace", b"abc"), ("nullish", None)]), "grp", WHEN)
    assert headers[:2] == [("trace", b"abc"), ("nullish", b"")]
    ours = dict(headers[2:])
    assert ours == {
        "dlq.original.topic": b"orders",
        "dlq.original.partition": b"3",
        "dlq.original.offset": b"42",
        "dlq.original.timestamp": b"1700000000123",
        "dlq.stage": b"decode",
        "dlq.error.class": b"DecodeError",
        "dlq.error.message": b"boom",
        "dlq.consumer.group": b"grp",
        "dlq.failed.at": b"2024-05-06T07:08:09.123Z",
        "dlq.attempts": b"1",
    }


def test_attempts_increment_and_old_dlq_headers_dropped() -> None:
    old = [("dlq.attempts", b"2"), ("dlq.stage", b"sink"), ("keep", b"1")]
    headers = dead_letter_headers(letter(headers=old), "grp", WHEN)
    names = [n for n, _ in headers]
    assert names.count("dlq.stage") == 1 and names.count("dlq.attempts") == 1
    assert dict(headers)["dlq.attempts"] == b"3"
    assert dict(headers)["dlq.stage"] == b"decode"
    assert headers[0] == ("keep", b"1")


def test_garbage_attempts_counts_as_zero() -> None:
    headers = dead_letter_headers(letter(headers=[("dlq.attempts", b"x")]), "g", WHEN)
    assert dict(headers)["dlq.attempts"] == b"1"


def test_message_truncated() -> None:
    headers = dead_letter_headers(letter(message="é" * 3000), "g", WHEN)
    assert dict(headers)["dlq.error.message"].decode() == "é" * 2000


def test_a_replayed_record_failing_again_keeps_its_replay_count() -> None:
    old = [("dlq.attempts", b"1"), ("dlq.replay.count", b"2"), ("dlq.original.offset", b"7")]
    headers = dead_letter_headers(letter(headers=old), "grp", WHEN)
    assert dict(headers)["dlq.replay.count"] == b"2"
    assert dict(headers)["dlq.attempts"] == b"2"
    assert [n for n, _ in headers].count("dlq.original.offset") == 1
    assert dict(headers)["dlq.original.offset"] == b"42"  # where it failed this time


def test_a_letter_without_value_says_so_with_size_and_digest_and_keeps_key_and_headers() -> None:
    message = dead_letter_message(letter(headers=[("trace", b"abc")]), "grp", WHEN, Shape.WITHOUT_VALUE)
    headers = dict(message["headers"])
    assert (message["key"], message["value"]) == (b"k", None)
    assert headers["trace"] == b"abc"
    assert headers["dlq.value.dropped"] == b"true"
    assert headers["dlq.value.size"] == b"1"
    assert headers["dlq.value.sha256"] == hashlib.sha256(b"v").hexdigest().encode()
    assert "dlq.key.dropped" not in headers and headers["dlq.stage"] == b"decode"


def test_a_bare_letter_keeps_only_our_headers_and_digests_the_key() -> None:
    original = [("trace", b"abc"), ("dlq.replay.count", b"2"), ("dlq.hostile", b"x" * 1000)]
    message = dead_letter_message(letter(headers=original), "grp", WHEN, Shape.BARE)
    headers = dict(message["headers"])
    assert (message["key"], message["value"]) == (None, None)
    assert "trace" not in headers and "dlq.hostile" not in headers
    assert headers["dlq.replay.count"] == b"2"
    assert headers["dlq.headers.dropped"] == b"2"
    assert (headers["dlq.key.dropped"], headers["dlq.key.size"]) == (b"true", b"1")
    assert headers["dlq.key.sha256"] == hashlib.sha256(b"k").hexdigest().encode()
    assert headers["dlq.value.dropped"] == b"true"


def test_a_record_claiming_a_dropped_value_is_not_believed() -> None:
    message = dead_letter_message(letter(headers=[("dlq.value.dropped", b"true")]), "grp", WHEN, Shape.WHOLE)
    assert "dlq.value.dropped" not in dict(message["headers"])
    assert message["value"] == b"v"
