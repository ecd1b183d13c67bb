from __future__ import annotations

import decimal
import hashlib
import itertools
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.events import encode, make_event, parsed_schema

from consumer.decode.avro import SchemalessAvroDecoder
from consumer.decode.decoder import Decoder
from consumer.decode.json_values import JsonDecoder
from consumer.decode.keys import MAX_KEY_BYTES, bytes_text, key_source, key_text
from consumer.errors import ConfigError
from consumer.records import RawRecord, Stage


def raw(value: bytes | None = b"{}", key: bytes | None = None, headers=(), offset: int = 7) -> RawRecord:
    return RawRecord("orders", 2, offset, 123, key, value, tuple(headers))


def test_coordinates() -> None:
    assert key_source("coordinates", None)(raw(), {}) == "orders/2/7"


def test_record_key() -> None:
    of = key_source("key", None)
    assert of(raw(key=b"abc"), {}) == "abc"
    assert of(raw(key=None), {}) is None
    assert of(raw(key=b""), {}) is None
    assert of(raw(key=b"\xff\x00"), {}) == "ff00"


def test_header_key_first_match() -> None:
    of = key_source("header:id", None)
    assert of(raw(headers=[("other", b"x"), ("id", b"h1"), ("id", b"h2")]), {}) == "h1"
    assert of(raw(headers=[("other", b"x")]), {}) is None
    assert of(raw(headers=[("id", None)]), {}) is None
    assert of(raw(headers=[("id", b"")]), {}) is None
    assert of(raw(headers=[("id", b"\xc3\x28")]), {}) == "c328"


def test_field_key() -> None:
    of = key_source("field:id", ["id", "x"])
    assert of(raw(), {"id": "a"}) == "a"
    assert of(raw(), {"id": 42}) == "42"
    assert of(raw(), {"id": None}) is None
    assert of(raw(), {}) is None
    assert of(raw(), {"id": ""}) is None


def test_unknown_field_is_config_error() -> None:
    with pytest.raises(ConfigError, match="IDEMPOTENCY_KEY"):
        key_source("field:nope", ["id"])
    key_source("field:anything", None)  # schemaless JSON: any field allowed


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (uuid.UUID("ABCDEF01-1234-5678-1234-567812345678"), "abcdef01-1234-5678-1234-567812345678"),
        (12345678901234567890, "12345678901234567890"),
        (-5, "-5"),
        (0, "0"),
        (decimal.Decimal("12.50"), "12.50"),
        (True, "true"),
        (False, "false"),
        (b"abc", "abc"),
        (b"\xff\xfe", "fffe"),
        (b"", None),
        ("", None),
        (None, None),
    ],
)
def test_key_text(value, text) -> None:
    assert key_text(value) == text


def test_avro_uuid_field_key_is_canonical_lowercase() -> None:
    schema = parsed_schema()
    event = make_event(1, event_id="ABCDEF01-1234-5678-1234-567812345678")
    values = SchemalessAvroDecoder(schema)
    decoder = Decoder(values, key_source("field:event_id", [c.name for c in values.columns()]), "field:event_id",
                      1 << 20)
    out = decoder.decode_batch([raw(encode(event, schema))])
    assert not out.dead_letters
    assert out.decoded[0].key == "abcdef01-1234-5678-1234-567812345678"
    assert out.decoded[0].row["event_id"] == "abcdef01-1234-5678-1234-567812345678"


def test_avro_long_field_key_is_decimal() -> None:
    schema = parsed_schema()
    values = SchemalessAvroDecoder(schema)
    decoder = Decoder(values, key_source("field:user_id", None), "field:user_id", 1 << 20)
    out = decoder.decode_batch([raw(encode(make_event(1, user_id=9007199254740993), schema))])
    assert out.decoded[0].key == "9007199254740993"


def test_json_int_key_decimal() -> None:
    decoder = Decoder(JsonDecoder(None), key_source("field:id", None), "field:id", 1 << 20)
    out = decoder.decode_batch([raw(json.dumps({"id": 10**20}).encode())])
    assert out.decoded[0].key == str(10**20)
    assert out.decoded[0].row == {"value": '{"id":100000000000000000000}'}


def test_empty_key_is_missing_and_dead_lettered() -> None:
    decoder = Decoder(JsonDecoder(None), key_source("field:id", None), "field:id", 1 << 20)
    out = decoder.decode_batch([
        raw(b'{"id": ""}', offset=1), raw(b'{"id": null}', offset=2), raw(b'{}', offset=3),
        raw(b'{"id": "ok"}', offset=4),
    ])
    assert [d.key for d in out.decoded] == ["ok"]
    assert [(d.record.offset, d.stage, d.error_class) for d in out.dead_letters] == [
        (1, Stage.VALIDATE, "MissingKeyError"), (2, Stage.VALIDATE, "MissingKeyError"),
        (3, Stage.VALIDATE, "MissingKeyError"),
    ]


def test_tombstones_skipped_poison_and_too_large() -> None:
    decoder = Decoder(JsonDecoder(None), key_source("coordinates", None), "coordinates", 10)
    out = decoder.decode_batch([
        raw(None, offset=1), raw(b"not json", offset=2), raw(b"[1]", offset=3), raw(b'{"a": "0123456789"}', offset=4),
        raw(b"{}", offset=5),
    ])
    assert out.skipped == {"orders": 1}
    assert [(d.record.offset, d.error_class) for d in out.dead_letters] == [
        (2, "DecodeError"), (3, "DecodeError"), (4, "RecordTooLargeError"),
    ]
    assert all(d.stage is Stage.DECODE for d in out.dead_letters)
    assert [d.key for d in out.decoded] == ["orders/2/5"]


def test_avro_garbage_is_decode_error() -> None:
    values = SchemalessAvroDecoder(parsed_schema())
    decoder = Decoder(values, key_source("coordinates", None), "coordinates", 1 << 20)
    good = encode(make_event(1))
    out = decoder.decode_batch([raw(good[:5], offset=1), raw(good + b"\x00", offset=2), raw(good, offset=3)])
    assert [(d.record.offset, d.error_class) for d in out.dead_letters] == [(1, "DecodeError"), (2, "DecodeError")]
    assert len(out.decoded) == 1


def test_json_with_schema_uuid_field_key_is_canonical_lowercase() -> None:
    schema = parsed_schema()
    values = JsonDecoder(schema)
    decoder = Decoder(values, key_source("field:event_id", [c.name for c in values.columns()]), "field:event_id",
                      1 << 20)
    out = decoder.decode_batch([raw(json.dumps({"event_id": "ABCDEF01-1234-5678-1234-567812345678"}).encode())])
    assert out.decoded[0].row["event_id"] == "abcdef01-1234-5678-1234-567812345678"
    assert out.decoded[0].key == "abcdef01-1234-5678-1234-567812345678"


@pytest.mark.parametrize("decoder_kind", ["avro", "json"])
def test_a_uuid_field_is_canonicalised_and_a_string_that_is_no_uuid_is_poison(decoder_kind: str) -> None:
    """uuids are read as text and checked here (fastavro's UUID objects cost more than the check)."""
    schema = parsed_schema()
    values = SchemalessAvroDecoder(schema) if decoder_kind == "avro" else JsonDecoder(schema)
    decoder = Decoder(values, key_source("field:event_id", [c.name for c in values.columns()]), "field:event_id",
                      1 << 20)

    def value(event_id: str) -> bytes:
        if decoder_kind == "avro":
            return encode(make_event(1, event_id=event_id), schema)
        return json.dumps({"event_id": event_id}).encode()

    out = decoder.decode_batch([
        raw(value("{ABCDEF01-1234-5678-1234-567812345678}"), offset=1),
        raw(value("abcdef0112345678123456781234567f"), offset=2),
        raw(value("not-a-uuid-at-all-but-36-chars-long!"), offset=3),
        raw(value("zzzzzzzz-1234-5678-1234-567812345678"), offset=4),
    ])
    assert [d.row["event_id"] for d in out.decoded] == [
        "abcdef01-1234-5678-1234-567812345678", "abcdef01-1234-5678-1234-56781234567f"]
    assert [(d.record.offset, d.stage.value, d.error_class) for d in out.dead_letters] == [
        (3, "transform", "TransformError"), (4, "transform", "TransformError")]


def test_binary_ff_and_text_ff_are_two_keys() -> None:
    """The reported collision: a message key 0xff (hex "ff") and a text key "ff" used to be one key."""
    of = key_source("key", None)
    assert of(raw(key=b"\xff"), {}) == "ff"  # the contract's hex form of non-UTF-8 bytes, kept
    assert of(raw(key=b"ff"), {}) == "~ff"
    assert key_text("ff") == "~ff"


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("abc", "abc"),  # odd length: never hex of bytes
        ("6162", "6162"),  # hex of b"ab", which is UTF-8 and so would be stored as "ab": no collision
        ("c328", "~c328"),  # hex of b"\xc3\x28", not UTF-8
        ("C328", "C328"),  # upper case is never our hex
        ("~", "~~"),
        ("~ff", "~~ff"),
        ("orders/2/7", "orders/2/7"),
    ],
)
def test_text_keys_that_could_be_hex_of_bytes_or_start_with_the_marker_are_escaped(text: str, stored: str) -> None:
    assert key_text(text) == stored


def test_numbers_stay_decimal_even_when_they_read_as_hex() -> None:
    assert key_text(80) == "80"
    assert key_text(decimal.Decimal("98.7")) == "98.7"


def test_a_key_longer_than_the_limit_is_a_tagged_digest() -> None:
    long_text = "k" * (MAX_KEY_BYTES + 1)
    digest = key_text(long_text)
    assert digest == "~sha256:" + hashlib.sha256(b"text:" + long_text.encode()).hexdigest()
    assert key_text("k" * MAX_KEY_BYTES) == "k" * MAX_KEY_BYTES  # at the limit: as is
    assert key_text("é" * (MAX_KEY_BYTES // 2 + 1)).startswith("~sha256:")  # the limit is in UTF-8 bytes
    long_bytes = b"\xff" * (MAX_KEY_BYTES // 2 + 1)
    assert bytes_text(long_bytes) == "~sha256:" + hashlib.sha256(b"bytes:" + long_bytes).hexdigest()
    assert bytes_text(b"\xff" * (MAX_KEY_BYTES // 2)) == "ff" * (MAX_KEY_BYTES // 2)
    assert key_text(10 ** 600).startswith("~sha256:")  # type: ignore[union-attr]
    # A text key that looks like a digest is escaped, so it cannot pose as one.
    assert key_text(digest) == "~" + digest


_KEY_INPUTS = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet="0123456789abcdef~", min_size=1, max_size=12),
    st.binary(min_size=1, max_size=20),
    st.binary(min_size=MAX_KEY_BYTES // 2 - 2, max_size=MAX_KEY_BYTES // 2 + 2),
    st.text(alphabet="ab~", min_size=MAX_KEY_BYTES - 2, max_size=MAX_KEY_BYTES + 2),
)


def _meaning(value: str | bytes) -> bytes:
    """What a key means: bytes that are UTF-8 are the same key as their text (a message key is bytes)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


@settings(max_examples=3000, deadline=None)
@given(a=_KEY_INPUTS, b=_KEY_INPUTS)
def test_the_stored_key_is_injective_over_text_and_bytes(a: str | bytes, b: str | bytes) -> None:
    """Two keys are stored alike only when they mean the same (digests aside: sha-256 collisions)."""
    stored_a, stored_b = key_text(a), key_text(b)
    assert stored_a is not None and stored_b is not None
    assert len(stored_a.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES
    if _meaning(a) != _meaning(b):
        assert stored_a != stored_b
    else:
        assert stored_a == stored_b


def test_the_stored_key_is_injective_over_every_short_hex_text_and_byte_string() -> None:
    """Exhaustively, every byte string of one or two bytes against every hex-alphabet text that long."""
    seen: dict[str, bytes] = {}
    inputs: list[str | bytes] = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256)
                                                                      for b in range(256)]
    inputs += ["".join(chars) for n in (1, 2, 3, 4) for chars in itertools.product("0123456789abcdef~", repeat=n)]
    for value in inputs:
        stored = key_text(value)
        assert stored is not None
        meaning = _meaning(value)
        assert seen.setdefault(stored, meaning) == meaning, (value, stored)

