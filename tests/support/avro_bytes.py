"""Avro's binary encoding by hand, for tests that write values no schema-driven writer would produce."""

from __future__ import annotations


def long_bytes(n: int) -> bytes:
    """An Avro int or long: zig-zag, then a little-endian base-128 varint."""
    zigzag, out = (n << 1) ^ (n >> 63), bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)
