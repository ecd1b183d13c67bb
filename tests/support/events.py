"""Sample `Event` records (schemas/event.avsc) and their encodings, deterministic from an index.

Deterministic values let a test compute what a row must hold from its index alone; every field is chosen so
the database round trip is exact (millisecond timestamps, 2-place decimals, binary-exact doubles).
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "event.avsc"
EVENT_TYPES = ("VIEW", "CLICK", "PURCHASE", "SIGNUP")
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
_WIRE_MAGIC = b"\x00"


def schema_json() -> str:
    """The schema's text as a registry stores it."""
    return SCHEMA_PATH.read_text(encoding="utf-8")


@cache
def parsed_schema() -> Schema:
    """The parsed schema, parsed once per run (parsing also validates the file)."""
    return fastavro.parse_schema(json.loads(schema_json()))


def event_id(i: int) -> str:
    """The canonical lower-case uuid of event `i` (the `field:event_id` idempotency key)."""
    return str(uuid.UUID(int=i + 1))


def make_event(i: int, **overrides: Any) -> dict[str, Any]:
    """A valid Event for index `i`; `overrides` replace (or add, for an evolved schema) fields."""
    occurred_at = BASE_TIME + timedelta(seconds=i, milliseconds=i % 1000)
    purchase = EVENT_TYPES[i % len(EVENT_TYPES)] == "PURCHASE"
    event: dict[str, Any] = {
        "event_id": event_id(i),
        "occurred_at": occurred_at,
        "user_id": 1000 + i % 50,
        "event_type": EVENT_TYPES[i % len(EVENT_TYPES)],
        "amount": (Decimal(i % 1000) + Decimal(i % 100) / 100).quantize(Decimal("0.01"))
        if purchase
        else None,
        "currency": "EUR" if purchase else None,
        "page_url": f"https://example.com/p/{i % 20}",
        "score": i / 8,
        "is_test": i % 10 == 0,
        "event_date": occurred_at.date(),
        "attributes": {"i": str(i), "source": "tests"},
    }
    event.update(overrides)
    return event


def encode(event: dict[str, Any], schema: Schema | None = None) -> bytes:
    """Schemaless Avro, as a producer without a registry writes it (`SCHEMA_FILE` decoding)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema if schema is not None else parsed_schema(), event)
    return buffer.getvalue()


def encode_wire(event: dict[str, Any], schema_id: int, schema: Schema | None = None) -> bytes:
    """Confluent wire format: magic byte 0, the 4-byte big-endian schema id, then the schemaless body."""
    return _WIRE_MAGIC + struct.pack(">I", schema_id) + encode(event, schema)


def decode(data: bytes, schema: Schema | None = None) -> dict[str, Any]:
    """The inverse of `encode`, for asserting on values the service passed through (DLQ, replay).

    fastavro reads `logicalType: uuid` as uuid.UUID; it is turned back into the canonical string that
    `make_event` writes, so `decode(encode(e)) == e`.
    """
    record = fastavro.schemaless_reader(io.BytesIO(data), schema if schema is not None else parsed_schema())
    if not isinstance(record, dict):
        raise TypeError(f"expected a record, got {type(record).__name__}")
    return {name: str(value) if isinstance(value, uuid.UUID) else value for name, value in record.items()}
