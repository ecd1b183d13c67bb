"""Schema-driven DDL is checked before it runs: one test per rule of consumer.decode.column_rules, the registry
decoder dead-lettering a refused writer schema's records without merging its columns, and SCHEMA_FILE's
refusal as a configuration error naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from consumer.decode.avro import RegistryAvroDecoder
from consumer.decode.column_rules import ColumnRules
from consumer.decode.decoder import Decoder
from consumer.decode.keys import key_source
from consumer.decode.registry import SchemaNotFound, SchemaRegistryClient
from consumer.decode.schema import parse_schema
from consumer.errors import ConfigError, SchemaRejectedError
from consumer.records import ColumnKind as K
from consumer.records import ColumnSpec, RawRecord, Stage
from consumer.service.components import record_decoder
from consumer.settings import Settings
from consumer.sql.columns import META_COLUMNS, column_limits

RULES = ColumnRules(column_limits(1000))


def _text(name: str) -> ColumnSpec:
    return ColumnSpec(name, K.TEXT, True)


@pytest.mark.parametrize("name", ["a%b", "a b", "é", "1abc", "a-b", "", 'x"y'])
def test_a_name_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(SchemaRejectedError, match="not a plain identifier"):
        RULES.check([_text(name)])


def test_a_name_longer_than_63_bytes_is_refused_and_63_pass() -> None:
    RULES.check([_text("x" * 63)])
    with pytest.raises(SchemaRejectedError, match="64 bytes long, over the 63-byte limit"):
        RULES.check([_text("x" * 64)])


@pytest.mark.parametrize("name", [*META_COLUMNS, "_KAFKA_TOPIC", "_Idempotency_Key", "_kafka_headers"])
def test_a_metadata_column_name_is_refused_in_any_case(name: str) -> None:
    with pytest.raises(SchemaRejectedError, match="metadata columns"):
        RULES.check([_text("ok"), _text(name)])


@pytest.mark.parametrize(("precision", "scale"), [(1001, 2), (0, 0), (10, 11), (10, -1)])
def test_a_decimal_beyond_the_databases_precision_or_with_a_bad_scale_is_refused(precision: int, scale: int) -> None:
    with pytest.raises(SchemaRejectedError, match="decimal of"):
        RULES.check([ColumnSpec("amount", K.DECIMAL, True, precision, scale)])


def test_decimals_within_the_limits_pass() -> None:
    RULES.check([ColumnSpec("a", K.DECIMAL, True, 1000, 1000), ColumnSpec("b", K.DECIMAL, True, 1, 0)])


def test_names_equal_but_for_case_are_refused() -> None:
    with pytest.raises(SchemaRejectedError, match="'Id' and 'id' would be one column"):
        RULES.check([_text("Id"), _text("id")])
    with pytest.raises(SchemaRejectedError, match="would be one column"):
        RULES.admit({"id": _text("id")}, [_text("ID")])


def test_more_columns_than_the_cap_are_refused_alone_or_merged() -> None:
    rules = ColumnRules(column_limits(3))
    rules.check([_text(n) for n in "abc"])
    with pytest.raises(SchemaRejectedError, match="4 columns, over the limit of 3"):
        rules.check([_text(n) for n in "abcd"])
    known = rules.admit({}, [_text(n) for n in "abc"])
    with pytest.raises(SchemaRejectedError, match="4 columns"):
        rules.admit(known, [_text("d")])
    assert list(known) == ["a", "b", "c"]


def test_the_cap_never_passes_postgresqls_1600_columns_with_the_metadata() -> None:
    assert column_limits(10_000).max_columns + len(META_COLUMNS) == 1600


def test_admit_adds_new_fields_as_nullable_and_keeps_known_ones() -> None:
    known = {"a": ColumnSpec("a", K.BIGINT, False)}
    merged = RULES.admit(known, [ColumnSpec("a", K.TEXT, False), ColumnSpec("b", K.BIGINT, False)])
    assert merged == {"a": ColumnSpec("a", K.BIGINT, False), "b": ColumnSpec("b", K.BIGINT, True)}
    assert known == {"a": ColumnSpec("a", K.BIGINT, False)}  # never changed in place


def test_without_evolution_a_new_field_is_refused_but_the_first_schema_sets_the_columns() -> None:
    rules = ColumnRules(column_limits(1000), add_columns=False)
    known = rules.admit({}, [_text("a"), _text("b")])
    assert rules.admit(known, [_text("b")]) == known  # fewer fields: fine
    with pytest.raises(SchemaRejectedError, match="field 'c' is not a column of the table and SINK_SCHEMA_EVOLUTION=none"):
        rules.admit(known, [_text("a"), _text("c")])


def test_without_evolution_the_tables_columns_decide_when_known() -> None:
    rules = ColumnRules(column_limits(1000), add_columns=False)
    table = frozenset({"a", "b", "_kafka_topic"})
    assert set(rules.admit({"a": _text("a")}, [_text("a"), _text("b")], table)) == {"a", "b"}  # b: in the table
    with pytest.raises(SchemaRejectedError, match="field 'c' is not a column of the table"):
        rules.admit({}, [_text("a"), _text("c")], table)  # even as the first schema seen


def test_a_new_field_equal_but_for_case_to_an_older_column_of_the_table_is_refused() -> None:
    """SQLite compares column names case-insensitively: adding "aB" beside an older "Ab" would fail the
    ALTER (and with it every start); the table at start holds columns no schema known now has."""
    table = frozenset({"id", "Ab", *META_COLUMNS})
    with pytest.raises(SchemaRejectedError, match="'aB' and 'Ab' would be one column"):
        RULES.admit({"id": _text("id")}, [_text("id"), _text("aB")], table)
    assert set(RULES.admit({"id": _text("id")}, [_text("id"), _text("c")], table)) == {"id", "c"}


def test_the_tables_older_columns_count_towards_the_cap_when_a_schema_adds_one() -> None:
    rules = ColumnRules(column_limits(3))
    table = frozenset({"a", "old_1", "old_2", *META_COLUMNS})
    assert rules.admit({"a": _text("a")}, [_text("a")], table) == {"a": _text("a")}  # adds nothing: fine
    with pytest.raises(SchemaRejectedError, match="4 columns, over the limit of 3"):
        rules.admit({"a": _text("a")}, [_text("a"), _text("b")], table)


# --- the registry decoder ----------------------------------------------------------------------------------


def _schema(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}, *fields]}


class _Registry(SchemaRegistryClient):
    """Schemas by id from a dict, counting the asks."""

    def __init__(self, schemas: dict[int, Any]) -> None:
        super().__init__("http://unused")
        self.schemas = schemas
        self.asked: list[int] = []

    def schema(self, schema_id: int) -> Any:
        self.asked.append(schema_id)
        if schema_id not in self.schemas:
            raise SchemaNotFound(str(schema_id))
        return self.schemas[schema_id]


def _wire(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def _raw(value: bytes, offset: int) -> RawRecord:
    return RawRecord("t", 0, offset, 0, None, value)


HOSTILE_SCHEMAS = {
    "long name": _schema({"name": "n" * 64, "type": ["null", "string"], "default": None}),
    "percent": _schema({"name": "a%b", "type": ["null", "string"], "default": None}),
    "precision": _schema({"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 2000}}),
    "metadata": _schema({"name": "_kafka_offset", "type": "long"}),
    "too many": _schema(*({"name": f"f{i}", "type": "int"} for i in range(1000))),
    "not a record": "string",
}


@pytest.mark.parametrize("kind", list(HOSTILE_SCHEMAS))
def test_a_refused_writer_schema_dead_letters_its_records_and_merges_nothing(kind: str) -> None:
    registry = _Registry({1: _schema(), 2: HOSTILE_SCHEMAS[kind],
                          3: _schema({"name": "extra", "type": ["null", "string"], "default": None})})
    values = RegistryAvroDecoder(registry, None, RULES, parse_schema(_schema()))
    decoder = Decoder(values, key_source("field:id", ["id"]), "field:id", 1 << 20)
    good = b"\x04k1"  # the string "k1"
    out = decoder.decode_batch([_raw(_wire(1, good), 0), _raw(_wire(2, good), 1), _raw(_wire(2, good), 2),
                                _raw(_wire(3, good + b"\x02\x02x"), 3)])
    assert [(d.record.offset, d.stage, d.error_class) for d in out.dead_letters] == [
        (1, Stage.VALIDATE, "SchemaRejectedError"), (2, Stage.VALIDATE, "SchemaRejectedError")]
    assert "schema id 2 refused" in out.dead_letters[0].message
    assert [d.key for d in out.decoded] == ["k1", "k1"]
    # The refused schema added nothing; the good one after it added its field.
    assert [c.name for c in values.columns()] == ["id", "extra"]
    assert registry.asked.count(2) == 1  # refused once, remembered


def test_the_refusal_names_the_field_and_the_limit() -> None:
    registry = _Registry({2: HOSTILE_SCHEMAS["long name"]})
    values = RegistryAvroDecoder(registry, None, RULES, parse_schema(_schema()))
    with pytest.raises(SchemaRejectedError, match=r"'nnnn.*' is 64 bytes long, over the 63-byte limit"):
        values.decode(_wire(2, b"\x04k1\x00"))


def test_with_evolution_off_a_writer_with_a_new_field_is_refused() -> None:
    registry = _Registry({3: _schema({"name": "extra", "type": ["null", "string"], "default": None})})
    rules = ColumnRules(column_limits(1000), add_columns=False)
    values = RegistryAvroDecoder(registry, None, rules, parse_schema(_schema()))
    with pytest.raises(SchemaRejectedError, match="'extra' is not a column of the table"):
        values.decode(_wire(3, b"\x04k1\x00"))
    assert [c.name for c in values.columns()] == ["id"]


def test_kept_to_the_table_the_latest_schemas_extra_field_is_dropped_and_refused_later() -> None:
    """Under SINK_SCHEMA_EVOLUTION=none the table at start decides, not the subject's latest schema (anyone
    may register it): its field the table lacks is no column, and a writer schema with it is refused."""
    extra = {"name": "extra", "type": ["null", "string"], "default": None}
    registry = _Registry({3: _schema(extra), 4: _schema()})
    rules = ColumnRules(column_limits(1000), add_columns=False)
    values = RegistryAvroDecoder(registry, None, rules, parse_schema(_schema(extra)))
    values.table_at_start(frozenset({"id", "_kafka_topic"}))
    assert [c.name for c in values.columns()] == ["id"]
    with pytest.raises(SchemaRejectedError, match="'extra' is not a column of the table"):
        values.decode(_wire(3, b"\x04k1\x00"))
    assert values.decode(_wire(4, b"\x04k1"))[0] == {"id": "k1"}


# --- SCHEMA_FILE and the latest registry schema at start ----------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in list(os.environ):
        if name.upper() in {f.upper() for f in Settings.model_fields} or name.upper().startswith("KAFKA_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONSUMER_TOPICS", "t")
    return tmp_path


@pytest.mark.parametrize("value_format", ["avro", "json"])
def test_a_schema_file_the_table_cannot_take_is_a_configuration_error_naming_it(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, value_format: str
) -> None:
    path = settings_env / "bad.avsc"
    path.write_text(json.dumps(HOSTILE_SCHEMAS["long name"]))
    monkeypatch.setenv("SCHEMA_FILE", str(path))
    monkeypatch.setenv("VALUE_FORMAT", value_format)
    with pytest.raises(ConfigError, match=r"^SCHEMA_FILE: field 'n+' is 64 bytes long"):
        record_decoder(Settings())


def test_sink_max_columns_applies_to_the_schema_file(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = settings_env / "wide.avsc"
    path.write_text(json.dumps(_schema({"name": "a", "type": "int"}, {"name": "b", "type": "int"})))
    monkeypatch.setenv("SCHEMA_FILE", str(path))
    record_decoder(Settings())
    monkeypatch.setenv("SINK_MAX_COLUMNS", "2")
    with pytest.raises(ConfigError, match="SCHEMA_FILE: 3 columns, over the limit of 2"):
        record_decoder(Settings())
