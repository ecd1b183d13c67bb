"""Producing: the one idempotent producer and the one blocking hand-over of a message to librdkafka, shared by
the dead-letter publisher, `dlq replay`, `produce` and the benchmark."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from consumer.errors import FatalError
from consumer.kafka.errors import client_construction, describe, kafka_error

_QUEUE_FULL_POLL_S = 0.1  # while librdkafka's local queue is full: serve delivery reports this long, then retry


# The broker refuses a record batch larger than the topic's max.message.bytes with MSG_SIZE_TOO_LARGE, and
# librdkafka refuses a message larger than the producer's message.max.bytes with the same code at produce().
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class MessageTooLargeError(FatalError):
    """produce() refused one message as larger than the producer's message.max.bytes."""


def too_large(error: KafkaError | None) -> bool:
    """A refusal for size (local or the broker's), never retried by librdkafka."""
    return error is not None and error.code() in _TOO_LARGE


def idempotent_producer(config: Mapping[str, Any], linger_ms: int = 5, **extra: Any) -> Producer:
    """acks=all and idempotence: a retried send is never written twice and order per partition holds."""
    with client_construction():
        return Producer(idempotent_producer_config(config, linger_ms, **extra))


def idempotent_producer_config(config: Mapping[str, Any], linger_ms: int = 5, **extra: Any) -> dict[str, Any]:
    """The properties `idempotent_producer` gives librdkafka (`consumer config` shows them)."""
    return {**config, "enable.idempotence": True, "acks": "all", "linger.ms": linger_ms, **extra}


def blocking_produce(producer: Producer, topic: str, doing: str, **message: Any) -> None:
    """Hand one message to librdkafka, waiting (serving deliveries) while its local queue is full. produce()
    refusing the message itself (unknown partition, a fatal producer) raises FatalError, MessageTooLargeError
    when it is too large."""
    while True:
        try:
            producer.produce(topic, **message)
            return
        except BufferError:
            producer.poll(_QUEUE_FULL_POLL_S)
        except KafkaException as exc:
            if too_large(kafka_error(exc)):
                raise MessageTooLargeError(f"{doing}: {describe(exc)}") from None
            raise FatalError(f"{doing}: {describe(exc)}") from None
