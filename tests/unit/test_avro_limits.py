"""Hostile values never stop the decoder: the schema risk analysis, the scanner's limits (depth, items,
estimated size) on Avro and JSON, and every failure of one record being that record's dead letter."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from support.avro_bytes import long_bytes

from consumer.decode import avro as avro_module
from consumer.decode.avro import RegistryAvroDecoder, SchemalessAvroDecoder
from consumer.decode.avro_risk import analyse
from consumer.decode.column_rules import ColumnRules
from consumer.decode.decoder import Decoder
from consumer.decode.json_values import JsonDecoder
from consumer.decode.keys import Fields, key_source
from consumer.decode.limits import DEFAULT_LIMITS, DecodeLimits
from consumer.decode.registry import SchemaRegistryClient
from consumer.errors import ConfigError, DecodeError, DecodeLimitError, RegistryUnavailableError
from consumer.records import ColumnKind, ColumnSpec, RawRecord, Stage
from consumer.service.components import decode_limits
from consumer.settings import Settings, load_settings
from consumer.sql.columns import column_limits

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NODE = {"type": "record", "name": "Node", "fields": [
    {"name": "id", "type": "long"}, {"name": "next", "type": ["null", "Node"]}]}


def deep_node(depth: int) -> bytes:
    """A Node value `depth` records deep: id 1, then (branch 1, id 1) per level, then branch 0 (null)."""
    return long_bytes(1) + (long_bytes(1) + long_bytes(1)) * (depth - 1) + long_bytes(0)


def items_value(count: int) -> bytes:
    """id 1, one block announcing `count` items that take no bytes, the end block."""
    return long_bytes(1) + long_bytes(count) + long_bytes(0)


def with_items(items: Any) -> Any:
    return fastavro.parse_schema({"type": "record", "name": "R", "fields": [
        {"name": "id", "type": "long"}, {"name": "xs", "type": {"type": "array", "items": items}}]})


# --- the analysis ------------------------------------------------------------------------------------------


def test_the_benchmark_schema_is_safe_and_its_ordinary_values_are_not_scanned() -> None:
    risk = analyse(fastavro.parse_schema(json.loads((SCHEMAS / "event.avsc").read_text())))
    assert not risk.recursive and not risk.zero_byte_items and risk.depth == 2
    assert 1 < risk.expansion < 1000
    assert risk.scan_above(DEFAULT_LIMITS) > 100_000  # its 300-byte values go straight to fastavro


def test_a_recursive_schema_is_found_and_all_its_values_are_scanned() -> None:
    assert analyse(fastavro.parse_schema(NODE)).recursive
    shipped = analyse(fastavro.parse_schema(json.loads((SCHEMAS / "all_types.avsc").read_text())))
    assert shipped.recursive and shipped.scan_above(DEFAULT_LIMITS) == -1


@pytest.mark.parametrize("items", [
    "null",
    {"type": "record", "name": "Empty", "fields": []},
    {"type": "fixed", "name": "Nothing", "size": 0},
    {"type": "record", "name": "Nulls", "fields": [{"name": "a", "type": "null"}, {"name": "b", "type": "null"}]},
])
def test_arrays_of_items_that_take_zero_bytes_are_risky(items: Any) -> None:
    risk = analyse(with_items(items))
    assert risk.zero_byte_items and not risk.recursive and risk.scan_above(DEFAULT_LIMITS) == -1


def test_a_map_of_nulls_is_bounded_by_its_keys_bytes() -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "M", "fields": [
        {"name": "m", "type": {"type": "map", "values": "null"}}]})
    risk = analyse(schema)
    assert not risk.zero_byte_items and risk.scan_above(DEFAULT_LIMITS) > 0


def test_a_schema_that_multiplies_zero_byte_records_is_scanned_whatever_the_length() -> None:
    """Each level holds its previous level twice: 2**40 empty records from one byte of value."""
    fields: list[dict[str, Any]] = [{"name": "a", "type": {"type": "record", "name": "T0", "fields": []}}]
    for level in range(1, 41):
        fields = [{"name": "a", "type": {"type": "record", "name": f"T{level}", "fields": fields}},
                  {"name": "b", "type": f"T{level}"}]
    schema = fastavro.parse_schema({"type": "record", "name": "Top", "fields": [
        {"name": "id", "type": "long"}, *fields]})
    assert analyse(schema).scan_above(DEFAULT_LIMITS) == 0
    with pytest.raises(DecodeLimitError, match="DECODE_MAX_EXPANSION|DECODE_MAX_DEPTH"):
        SchemalessAvroDecoder(schema, DecodeLimits(max_depth=100)).decode(long_bytes(1))


def test_a_schema_nested_too_deeply_to_analyse_is_a_config_error_naming_schema_file() -> None:
    schema: dict[str, Any] = {"type": "record", "name": "L0", "fields": [{"name": "x", "type": "long"}]}
    for level in range(1, 400):
        schema = {"type": "record", "name": f"L{level}", "fields": [{"name": "x", "type": schema}]}
    parsed = fastavro.parse_schema(schema)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(600)  # fastavro parsed it; our analysis recurses deeper per level
    try:
        with pytest.raises(ConfigError, match="^SCHEMA_FILE: .*nested too deeply"):
            SchemalessAvroDecoder(parsed)
    finally:
        sys.setrecursionlimit(limit)


# --- the limits on Avro values -----------------------------------------------------------------------------


def test_a_deep_recursive_value_is_refused_in_a_process_that_survives_it() -> None:
    """Before the scanner, fastavro's C reader overflowed the C stack here: the interpreter died (SIGSEGV)."""
    code = (
        "import fastavro, sys\n"
        "from consumer.decode.avro import SchemalessAvroDecoder\n"
        "from consumer.errors import DecodeLimitError\n"
        "from tests.unit.test_avro_limits import NODE, deep_node\n"
        "try:\n"
        "    SchemalessAvroDecoder(fastavro.parse_schema(NODE)).decode(deep_node(200_000))\n"
        "except DecodeLimitError as exc:\n"
        "    print('refused:', exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": f"{root}:{root / 'tests'}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: Avro value nested deeper than DECODE_MAX_DEPTH=64" in done.stdout


def test_recursion_within_the_depth_limit_decodes() -> None:
    decoder = SchemalessAvroDecoder(fastavro.parse_schema(NODE), DecodeLimits(max_depth=10))
    fields, _row = decoder.decode(deep_node(10))
    assert fields["id"] == 1 and fields["next"] is not None
    with pytest.raises(DecodeLimitError, match="DECODE_MAX_DEPTH=10"):
        decoder.decode(deep_node(11))


def test_a_huge_count_of_zero_byte_items_is_refused_without_walking_them() -> None:
    """Before: fastavro looped 2**60 times holding the GIL (11 bytes of value)."""
    value = items_value(2**60)
    assert len(value) == 11
    with pytest.raises(DecodeLimitError, match="DECODE_MAX_ITEMS=1048576"):
        SchemalessAvroDecoder(with_items("null")).decode(value)


def test_zero_byte_items_within_the_item_cap_but_over_the_size_bound_are_refused() -> None:
    """Before: a moderate count of empty records allocated gigabytes (here the bound is 1 MB)."""
    limits = DecodeLimits(max_items=10**9, max_decoded_bytes=1_000_000)
    decoder = SchemalessAvroDecoder(with_items({"type": "record", "name": "E", "fields": []}), limits)
    with pytest.raises(DecodeLimitError, match="more than 1000000 bytes"):
        decoder.decode(items_value(10**8))
    fields, _row = decoder.decode(items_value(1000))
    assert len(json.loads(fields["xs"])) == 1000  # an array is a JSON cell


def test_many_one_byte_items_are_capped_by_the_item_count() -> None:
    schema = with_items("int")
    value = long_bytes(1) + long_bytes(2000) + bytes(2000) + long_bytes(0)
    with pytest.raises(DecodeLimitError, match="DECODE_MAX_ITEMS=1000 "):
        SchemalessAvroDecoder(schema, DecodeLimits(max_items=1000)).decode(value)
    assert len(json.loads(SchemalessAvroDecoder(schema).decode(value)[0]["xs"])) == 2000


def test_a_safe_schemas_short_value_skips_the_scanner_and_a_long_one_is_scanned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = with_items("long")
    limits = DecodeLimits(max_decoded_bytes=40 * 1000)
    threshold = analyse(schema).scan_above(limits)
    assert 0 < threshold < 1000

    def scanned(*_args: object) -> None:
        raise DecodeLimitError("scanned")

    monkeypatch.setattr(avro_module, "check_value", scanned)
    decoder = SchemalessAvroDecoder(schema, limits)
    short = long_bytes(1) + long_bytes(3) + bytes(3) + long_bytes(0)
    assert decoder.decode(short)[0]["xs"] == "[0,0,0]"
    with pytest.raises(DecodeLimitError, match="scanned"):
        decoder.decode(long_bytes(1) + long_bytes(threshold) + bytes(threshold) + long_bytes(0))


@pytest.mark.parametrize("value", [
    b"",  # nothing at all
    long_bytes(1) + long_bytes(1) + long_bytes(1),  # a branch with no record after it
    long_bytes(1) + long_bytes(7),  # branch 7 of a two-branch union
    long_bytes(1) + b"\xff" * 11,  # a varint that never ends
])
def test_bytes_that_are_no_value_are_decode_errors_from_the_scanner(value: bytes) -> None:
    with pytest.raises(DecodeError):
        SchemalessAvroDecoder(fastavro.parse_schema(NODE)).decode(value)


def test_strings_count_toward_the_size_bound_and_must_fit_the_value() -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "S", "fields": [
        {"name": "n", "type": ["null", "S"]}, {"name": "s", "type": "string"}]})
    decoder = SchemalessAvroDecoder(schema, DecodeLimits(max_decoded_bytes=10_000))
    text = b"x" * 3000
    with pytest.raises(DecodeLimitError, match="more than 10000 bytes"):
        decoder.decode(long_bytes(0) + long_bytes(len(text)) + text)
    with pytest.raises(DecodeError, match="announced"):
        decoder.decode(long_bytes(0) + long_bytes(50) + b"short")


class _OneSchemaRegistry(SchemaRegistryClient):
    def __init__(self, schema: Any) -> None:
        super().__init__("http://registry.invalid")
        self._schema = schema

    def schema(self, schema_id: int) -> Any:
        return self._schema


_RULES = ColumnRules(column_limits(1000))


def test_a_registry_writer_schema_is_analysed_when_loaded() -> None:
    decoder = RegistryAvroDecoder(_OneSchemaRegistry(NODE), None, _RULES, limits=DecodeLimits(max_depth=5))
    header = b"\x00" + (7).to_bytes(4, "big")
    assert decoder.decode(header + deep_node(5))[0]["id"] == 1
    with pytest.raises(DecodeLimitError, match="DECODE_MAX_DEPTH=5"):
        decoder.decode(header + deep_node(6))


def test_a_registry_schema_too_deep_to_parse_is_the_records_decode_error() -> None:
    schema: Any = "long"
    for level in range(5000):
        schema = {"type": "array", "items": schema}
    decoder = RegistryAvroDecoder(_OneSchemaRegistry({"type": "record", "name": "D", "fields": [
        {"name": "x", "type": schema}]}), None, _RULES)
    with pytest.raises(DecodeError, match="schema id 7 cannot be parsed: .*(RecursionError|nested too deeply)"):
        decoder.decode(b"\x00" + (7).to_bytes(4, "big") + long_bytes(0))


# --- JSON ------------------------------------------------------------------------------------------------


def test_json_nesting_is_bounded() -> None:
    decoder = JsonDecoder(None, DecodeLimits(max_depth=10))
    assert decoder.decode(b'{"a":' * 9 + b"1" + b"}" * 9)[0]["a"]
    with pytest.raises(DecodeLimitError, match="JSON value nested deeper than DECODE_MAX_DEPTH=10"):
        decoder.decode(b'{"a":' * 5 + b"[" * 6 + b"]" * 6 + b"}" * 5)
    with pytest.raises(DecodeError):
        decoder.decode(b"[" * 200_000 + b"]" * 200_000)  # past Python's own recursion limit
    assert decoder.decode(b'{"s": "' + b"[{" * 50 + b'"}')[0]["s"]  # brackets in a string nest nothing


# --- a record's failure is the record's --------------------------------------------------------------------


class _Raising:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def decode(self, value: bytes) -> tuple[Fields, dict[str, Any]]:
        if value == b"bad":
            raise self._error
        return {"id": value.decode()}, {"id": value.decode()}

    def columns(self) -> list[ColumnSpec]:
        return [ColumnSpec("id", ColumnKind.TEXT, False)]


def _batch(*values: bytes) -> list[RawRecord]:
    return [RawRecord("t", 0, offset, 0, None, value) for offset, value in enumerate(values)]


@pytest.mark.parametrize("error", [
    RecursionError("maximum recursion depth exceeded"), MemoryError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
    OverflowError("int too large"), ValueError("bad"),
])
def test_any_library_failure_on_one_value_dead_letters_that_record(error: BaseException) -> None:
    decoder = Decoder(_Raising(error), key_source("field:id", ["id"]), "field:id", 1 << 20)
    out = decoder.decode_batch(_batch(b"a", b"bad", b"c"))
    assert [r.key for r in out.decoded] == ["a", "c"]
    [letter] = out.dead_letters
    assert (letter.stage, letter.error_class) == (Stage.DECODE, type(error).__name__)
    assert letter.message.startswith(type(error).__name__)


def test_a_converter_failure_is_the_records_transform_error() -> None:
    """A JSON cell nested past what the encoder recurses into (here faked by a converter raising)."""
    schema = fastavro.parse_schema({"type": "record", "name": "J", "fields": [
        {"name": "id", "type": "string"}, {"name": "m", "type": {"type": "map", "values": "double"}}]})
    decoder = SchemalessAvroDecoder(schema)
    decoder._converters = {"m": lambda _value: (_ for _ in ()).throw(OverflowError("too big"))}
    records = Decoder(decoder, key_source("field:id", ["id"]), "field:id", 1 << 20)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, {"id": "k", "m": {"a": 1.0}})
    [letter] = records.decode_batch(_batch(buffer.getvalue())).dead_letters
    assert (letter.stage, letter.error_class) == (Stage.TRANSFORM, "TransformError")
    assert "OverflowError: too big" in letter.message


def test_a_registry_outage_stays_transient() -> None:
    decoder = Decoder(_Raising(RegistryUnavailableError("down")), key_source("coordinates", None), "coordinates",
                      1 << 20)
    with pytest.raises(RegistryUnavailableError):
        decoder.decode_batch(_batch(b"bad"))


# --- settings --------------------------------------------------------------------------------------------


def test_the_limits_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    assert DEFAULT_LIMITS == DecodeLimits.of(fields["decode_max_depth"].default, fields["decode_max_items"].default,
                                             fields["decode_max_expansion"].default,
                                             fields["max_record_bytes"].default)


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CONSUMER_TOPICS": "t", "VALUE_FORMAT": "json", "DECODE_MAX_DEPTH": "7",
                        "DECODE_MAX_ITEMS": "99", "DECODE_MAX_EXPANSION": "3", "MAX_RECORD_BYTES": "1000"}.items():
        monkeypatch.setenv(name, value)
    assert decode_limits(load_settings()) == DecodeLimits(7, 99, 3000)
    monkeypatch.setenv("DECODE_MAX_DEPTH", "0")
    with pytest.raises(ConfigError, match="^DECODE_MAX_DEPTH"):
        load_settings()
