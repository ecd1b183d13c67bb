"""A walk over one Avro binary value of a risky writer schema (see `consumer.decode.avro_risk`), before
fastavro decodes it: nothing is built, no Python recursion (an explicit stack), and every step either reads a
byte or is bounded by the limits, so the walk costs at most time proportional to the value's bytes.

It refuses, with a `DecodeLimitError` naming the limit, a value nested deeper than `max_depth`, holding more
than `max_items` array items and map entries, or whose decoded Python value is estimated above
`max_decoded_bytes`; and with a `DecodeError` bytes that end early or hold an impossible length or index.
What it lets through fastavro can decode without exhausting the C stack or the memory.

Every value of a recursive schema goes through here, so the loop is written for speed: leaves (numbers,
strings, enums, fixed) are read in place, a record's leaf fields without a trip through the stack.
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

# The stack's tasks: (task, node, depth, n)
_VALUE = 0  # read one value of node
_FIELDS = 1  # read the record node's fields from field n on
_BLOCK = 2  # read the next block count of the array or map node
_ITEMS = 3  # n items of the current block of the array or map node are still to read
_KEY_COST = DICT_ENTRY + 49  # a map entry: its share of the dict and its key's str
_FIXED_WIDTH = {BOOLEAN: 1, FLOAT: 4, DOUBLE: 8}


def check_value(value: bytes, start: int, root: AvroNode, limits: DecodeLimits) -> None:
    """Walk the value at `value[start:]` as a value of `root`; raise if it exceeds a limit or is not a value."""
    max_depth, max_items, max_cost = limits.max_depth, limits.max_items, limits.max_decoded_bytes
    pos, end, items, cost = start, len(value), 0, 0
    stack: list[tuple[int, AvroNode, int, int]] = [(_VALUE, root, 0, 0)]
    push, pop = stack.append, stack.pop
    while stack:
        task, node, depth, n = pop()
        if task == _FIELDS:
            fields = node.children
            while n < len(fields):
                field = fields[n]
                n += 1
                if field.leaf:
                    pos, cost = _leaf(value, pos, end, field, cost)
                else:
                    if n < len(fields):
                        push((_FIELDS, node, depth, n))
                    push((_VALUE, field, depth, 0))
                    break
        elif task == _VALUE:
            kind = node.kind
            if kind == UNION:
                index, pos = _long(value, pos, end)
                if not 0 <= index < node.size:
                    raise DecodeError(f"not a valid Avro value: branch {index} of a {node.size}-branch union")
                branch = node.children[index]
                if branch.leaf:
                    pos, cost = _leaf(value, pos, end, branch, cost)
                else:
                    push((_VALUE, branch, depth, 0))
            elif node.leaf:
                pos, cost = _leaf(value, pos, end, node, cost)
            else:  # a record, array or map: one level deeper
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth)
                cost += node.cost
                push((_FIELDS if kind == RECORD else _BLOCK, node, depth, 0))
        elif task == _BLOCK:
            count, pos = _long(value, pos, end)
            if count == 0:
                continue
            if count < 0:  # a negative count is followed by the block's size in bytes
                count = -count
                _size, pos = _long(value, pos, end)
            items += count
            if items > max_items:
                raise DecodeLimitError(f"Avro value holds more than DECODE_MAX_ITEMS={max_items} "
                                       "array items and map entries")
            push((_BLOCK, node, depth, 0))
            item = node.children[0]
            if node.kind == ARRAY:
                cost += count * LIST_SLOT
                if item.zero_width:  # items that take no bytes: counted, not walked one by one
                    if depth + item.depth > max_depth:
                        raise _too_deep(max_depth)
                    cost += count * item.total_cost
                elif item.leaf:  # each takes at least a byte: the loop ends with the value
                    for _ in range(count):
                        pos, cost = _leaf(value, pos, end, item, cost)
                        if cost > max_cost:
                            break
                else:
                    push((_ITEMS, node, depth, count))
            else:
                push((_ITEMS, node, depth, count))
        else:  # _ITEMS
            if n > 1:
                push((_ITEMS, node, depth, n - 1))
            if node.kind == MAP:
                length, pos = _long(value, pos, end)  # the key: a string
                pos = _skip(value, pos, end, length)
                cost += _KEY_COST + length * CHAR_COST
            push((_VALUE, node.children[0], depth, 0))
        if cost > max_cost:
            raise DecodeLimitError(
                f"Avro value would decode to more than {max_cost} bytes (DECODE_MAX_EXPANSION x MAX_RECORD_BYTES)"
            )


def _leaf(value: bytes, pos: int, end: int, node: AvroNode, cost: int) -> tuple[int, int]:
    """Read one value of a leaf type at `pos`: (the position after it, `cost` plus its estimated size)."""
    kind = node.kind
    if kind == NULL:
        return pos, cost
    if kind in (INT, STRING, BYTES, ENUM):
        number, pos = _long(value, pos, end)
        if kind == INT:
            return pos, cost + node.cost
        if kind == ENUM:
            if not 0 <= number < node.size:
                raise DecodeError(f"not a valid Avro value: symbol {number} of a {node.size}-symbol enum")
            return pos, cost
        return _skip(value, pos, end, number), cost + node.cost + number * node.byte_cost
    return _skip(value, pos, end, _FIXED_WIDTH.get(kind, node.size)), cost + node.cost


def _long(value: bytes, pos: int, end: int) -> tuple[int, int]:
    """A zig-zag varint (int or long) at `pos`: (its value, the position after it)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("not a valid Avro value: it ends inside a number")
        byte = value[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError("not a valid Avro value: a number longer than 10 bytes")


def _skip(value: bytes, pos: int, end: int, length: int) -> int:
    if length < 0:
        raise DecodeError(f"not a valid Avro value: negative length {length}")
    if pos + length > end:
        raise DecodeError(f"not a valid Avro value: {length} bytes announced, {end - pos} left")
    return pos + length


def _too_deep(max_depth: int) -> DecodeLimitError:
    return DecodeLimitError(f"Avro value nested deeper than DECODE_MAX_DEPTH={max_depth}")
