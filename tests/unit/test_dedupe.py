from __future__ import annotations

from consumer.records import DecodedRecord, RawRecord
from consumer.service.pipeline import collapse_duplicates


def d(key: str, offset: int, partition: int = 0) -> DecodedRecord:
    return DecodedRecord(RawRecord("t", partition, offset, 0, None, b"v"), key, {"o": offset})


def test_insert_keeps_first() -> None:
    records = [d("a", 1), d("b", 2), d("a", 3), d("a", 4)]
    c = collapse_duplicates(records, upsert=False)
    assert [(w.key, w.raw.offset) for w in c.winners] == [("a", 1), ("b", 2)]
    assert {k: [r.raw.offset for r in v] for k, v in c.runners_up.items()} == {"a": [3, 4]}


def test_upsert_keeps_last() -> None:
    records = [d("a", 1), d("b", 2), d("a", 3), d("a", 4)]
    c = collapse_duplicates(records, upsert=True)
    assert [(w.key, w.raw.offset) for w in c.winners] == [("a", 4), ("b", 2)]
    assert {k: [r.raw.offset for r in v] for k, v in c.runners_up.items()} == {"a": [3, 1]}


def test_no_duplicates() -> None:
    records = [d("a", 1), d("b", 2)]
    for upsert in (False, True):
        c = collapse_duplicates(records, upsert)
        assert c.winners == records and c.runners_up == {}
    assert collapse_duplicates([], True).winners == []
