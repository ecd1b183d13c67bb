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
# Without these a dead-letter record cannot be told apart from any other: `dlq inspect` reports it as foreign.
REQUIRED = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, STAGE, ERROR_CLASS)


def is_dead_letter_header(name: str) -> bool:
    return name.startswith(PREFIX)
