"""The random value generator and the produce mix: valid values for every type, poison that never decodes,
ids that never collide, exact kinds at the extreme ratios, pacing on a fake clock."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import uuid
from pathlib import Path

import fastavro
import pytest
from fakeclock import FakeClock

from consumer.decode.avro import SchemalessAvroDecoder
from consumer.decode.schema import load_schema_file
from consumer.errors import ConfigError, DecodeError
from consumer.tools.avro_random import RandomValues, encode, named_types, poison
from consumer.tools.produce import EventMaker, Pacer, ProducePlan, default_id_field

ALL_TYPES = Path(__file__).resolve().parents[2] / "schemas" / "all_types.avsc"


@pytest.fixture(scope="module")
def schema() -> object:
    return load_schema_file(ALL_TYPES)


def test_every_generated_value_is_valid_and_decodes_back_unchanged(schema: object) -> None:
    values, decoder = RandomValues(schema, random.Random(3)), SchemalessAvroDecoder(schema)
    for _ in range(300):
        value = values.record()
        assert fastavro.validate(value, schema)
        fields, _row = decoder.decode(encode(schema, value))
        assert fields["f_int"] == value["f_int"] and fields["f_bytes"] == value["f_bytes"]


def test_values_cover_each_logical_type_at_its_precision(schema: object) -> None:
    value = RandomValues(schema, random.Random(5)).record()
    assert isinstance(value["f_decimal_bytes"], decimal.Decimal) and value["f_decimal_bytes"].as_tuple().exponent == -3
    assert len(value["f_decimal_fixed"].as_tuple().digits) <= 12
    assert uuid.UUID(value["f_uuid"]).version == 4
    assert isinstance(value["f_date"], dt.date)
    assert value["f_time_millis"].microsecond % 1000 == 0
    assert value["f_timestamp_millis"].tzinfo is dt.UTC and value["f_timestamp_millis"].microsecond % 1000 == 0
    assert value["f_local_timestamp_micros"].tzinfo is None
    assert value["f_float"] == float(value["f_float"])  # float32-representable by construction
    assert len(value["f_fixed"]) == 8


def test_recursive_and_named_references_resolve(schema: object) -> None:
    names = named_types(schema)
    assert {"com.example.types.Node", "Node", "Color", "Money"} <= set(names)
    depth_seen = 0
    values = RandomValues(schema, random.Random(11))
    for _ in range(200):
        node, depth = values.record()["f_record"], 0
        while node is not None:
            node, depth = node["next"], depth + 1
        depth_seen = max(depth_seen, depth)
    assert 1 < depth_seen <= 6  # recursion happens and is bounded


def test_poison_never_decodes(schema: object) -> None:
    values, decoder, rng = RandomValues(schema, random.Random(1)), SchemalessAvroDecoder(schema), random.Random(2)
    for _ in range(500):
        with pytest.raises(DecodeError):
            decoder.decode(poison(encode(schema, values.record()), rng))


def test_event_maker_gives_fresh_ids_and_exact_duplicates(schema: object) -> None:
    plan = ProducePlan(topic="t", id_field=default_id_field(schema), duplicate_ratio=0.5)
    maker = EventMaker(schema, plan, random.Random(9))
    seen: dict[bytes, bytes] = {}
    kinds = {"valid": 0, "duplicate": 0}
    for _ in range(400):
        kind = maker.kind()
        key, value = maker.make(kind)
        assert key is not None and value is not None
        kinds[kind] += 1
        if kind == "valid":
            assert key not in seen
            seen[key] = value
        else:
            assert seen[key] == value
    assert kinds["valid"] == len(seen) and kinds["duplicate"] > 100


@pytest.mark.parametrize(("ratio", "kind"), [("poison_ratio", "poison"), ("tombstone_ratio", "tombstone")])
def test_a_ratio_of_one_makes_only_that_kind(schema: object, ratio: str, kind: str) -> None:
    maker = EventMaker(schema, ProducePlan(topic="t", id_field="id", **{ratio: 1.0}), random.Random(1))
    assert {maker.kind() for _ in range(50)} == {kind}


def test_bad_plans_name_the_option() -> None:
    with pytest.raises(ConfigError, match="--poison-ratio"):
        ProducePlan(topic="t", poison_ratio=0.6, duplicate_ratio=0.6).check()
    with pytest.raises(ConfigError, match="--rate"):
        ProducePlan(topic="t", rate=0).check()
    with pytest.raises(ConfigError, match="--count"):
        ProducePlan(topic="t", count=None).check()


def test_unknown_id_field_is_a_config_error(schema: object) -> None:
    with pytest.raises(ConfigError, match="--id-field"):
        EventMaker(schema, ProducePlan(topic="t", id_field="nope"), random.Random(1))
    with pytest.raises(ConfigError, match="--id-field"):
        EventMaker(schema, ProducePlan(topic="t", id_field="f_map"), random.Random(1))


def test_pacer_holds_the_rate_without_sleeping_per_record() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock)  # one record per 10 ms
    for sent in range(200):
        pacer.wait_for(sent)
    assert clock.monotonic() - 1000.0 == pytest.approx(1.99)  # the 200th record's slot
    assert all(s >= 0.005 for s in clock.sleeps)


def test_pacer_without_a_rate_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock)
    for sent in range(100):
        pacer.wait_for(sent)
    assert clock.sleeps == []
