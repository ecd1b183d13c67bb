"""The dead-letter headers of the contract (docs/contract.md, "Dead-letter records"): written by the publisher
(consumer.kafka.dead_letters), read by `dlq inspect` and `dlq replay`, spelled once, here."""

from __future__ import annotations

PREFIX = "dlq."
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
STAGE = "dlq.stage"
ERROR_CLASS = "dlq.error.class"
ERROR_MESSAGE = "dlq.error.message"
CONSUMER_GROUP = "dlq.consumer.group"
FAILED_AT = "dlq.failed.at"
ATTEMPTS = "dlq.attempts"
# Added by `dlq replay` to each record it re-publishes: how many times this record has been replayed.
REPLAY_COUNT = "dlq.replay.count"
# Set on a dead letter the broker refused as too large, published again without its value (and, if still too
# large, without its key and original headers too): "true", the dropped part's size in bytes and its SHA-256
# digest (hex), so the original can be found and checked. `dlq replay` refuses such a letter.
VALUE_DROPPED = "dlq.value.dropped"
VALUE_SIZE = "dlq.value.size"
VALUE_SHA256 = "dlq.value.sha256"
KEY_DROPPED = "dlq.key.dropped"
KEY_SIZE = "dlq.key.size"
KEY_SHA256 = "dlq.key.sha256"
HEADERS_DROPPED = "dlq.headers.dropped"  # how many original headers were left out
# What the publisher writes (a dead letter stripped to its bare form keeps only these and REPLAY_COUNT).
WRITTEN = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, STAGE, ERROR_CLASS,
           ERROR_MESSAGE, CONSUMER_GROUP, FAILED_AT, ATTEMPTS)
DROPPED = (VALUE_DROPPED, VALUE_SIZE, VALUE_SHA256, KEY_DROPPED, KEY_SIZE, KEY_SHA256, HEADERS_DROPPED)
# Without these a dead-letter record cannot be told apart from any other: `dlq inspect` reports it as foreign.
REQUIRED = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, STAGE, ERROR_CLASS)


def is_dead_letter_header(name: str) -> bool:
    return name.startswith(PREFIX)
