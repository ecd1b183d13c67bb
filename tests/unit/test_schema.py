from __future__ import annotations

import decimal
import json

from support.events import SCHEMA_PATH

from consumer.decode.schema import (
    cell_converters,
    columns_of,
    fast_json_text,
    float_free_fields,
    load_schema_file,
    merge_columns,
    parse_schema,
    to_json_text,
)
from consumer.records import ColumnKind as K
from consumer.records import ColumnSpec


def test_event_schema_columns() -> None:
    columns = columns_of(load_schema_file(SCHEMA_PATH))
    assert columns == [
        ColumnSpec("event_id", K.UUID, False),
        ColumnSpec("occurred_at", K.TIMESTAMP, False),
        ColumnSpec("user_id", K.BIGINT, False),
        ColumnSpec("event_type", K.TEXT, False),
        ColumnSpec("amount", K.DECIMAL, True, 12, 2),
        ColumnSpec("currency", K.TEXT, True),
        ColumnSpec("page_url", K.TEXT, False),
        ColumnSpec("score", K.DOUBLE, False),
        ColumnSpec("is_test", K.BOOLEAN, False),
        ColumnSpec("event_date", K.DATE, False),
        ColumnSpec("attributes", K.JSON, False),
    ]


def schema(*fields: dict) -> dict:
    return parse_schema({"type": "record", "name": "R", "fields": list(fields)})


def test_primitives_and_nullable_unions() -> None:
    cols = columns_of(schema(
        {"name": "a", "type": "int"},
        {"name": "b", "type": ["null", "long"]},
        {"name": "c", "type": ["float", "null"]},
        {"name": "d", "type": "bytes"},
        {"name": "e", "type": ["null", {"type": "fixed", "name": "F", "size": 4}]},
        {"name": "f", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "g", "type": {"type": "int", "logicalType": "time-millis"}},
    ))
    assert [(c.name, c.kind, c.nullable) for c in cols] == [
        ("a", K.INTEGER, False), ("b", K.BIGINT, True), ("c", K.FLOAT, True), ("d", K.BINARY, False),
        ("e", K.BINARY, True), ("f", K.TIMESTAMP, True), ("g", K.TIME, False),
    ]


def test_complex_types_are_json() -> None:
    cols = columns_of(schema(
        {"name": "arr", "type": {"type": "array", "items": "int"}},
        {"name": "rec", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
        {"name": "multi", "type": ["null", "int", "string"]},
        {"name": "two", "type": ["int", "string"]},
        {"name": "map", "type": ["null", {"type": "map", "values": "long"}]},
    ))
    assert [(c.name, c.kind, c.nullable) for c in cols] == [
        ("arr", K.JSON, False), ("rec", K.JSON, False), ("multi", K.JSON, True), ("two", K.JSON, False),
        ("map", K.JSON, True),
    ]


def test_merge_columns_new_fields_nullable() -> None:
    known = {"a": ColumnSpec("a", K.INTEGER, False)}
    merged = merge_columns(known, [ColumnSpec("a", K.BIGINT, True), ColumnSpec("b", K.DECIMAL, False, 10, 3)])
    assert merged == {"a": ColumnSpec("a", K.INTEGER, False), "b": ColumnSpec("b", K.DECIMAL, True, 10, 3)}
    assert known == {"a": ColumnSpec("a", K.INTEGER, False)}  # not mutated


def test_json_text() -> None:
    import datetime as dt
    import decimal

    text = to_json_text({"d": decimal.Decimal("1.50"), "t": dt.date(2024, 1, 2), "b": b"\x00\x01", "s": "é"})
    assert json.loads(text) == {"d": "1.50", "t": "2024-01-02", "b": "AAE=", "s": "é"}
    assert to_json_text(None) is None


def test_fast_json_text_writes_the_same_text_as_the_standard_encoder() -> None:
    import datetime as dt
    import decimal
    import uuid

    value = {
        "d": decimal.Decimal("1.50"), "t": dt.date(2024, 1, 2), "ts": dt.datetime(2024, 1, 1, 0, 0, 0, 7000, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 1, 1, 12), "time": dt.time(1, 2, 3, 4000), "b": b"\x00\x01",
        "s": 'é "q" \\ \n \t \u2028', "n": None, "l": [1, -(2**63), True], "u": uuid.UUID(int=7), "nested": {"x": {}},
    }
    assert fast_json_text(value) == to_json_text(value)
    assert fast_json_text(None) is None
    deep: dict[str, object] = {}
    for _ in range(400):  # deeper than orjson nests: the standard encoder takes over
        deep = {"x": deep}
    assert fast_json_text(deep) == to_json_text(deep)


def test_float_free_fields_take_the_fast_encoder_and_the_rest_keep_nan() -> None:
    schema = parse_schema({
        "type": "record", "name": "R", "fields": [
            {"name": "doubles", "type": {"type": "map", "values": "double"}},
            {"name": "strings", "type": {"type": "map", "values": "string"}},
            {"name": "inner", "type": ["null", {"type": "record", "name": "In", "fields": [
                {"name": "next", "type": ["null", "In"]}, {"name": "f", "type": "float"}]}]},
            {"name": "again", "type": ["null", "In"]},
            {"name": "chain", "type": ["null", {"type": "record", "name": "Chain", "fields": [
                {"name": "next", "type": ["null", "Chain"]}, {"name": "d", "type": {
                    "type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}}]}]},
            {"name": "score", "type": "double"},
        ],
    })
    assert float_free_fields(schema) == {"strings", "chain"}
    converters = cell_converters(columns_of(schema), float_free_fields(schema))
    assert converters["strings"] is fast_json_text
    assert converters["doubles"]({"x": float("nan")}) == '{"x":NaN}'  # PostgreSQL refuses it: dead-lettered
    assert converters["chain"]({"next": None, "d": decimal.Decimal("1.25")}) == '{"next":null,"d":"1.25"}'


def test_a_named_type_used_again_by_name_maps_like_its_definition() -> None:
    schema = parse_schema({
        "type": "record", "name": "R", "namespace": "n", "fields": [
            {"name": "c1", "type": {"type": "enum", "name": "Color", "symbols": ["A", "B"]}},
            {"name": "c2", "type": "Color"},
            {"name": "f1", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "f2", "type": ["null", "n.F"]},
            {"name": "r1", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "r2", "type": "Inner"},
        ],
    })
    kinds = {c.name: (c.kind, c.nullable) for c in columns_of(schema)}
    assert kinds == {
        "c1": (K.TEXT, False), "c2": (K.TEXT, False),
        "f1": (K.BINARY, False), "f2": (K.BINARY, True),
        "r1": (K.JSON, False), "r2": (K.JSON, False),
    }
