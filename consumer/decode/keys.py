"""Idempotency keys: the IDEMPOTENCY_KEY setting as a function of a record and its decoded fields, and the
contract's text form of a key (uuids canonical, numbers in decimal, bytes as UTF-8 or else hex).

The stored form is injective across text and bytes: bytes that are not UTF-8 are stored as lower-case hex
(the contract's rule), so the text keys that could read as such hex, and the text keys that start with the
marker `~`, are stored as `~` + the text. A key longer than `MAX_KEY_BYTES` is stored as
`~sha256:<hex digest>` of a tagged input (text and bytes tagged apart), so the index never refuses it."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.decode.schema import to_json_text
from consumer.errors import ConfigError
from consumer.records import RawRecord

Fields = Mapping[str, Any]  # a decoded value's fields, where `field:<name>` keys come from
KeyOf = Callable[[RawRecord, Fields], str | None]

KEY_MARKER = "~"
# PostgreSQL's btree refuses an index row over about 2.7 KB; 512 bytes keeps every key form far below it.
MAX_KEY_BYTES = 512
_DIGEST_PREFIX = KEY_MARKER + "sha256:"
_HEX_PAIRS = re.compile(r"(?:[0-9a-f]{2})+")
_CHARS_SURELY_SHORT = MAX_KEY_BYTES // 4  # a character is at most 4 bytes of UTF-8


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
    """An idempotency key as stored: uuids canonical, numbers in decimal, text escaped where it could read
    as hex of bytes, bytes as UTF-8 or hex; long keys digested."""
    if value is None:
        return None
    if isinstance(value, str):
        return text_key(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes_text(bytes(value))
    if isinstance(value, (int, decimal.Decimal, uuid.UUID)):
        text = str(value)
        return text if len(text) <= _CHARS_SURELY_SHORT else _bounded_text(text)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    json_text = to_json_text(value)
    return text_key(json_text) if json_text is not None else None


def text_key(text: str) -> str | None:
    """A text key as stored: as is, unless it could be the hex of non-UTF-8 bytes or starts with the marker
    (then marker + text), or is longer than MAX_KEY_BYTES (then its digest)."""
    if not text:
        return None
    # isalnum() first: a C-speed no for most keys (a uuid's dashes) before the pattern is tried.
    if text[0] == KEY_MARKER or (
        not len(text) & 1 and text.isalnum() and _HEX_PAIRS.fullmatch(text) and not _is_utf8(bytes.fromhex(text))
    ):
        text = KEY_MARKER + text
    return text if len(text) <= _CHARS_SURELY_SHORT else _bounded_text(text)


def bytes_text(value: bytes) -> str | None:
    """Bytes as stored: their text when they are UTF-8 (escaped like any text key), else lower-case hex."""
    if not value:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        if len(value) * 2 > MAX_KEY_BYTES:
            return _digest(b"bytes:" + value)
        return value.hex()
    return text_key(text)


def _bounded_text(text: str) -> str:
    if len(text) <= _CHARS_SURELY_SHORT:
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    return text if len(encoded) <= MAX_KEY_BYTES else _digest(b"text:" + encoded)


def _digest(tagged: bytes) -> str:
    return _DIGEST_PREFIX + hashlib.sha256(tagged).hexdigest()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
