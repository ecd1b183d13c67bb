"""Idempotency keys: the IDEMPOTENCY_KEY setting as a function of a record and its decoded fields, and the
contract's text form of a key (uuids canonical, numbers in decimal, bytes as UTF-8 or else hex)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.decode.schema import to_json_text
from consumer.errors import ConfigError
from consumer.records import RawRecord

Fields = Mapping[str, Any]  # a decoded value's fields, where `field:<name>` keys come from
KeyOf = Callable[[RawRecord, Fields], str | None]


def key_source(spec: str, known_fields: Sequence[str] | None) -> KeyOf:
    """The IDEMPOTENCY_KEY setting as a function of (record, decoded fields)."""
    kind, _, name = spec.partition(":")
    if kind == "coordinates":
        return lambda raw, fields: f"{raw.topic}/{raw.partition}/{raw.offset}"
    if kind == "key":
        return lambda raw, fields: bytes_text(raw.key) if raw.key is not None else None
    if kind == "header":
        return lambda raw, fields: _header_key(raw, name)
    if known_fields is not None and name not in known_fields:
        raise ConfigError(f"IDEMPOTENCY_KEY: field {name!r} is not in the value schema")
    return lambda raw, fields: key_text(fields.get(name))


def _header_key(raw: RawRecord, name: str) -> str | None:
    for header, value in raw.headers:
        if header == name:
            return bytes_text(value) if value is not None else None
    return None


def key_text(value: Any) -> str | None:
    """An idempotency key as text: uuids canonical, numbers in decimal, bytes as UTF-8 or hex."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes_text(bytes(value))
    if isinstance(value, (int, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return to_json_text(value)


def bytes_text(value: bytes) -> str | None:
    if not value:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()
