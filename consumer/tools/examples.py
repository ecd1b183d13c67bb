"""The example Avro schemas shipped inside the package (consumer/schemas/, package data), so the `--help`
examples, `demo` and `produce` name files that exist after `pip install` as in a checkout (where the root's
schemas/ points at the same files)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

EVENT_SCHEMA = "event.avsc"  # the sample product event: demo, tests and benchmark produce these
ALL_TYPES_SCHEMA = "all_types.avsc"  # every Avro type and logical type the sink maps to a column


def example_schema(name: str = EVENT_SCHEMA) -> Path:
    """The installed path of an example schema (a regular file: the package is installed unzipped)."""
    return Path(str(files("consumer").joinpath("schemas", name)))
