"""What a writer schema lets a hostile value do, worked out once per schema (SCHEMA_FILE at start, a registry id
when it is loaded): is it recursive, can an array's items take zero bytes, how many Python bytes can one value
byte become. A safe schema's values go straight to fastavro's C reader; a risky one's are walked first by
`consumer.decode.avro_scan`, which enforces the `DecodeLimits`.

The schema is compiled into a graph of `AvroNode`s (a named type is one node however often it is used, so a
recursive schema is a cycle) that the scanner walks. Sizes of Python objects are estimates for 64-bit CPython,
on the high side: they decide when to look closer and what to refuse, never what a value means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consumer.decode.limits import DecodeLimits

NULL, BOOLEAN, INT, FLOAT, DOUBLE, BYTES, STRING, FIXED, ENUM, RECORD, ARRAY, MAP, UNION = range(13)

_PRIMITIVES = {
    "null": NULL, "boolean": BOOLEAN, "int": INT, "long": INT, "float": FLOAT, "double": DOUBLE,
    "bytes": BYTES, "string": STRING,
}
# Estimated Python bytes of the object a value of each kind becomes, without its children or its characters
# (None, booleans and enum symbols are shared objects; a container's slot for each item is counted apart).
_OWN_COST = {NULL: 0, BOOLEAN: 0, INT: 32, FLOAT: 24, DOUBLE: 24, BYTES: 33, STRING: 49, FIXED: 33, ENUM: 0,
             RECORD: 64, ARRAY: 56, MAP: 64, UNION: 0}
LOGICAL_COST = 112  # a Decimal, datetime or UUID object
LIST_SLOT = 8  # an array item's pointer in its list
DICT_ENTRY = 40  # a record field's or map entry's share of its dict
CHAR_COST = 4  # a string character may take 4 bytes (UCS-4); bytes take 1
_BYTE_COST = {STRING: CHAR_COST, BYTES: 1}


class AvroNode:
    """One Avro type of the writer schema. `children`: record fields, union branches, or the one item type of
    an array or map. `size`: a fixed's size or an enum's symbol count. The rest is filled by `analyse`."""

    __slots__ = ("byte_cost", "children", "cost", "depth", "kind", "leaf", "min_bytes", "size", "total_cost",
                 "zero_width")

    def __init__(self, kind: int, size: int = 0, logical: bool = False) -> None:
        self.kind = kind
        self.children: list[AvroNode] = []
        self.size = size
        self.leaf = kind not in (RECORD, ARRAY, MAP, UNION)  # read whole without looking at another node
        self.cost = LOGICAL_COST if logical else _OWN_COST[kind] + (size if kind == FIXED else 0)
        self.byte_cost = _BYTE_COST.get(kind, 0)  # estimated Python bytes per byte of a string's or bytes' content
        self.min_bytes = 0  # fewest bytes a value of this type takes
        self.zero_width = False  # every value of this type takes zero bytes (null, fixed 0, record of those)
        self.depth = 0  # nesting levels (records, arrays, maps) of a value, when not recursive
        self.total_cost = 0  # estimated Python bytes of the smallest value, children included


@dataclass(frozen=True, slots=True)
class SchemaRisk:
    """The analysis of one writer schema: its compiled root and what a value of it can cost."""

    root: AvroNode
    recursive: bool  # a named type reachable from itself: nesting is bounded only by the value's bytes
    zero_byte_items: bool  # an array whose items may take zero bytes: its count is bounded by nothing
    depth: int  # nesting levels of a value (not meaningful when recursive)
    expansion: float  # worst estimated Python bytes per value byte (inf with zero-byte items)

    def scan_above(self, limits: DecodeLimits) -> int:
        """Values longer than this many bytes are walked by the scanner before decoding; -1: every value.
        A safe schema's shorter values cannot exceed a limit: each item takes a byte, nesting is the schema's."""
        if self.recursive or self.zero_byte_items or self.depth > limits.max_depth:
            return -1
        return min(limits.max_items, int(limits.max_decoded_bytes / self.expansion))


def analyse(schema: Any) -> SchemaRisk:
    """The risk of a parsed (fastavro) writer schema; ValueError when it is not one this analysis can follow
    (an unknown name, or nested too deeply for Python to walk)."""
    try:
        root = _Compiler(schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}).build(schema)
        _Sizes().visit(root)
    except RecursionError:
        raise ValueError("the schema is nested too deeply to analyse") from None
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not an Avro schema: {exc}") from None
    arrays = [node for node in _reachable(root) if node.kind in (ARRAY, MAP)]
    zero_byte_items = any(node.kind == ARRAY and node.children[0].min_bytes == 0 for node in arrays)
    return SchemaRisk(root, _is_recursive(root), zero_byte_items, root.depth, _expansion(root, arrays))


class _Compiler:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._nodes: dict[str, AvroNode] = {}

    def build(self, avro_type: Any) -> AvroNode:
        if isinstance(avro_type, list):
            node = AvroNode(UNION)
            node.children = [self.build(branch) for branch in avro_type]
            node.size = len(node.children)
            return node
        if isinstance(avro_type, str):
            if avro_type in _PRIMITIVES:
                return AvroNode(_PRIMITIVES[avro_type])
            if avro_type in self._nodes:
                return self._nodes[avro_type]
            if avro_type in self._named:
                return self.build(self._named[avro_type])
            raise ValueError(f"the schema names an unknown type {avro_type!r}")
        if not isinstance(avro_type, dict):
            raise TypeError(f"not an Avro type: {type(avro_type).__name__}")
        return self._complex(avro_type)

    def _complex(self, avro_type: dict[str, Any]) -> AvroNode:
        base, logical = avro_type.get("type"), "logicalType" in avro_type
        if base in ("record", "error"):
            node = self._named_node(avro_type, AvroNode(RECORD))  # named before its fields: they may use it
            node.children = [self.build(field["type"]) for field in avro_type["fields"]]
            return node
        if base == "enum":
            return self._named_node(avro_type, AvroNode(ENUM, len(avro_type["symbols"])))
        if base == "fixed":
            return self._named_node(avro_type, AvroNode(FIXED, int(avro_type["size"]), logical))
        if base in ("array", "map"):
            node = AvroNode(ARRAY if base == "array" else MAP)
            node.children = [self.build(avro_type["items" if base == "array" else "values"])]
            return node
        if isinstance(base, str) and base in _PRIMITIVES:
            return AvroNode(_PRIMITIVES[base], logical=logical)
        return self.build(base)

    def _named_node(self, avro_type: dict[str, Any], node: AvroNode) -> AvroNode:
        name = avro_type.get("name")
        if isinstance(name, str):
            self._nodes[name] = node
        return node


class _Sizes:
    """Fills min_bytes, zero_width, depth and total_cost bottom-up; a node met again while it is being
    visited (recursion) counts as zero, so each figure is a lower bound there and the node is marked recursive
    by `_is_recursive` anyway."""

    def __init__(self) -> None:
        self._done: set[int] = set()
        self._open: set[int] = set()

    def visit(self, node: AvroNode) -> None:
        if id(node) in self._done or id(node) in self._open:
            return
        self._open.add(id(node))
        for child in node.children:
            self.visit(child)
        self._open.discard(id(node))
        self._done.add(id(node))
        # A child still open (a recursive use) has zeros and zero_width False: each figure stays a lower bound.
        kids = node.children
        kind = node.kind
        if kind == RECORD:
            node.min_bytes = sum(child.min_bytes for child in kids)
            node.zero_width = all(child.zero_width for child in kids)
            node.depth = 1 + max((child.depth for child in kids), default=0)
            node.total_cost = node.cost + sum(DICT_ENTRY + child.total_cost for child in kids)
        elif kind == UNION:
            node.min_bytes = 1 + min((child.min_bytes for child in kids), default=0)
            node.depth = max((child.depth for child in kids), default=0)
            node.total_cost = max((child.total_cost for child in kids), default=0)
        elif kind in (ARRAY, MAP):
            node.min_bytes = 1  # an empty array is one zero count
            node.depth = 1 + kids[0].depth
            node.total_cost = node.cost
        else:
            node.min_bytes = _PRIMITIVE_BYTES.get(kind, node.size if kind == FIXED else 1)
            node.zero_width = node.min_bytes == 0 and kind in (NULL, FIXED)
            node.total_cost = node.cost


_PRIMITIVE_BYTES = {NULL: 0, BOOLEAN: 1, INT: 1, FLOAT: 4, DOUBLE: 8, BYTES: 1, STRING: 1, ENUM: 1}


def _reachable(root: AvroNode) -> list[AvroNode]:
    seen: dict[int, AvroNode] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node.children)
    return list(seen.values())


def _is_recursive(root: AvroNode) -> bool:
    """A cycle in the type graph: a depth-first walk meets a node that is on its own path."""
    on_path: set[int] = set()
    finished: set[int] = set()
    stack: list[tuple[AvroNode, int]] = [(root, 0)]
    while stack:
        node, next_child = stack.pop()
        if next_child == 0:
            if id(node) in on_path:
                return True
            if id(node) in finished:
                continue
            on_path.add(id(node))
        if next_child < len(node.children):
            stack.append((node, next_child + 1))
            child = node.children[next_child]
            if id(child) in on_path:
                return True
            if id(child) not in finished:
                stack.append((child, 0))
        else:
            on_path.discard(id(node))
            finished.add(id(node))
    return False


def _expansion(root: AvroNode, containers: list[AvroNode]) -> float:
    """Worst estimated Python bytes per value byte: over the whole value (a value is at least one byte long)
    and over each repeated part (an array item, a map entry with its key), and the characters of a string."""
    worst = max(float(CHAR_COST), root.total_cost / max(1, root.min_bytes))
    for node in containers:
        item = node.children[0]
        if node.kind == ARRAY:
            item_bytes, item_cost = item.min_bytes, LIST_SLOT + item.total_cost
        else:  # a map entry's key is a string: at least its length byte
            item_bytes, item_cost = 1 + item.min_bytes, DICT_ENTRY + _OWN_COST[STRING] + item.total_cost
        worst = max(worst, math.inf if item_bytes == 0 else item_cost / item_bytes)
    return worst
