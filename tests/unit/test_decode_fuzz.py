"""Fuzz of the decode path: random writer schemas from a small grammar (recursion, arrays of items that take
zero bytes, unions, maps, named references, logical types) and random, structured (varint streams with huge
counts) and mutated valid bytes. Decoding either returns a row or raises PoisonRecordError: never another
exception, never a crash, never more memory than the cap.

The property runs in a child process under RLIMIT_AS, so a segfault, a runaway allocation or a spin fails
this test instead of killing or freezing pytest; hypothesis' example count and deadline keep it short.
"""

from __future__ import annotations

import datetime as dt
import random
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from consumer.decode.avro import SchemalessAvroDecoder
from consumer.decode.decoder import Decoder
from consumer.decode.json_values import JsonDecoder
from consumer.decode.keys import key_source
from consumer.decode.limits import DecodeLimits
from consumer.errors import ConfigError, PoisonRecordError
from consumer.records import RawRecord
from consumer.tools.avro_random import RandomValues, encode

ROOT = Path(__file__).resolve().parents[2]
MEMORY_CAP_BYTES = 1536 << 20  # address space of the child: the interpreter, fastavro, hypothesis and one value
MAX_EXAMPLES = 1000
# Small limits so that hostile shapes reach them within the few bytes hypothesis draws.
LIMITS = DecodeLimits(max_depth=16, max_items=10_000, max_decoded_bytes=4 << 20)

_PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
_LOGICAL = [
    {"type": "string", "logicalType": "uuid"}, {"type": "int", "logicalType": "date"},
    {"type": "long", "logicalType": "timestamp-millis"},
    {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
]


@st.composite
def avro_schemas(draw: st.DrawFn) -> Any:
    """A record schema; named records may refer to themselves (or any record named before) by name."""
    names: list[str] = []

    def avro_type(depth: int) -> Any:
        kinds = ["primitive", "logical", "ref"] + (["record", "array", "map", "union", "enum", "fixed"]
                                                   if depth < 4 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "ref" and names:
            return draw(st.sampled_from(names))
        if kind == "logical":
            return draw(st.sampled_from(_LOGICAL))
        if kind in ("primitive", "ref"):
            return draw(st.sampled_from(_PRIMITIVES))
        if kind == "record":
            return record(depth)
        if kind == "array":  # zero-byte items on purpose, often
            items = draw(st.sampled_from(["null", {"type": "record", "name": f"E{len(names)}", "fields": []},
                                          {"type": "fixed", "name": f"Z{len(names)}", "size": 0}, "recurse"]))
            if isinstance(items, dict):
                names.append(items["name"])
            return {"type": "array", "items": avro_type(depth + 1) if items == "recurse" else items}
        if kind == "map":
            return {"type": "map", "values": avro_type(depth + 1)}
        if kind == "enum":
            names.append(f"N{len(names)}")
            return {"type": "enum", "name": names[-1], "symbols": ["A", "B", "C"][: draw(st.integers(1, 3))]}
        if kind == "fixed":
            names.append(f"F{len(names)}")
            return {"type": "fixed", "name": names[-1], "size": draw(st.integers(0, 4))}
        other = avro_type(depth + 1)
        return ["null", other] if other != "null" and not isinstance(other, list) else ["null", "long"]

    def record(depth: int) -> Any:
        name = f"R{len(names)}"
        names.append(name)  # from here on its fields may use it: recursion
        count = draw(st.integers(0 if depth else 1, 3))
        return {"type": "record", "name": name, "fields": [
            {"name": f"f{i}", "type": avro_type(depth + 1)} for i in range(count)]}

    return record(0)


def _varint(n: int) -> bytes:
    zigzag, out = (n << 1) ^ (n >> 63), bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


_COUNTS = st.one_of(st.integers(-3, 3), st.sampled_from([2**31, 2**40, 2**60, -(2**60), 10**6, 10**7]))
_STRUCTURED = st.lists(st.one_of(_COUNTS.map(_varint), st.binary(max_size=8)), max_size=12).map(b"".join)


@st.composite
def values_of(draw: st.DrawFn, schema: Any) -> bytes:
    """Random bytes, a varint stream, or a valid value (when one can be made) with some bytes changed."""
    how = draw(st.sampled_from(["random", "structured", "mutated"]))
    if how == "random":
        return draw(st.binary(max_size=64))
    if how == "structured":
        return draw(_STRUCTURED)
    try:
        valid = bytearray(encode(schema, RandomValues(schema, random.Random(draw(st.integers(0, 1000)))).record()))
    except (RecursionError, ValueError, TypeError, KeyError, IndexError, AssertionError):
        valid = bytearray()  # no finite value of this schema, or one the generator cannot make
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(valid)))
        valid[at:at + draw(st.integers(0, 2))] = draw(_STRUCTURED)
    return bytes(valid)


def _decode(decoder: Decoder, value: bytes) -> None:
    """One record through Decoder.decode_batch: decoded or dead-lettered, nothing else."""
    out = decoder.decode_batch([RawRecord("t", 0, 0, 0, None, value)])
    assert len(out.decoded) + len(out.dead_letters) == 1


@settings(max_examples=MAX_EXAMPLES, deadline=dt.timedelta(seconds=5), database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(data=st.data())
def avro_decoding_returns_or_raises_poison(data: st.DataObject) -> None:
    schema_json = data.draw(avro_schemas(), label="schema")
    try:
        schema = fastavro.parse_schema(schema_json)
        values = SchemalessAvroDecoder(schema, LIMITS)
    except (SchemaParseException, ValueError, ConfigError):
        reject()  # not a schema fastavro accepts: nothing to decode
    value = data.draw(values_of(schema), label="value")
    try:
        values.decode(value)
    except PoisonRecordError:
        pass
    _decode(Decoder(values, key_source("coordinates", None), "coordinates", 1 << 20), value)


_JSON_TEXT = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5)),
                 lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3)),
                 max_leaves=40).map(lambda obj: repr(obj).replace("None", "null").replace("'", '"').encode()),
)


@settings(max_examples=MAX_EXAMPLES // 2, deadline=dt.timedelta(seconds=5), database=None, derandomize=True)
@given(value=_JSON_TEXT)
def json_decoding_returns_or_raises_poison(value: bytes) -> None:
    values = JsonDecoder(None, LIMITS)
    try:
        values.decode(value)
    except PoisonRecordError:
        pass
    _decode(Decoder(values, key_source("coordinates", None), "coordinates", 1 << 20), value)


def _run_capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
    avro_decoding_returns_or_raises_poison()
    json_decoding_returns_or_raises_poison()
    print("fuzz: no failure")


def test_decoding_any_schema_and_bytes_returns_or_dead_letters_under_a_memory_cap() -> None:
    done = subprocess.run([sys.executable, "-m", "tests.unit.test_decode_fuzz"], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "fuzz: no failure" in done.stdout, (
        f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


if __name__ == "__main__":
    _run_capped()
