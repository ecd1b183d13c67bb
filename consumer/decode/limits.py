"""The bounds one value's decoding must stay within (DECODE_MAX_DEPTH, DECODE_MAX_ITEMS, DECODE_MAX_EXPANSION
x MAX_RECORD_BYTES), handed to the decoders by whoever builds them: the decoders read no settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """`max_depth`: nested records, arrays, maps (JSON: objects and arrays) in one value; `max_items`: array
    items plus map entries in one value; `max_decoded_bytes`: the estimated size of the decoded Python value."""

    max_depth: int = 64
    max_items: int = 1_048_576
    max_decoded_bytes: int = 32 * 1_048_576

    @classmethod
    def of(cls, max_depth: int, max_items: int, max_expansion: int, max_record_bytes: int) -> DecodeLimits:
        return cls(max_depth, max_items, max_expansion * max_record_bytes)


DEFAULT_LIMITS = DecodeLimits()  # the settings' defaults, for decoders built outside the service (tools, bench)
