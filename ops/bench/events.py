"""The benchmark's events: schemas/event.avsc values of about 300 bytes, deterministic from an index.

One record in a hundred repeats an earlier event (a redelivery, as real topics carry), so idempotency does
real work: the table must end with one row per distinct `event_id`, not one per record.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import fastavro

from ops.bench.config import SCHEMA_FILE

IDEMPOTENCY_KEY = "field:event_id"
EVENT_TYPES = ("VIEW", "CLICK", "PURCHASE", "SIGNUP")
_BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
_REPEAT_EVERY = 100  # record i with i % 100 == 99 repeats event i - 50
_REPEAT_DISTANCE = 50


def parsed_schema() -> Any:
    return fastavro.parse_schema(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def event_index(i: int) -> int:
    """Which event record `i` carries: itself, or for a repeat the earlier one it redelivers."""
    return i - _REPEAT_DISTANCE if i % _REPEAT_EVERY == _REPEAT_EVERY - 1 else i


def distinct_events(records: int) -> int:
    """Distinct event ids among records 0 .. records-1 (the rows the sink must end with)."""
    return records - records // _REPEAT_EVERY


def make_event(n: int) -> dict[str, Any]:
    occurred = _BASE + dt.timedelta(milliseconds=n * 7)
    kind = EVENT_TYPES[n % len(EVENT_TYPES)]
    purchase = kind == "PURCHASE"
    return {
        "event_id": str(uuid.UUID(int=n + 1)),
        "occurred_at": occurred,
        "user_id": 100_000 + n % 9973,
        "event_type": kind,
        "amount": Decimal(n % 100_000).scaleb(-2) if purchase else None,
        "currency": "EUR" if purchase else None,
        "page_url": f"https://shop.example.com/catalogue/category-{n % 37}/product-{n % 5003}?ref=campaign-{n % 11}",
        "score": (n % 1000) / 8,
        "is_test": n % 50 == 0,
        "event_date": occurred.date(),
        "attributes": {"user_agent": _USER_AGENT, "session": f"s-{n // 20:010d}", "region": "eu-west-1",
                       "experiment": f"exp-{n % 3}"},
    }


def encoded_values(records: int, schema: Any) -> Iterator[bytes]:
    """Schemaless Avro values of records 0 .. records-1, as a producer without a registry writes them."""
    write = fastavro.schemaless_writer
    for i in range(records):
        buffer = io.BytesIO()
        write(buffer, schema, make_event(event_index(i)))
        yield buffer.getvalue()
