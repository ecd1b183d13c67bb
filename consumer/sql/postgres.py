"""PostgreSQL's binary COPY: which staged column types take it, the dumpers for cells that arrive as text
(uuid, JSON), and the errors that send a batch back to text COPY."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

# Staged column types (by OID) whose binary form psycopg writes right from the Python values the Avro
# decoders give; a table with any other column type is written with text COPY.
_INT8, _FLOAT8, _BOOL, _TEXT, _VARCHAR, _BPCHAR, _BYTEA = 20, 701, 16, 25, 1043, 1042, 17
_INT2, _INT4, _FLOAT4 = 21, 23, 700
# Narrow numbers are staged wide, so a value out of range fails as the INSERT ... SELECT casts it into the
# target (22003, the row's fault) instead of being wrapped silently by a binary dumper (psycopg packs 2**40
# into an int4 as 0, and 1e300 into a real as infinity).
STAGED_WIDE = {_INT2: (_INT8, "bigint"), _INT4: (_INT8, "bigint"), _FLOAT4: (_FLOAT8, "double precision")}
_NUMERIC, _DATE, _TIME, _TIMESTAMPTZ, _UUID, _JSON, _JSONB = 1700, 1082, 1083, 1184, 2950, 114, 3802
BINARY_COPYABLE = frozenset({
    _INT8, _FLOAT8, _BOOL, _TEXT, _VARCHAR, _BPCHAR, _BYTEA, _NUMERIC, _DATE, _TIME, _TIMESTAMPTZ, _UUID, _JSON,
    _JSONB,
})


class UuidTextBinaryDumper(Dumper):
    """uuid cells arrive as canonical text (schema.reading_uuids_as_text); psycopg's own wants uuid.UUID."""

    format = Format.BINARY
    oid = _UUID

    def dump(self, obj: Any) -> bytes:
        return obj.bytes if isinstance(obj, uuid.UUID) else bytes.fromhex(obj.replace("-", ""))


class JsonTextBinaryDumper(Dumper):
    """JSON cells arrive as JSON text; psycopg's own would encode the text again as one JSON string. Anything
    but text raises AttributeError here, which sends the batch to text COPY (DUMP_ERRORS)."""

    format = Format.BINARY
    oid = _JSON

    def dump(self, obj: Any) -> bytes:
        encoded: bytes = obj.encode()
        return encoded


class JsonbTextBinaryDumper(JsonTextBinaryDumper):
    oid = _JSONB

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + super().dump(obj)  # jsonb's binary form: version 1, then the text


class NotBinaryCopyable(Exception):
    """A value psycopg cannot write in binary for its column (a naive datetime for timestamptz, say)."""


# Raised by psycopg's binary dumpers for a value of another type than its column's, before anything is sent.
DUMP_ERRORS = (TypeError, ValueError, AttributeError, OverflowError, psycopg.DataError, psycopg.ProgrammingError)
