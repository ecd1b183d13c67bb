"""A walk over one Avro binary value of a risky writer schema (see `consumer.decode.avro_risk`), before
fastavro decodes it: nothing is built, no Python recursion (an explicit stack), and every step either reads a
byte or is bounded by the limits, so the walk costs at most time proportional to the value's bytes.

It refuses, with a `DecodeLimitError` naming the limit, a value nested deeper than `max_depth`, holding more
than `max_items` array items and map entries, or whose decoded Python value is estimated above
`max_decoded_bytes`; and with a `DecodeError` bytes that end early or hold an impossible length or index.
What it lets through fastavro can decode without exhausting the C stack or the memory.
"""

from __future__ import annotations

from consumer.decode.avro_risk import (
    ARRAY,
    BOOLEAN,
    BYTES,
    CHAR_COST,
    DICT_ENTRY,
    DOUBLE,
    ENUM,
    FIXED,
    FLOAT,
    INT,
    LIST_SLOT,
    MAP,
    NULL,
    RECORD,
    STRING,
    UNION,
    AvroNode,
)
from consumer.decode.limits import DecodeLimits
from consumer.errors import DecodeError, DecodeLimitError

_VALUE = -1  # the task: read one value of the node
_NEXT_BLOCK = 0  # the task: read the next block count of the array or map node
# (a positive task n: n items of the current block of the array or map node are still to read)
_FIXED_WIDTH = {BOOLEAN: 1, FLOAT: 4, DOUBLE: 8}
_KEY_COST = DICT_ENTRY + 49  # a map entry: its share of the dict and its key's str


def check_value(value: bytes, start: int, root: AvroNode, limits: DecodeLimits) -> None:
    """Walk the value at `value[start:]` as a value of `root`; raise if it exceeds a limit or is not a value."""
    walk = _Walk(value, start, limits)
    stack: list[tuple[AvroNode, int, int]] = [(root, 0, _VALUE)]
    while stack:
        node, depth, task = stack.pop()
        if task == _VALUE:
            walk.value(node, depth, stack)
        elif task == _NEXT_BLOCK:
            walk.block(node, depth, stack)
        else:
            if task > 1:
                stack.append((node, depth, task - 1))
            if node.kind == MAP:
                walk.length_prefixed(CHAR_COST)  # the key: a string
                walk.add_cost(_KEY_COST)
            stack.append((node.children[0], depth, _VALUE))


class _Walk:
    """The position in the value and the running totals of one walk."""

    __slots__ = ("_cost", "_items", "_limits", "_pos", "_value")

    def __init__(self, value: bytes, start: int, limits: DecodeLimits) -> None:
        self._value = value
        self._pos = start
        self._limits = limits
        self._items = 0
        self._cost = 0

    def value(self, node: AvroNode, depth: int, stack: list[tuple[AvroNode, int, int]]) -> None:
        kind = node.kind
        if kind == NULL:
            return
        if kind == INT:
            self.long()
        elif kind in (STRING, BYTES):
            self.length_prefixed(node.byte_cost)
        elif kind in _FIXED_WIDTH or kind == FIXED:
            self._skip(_FIXED_WIDTH.get(kind, node.size))
        elif kind in (ENUM, UNION):
            index = self.long()
            if not 0 <= index < node.size:
                raise DecodeError(f"not a valid Avro value: index {index} of a {node.size}-symbol enum or union")
            if kind == UNION:
                stack.append((node.children[index], depth, _VALUE))
        else:  # a record, array or map: one level deeper
            depth += 1
            if depth > self._limits.max_depth:
                raise DecodeLimitError(f"Avro value nested deeper than DECODE_MAX_DEPTH={self._limits.max_depth}")
            if kind == RECORD:
                stack.extend((child, depth, _VALUE) for child in reversed(node.children))
            else:
                stack.append((node, depth, _NEXT_BLOCK))
        self.add_cost(node.cost)

    def block(self, node: AvroNode, depth: int, stack: list[tuple[AvroNode, int, int]]) -> None:
        """One block of an array or map: its count, then (on the stack) its items and the next block."""
        count = self.long()
        if count == 0:
            return
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            self.long()
        self._items += count
        if self._items > self._limits.max_items:
            raise DecodeLimitError(f"Avro value holds more than DECODE_MAX_ITEMS={self._limits.max_items} "
                                   "array items and map entries")
        item = node.children[0]
        if node.kind == ARRAY and item.zero_width:  # items that take no bytes: counted, not walked one by one
            if depth + item.depth > self._limits.max_depth:
                raise DecodeLimitError(f"Avro value nested deeper than DECODE_MAX_DEPTH={self._limits.max_depth}")
            self.add_cost(count * (LIST_SLOT + item.total_cost))
            stack.append((node, depth, _NEXT_BLOCK))
            return
        self.add_cost(count * LIST_SLOT if node.kind == ARRAY else 0)
        stack.append((node, depth, _NEXT_BLOCK))
        stack.append((node, depth, count))

    def long(self) -> int:
        """A zig-zag varint (int or long)."""
        value, pos, end = self._value, self._pos, len(self._value)
        result = shift = 0
        while True:
            if pos >= end:
                raise DecodeError("not a valid Avro value: it ends inside a number")
            byte = value[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise DecodeError("not a valid Avro value: a number longer than 10 bytes")
        self._pos = pos
        return (result >> 1) ^ -(result & 1)

    def length_prefixed(self, byte_cost: int) -> None:
        length = self.long()
        if length < 0:
            raise DecodeError(f"not a valid Avro value: negative length {length}")
        self._skip(length)
        self.add_cost(length * byte_cost)

    def add_cost(self, cost: int) -> None:
        self._cost += cost
        if self._cost > self._limits.max_decoded_bytes:
            raise DecodeLimitError(
                f"Avro value would decode to more than {self._limits.max_decoded_bytes} bytes "
                "(DECODE_MAX_EXPANSION x MAX_RECORD_BYTES)"
            )

    def _skip(self, length: int) -> None:
        if self._pos + length > len(self._value):
            raise DecodeError(f"not a valid Avro value: {length} bytes announced, "
                              f"{len(self._value) - self._pos} left")
        self._pos += length
