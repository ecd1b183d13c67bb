"""Admin helpers: cluster metadata (refused credentials or TLS named as the setting to fix), the dead-letter
topic created when missing (and only once its source topics exist), a topic's partition count.

Nothing here creates a topic we only read: every client sets allow.auto.create.topics=false (config.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from consumer.errors import BrokerUnavailableError, ConfigError
from consumer.kafka.errors import client_construction, describe, kafka_error, translate

log = logging.getLogger(__name__)

# What librdkafka reports (through error_cb) when the broker answered but refused us: credentials or TLS.
# Retrying cannot help, so at start they are configuration errors naming the setting to fix.
_REFUSALS = {
    KafkaError._AUTHENTICATION: "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: the broker refused the credentials",
    KafkaError._SSL: "KAFKA_SSL_CA_LOCATION: TLS with the broker failed",
}
_METADATA_POLL_S = 1.0


def broker_metadata(config: Mapping[str, Any], timeout_s: float, topic: str | None = None) -> ClusterMetadata:
    """Cluster metadata (of `topic` alone when given). Raises ConfigError as soon as the broker refuses our
    credentials or its certificate is not trusted, BrokerUnavailableError when no broker answers in time."""
    refusals: list[KafkaError] = []
    with client_construction():
        admin = AdminClient({**config, "error_cb": refusals.append})  # type: ignore[dict-item]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(topic=topic, timeout=min(_METADATA_POLL_S, timeout_s))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: the reason behind "broker transport failure", if any
            for error in refusals:
                if error.code() in _REFUSALS:
                    raise ConfigError(f"{_REFUSALS[error.code()]}: {error.str()}") from None
            if time.monotonic() >= deadline:
                reason = refusals[-1].str() if refusals else describe(exc)
                raise BrokerUnavailableError(f"kafka: no broker answered in {timeout_s:.0f} s: {reason}") from None


def ensure_topic(
    config: Mapping[str, Any], topic: str, partitions: int, timeout_s: float = 15.0,
    topic_config: Mapping[str, str] | None = None,
) -> None:
    """Create `topic` with `topic_config` if it does not exist (the dead-letter topic); an existing topic is
    left alone."""
    metadata = broker_metadata(config, timeout_s)
    if topic in metadata.topics and metadata.topics[topic].error is None:
        return
    admin = AdminClient(dict(config))  # held while the future runs: a collected client ends the request
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, config=dict(topic_config or {}))], request_timeout=timeout_s)
    try:
        futures[topic].result(timeout=timeout_s)
        log.info("created topic", extra={"topic": topic, "partitions": partitions})
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise translate(exc, f"kafka: cannot create topic {topic}") from None


def ensure_dead_letter_topic(
    config: Mapping[str, Any], dead_letter_topic: str, source_topics: Sequence[str], timeout_s: float = 15.0,
    topic_config: Mapping[str, str] | None = None,
) -> list[str]:
    """The source topics that do not exist; when none is missing, the dead-letter topic exists on return
    (created with the first source topic's partition count and `topic_config`). A missing source topic
    creates nothing: a misspelt CONSUMER_TOPICS must not leave a dead-letter topic behind either."""
    counts = {topic: partition_count(config, topic, timeout_s) for topic in source_topics}
    missing = [topic for topic, count in counts.items() if count is None]
    if not missing:
        ensure_topic(config, dead_letter_topic, counts[source_topics[0]] or 1, timeout_s, topic_config)
    return missing


def partition_count(config: Mapping[str, Any], topic: str, timeout_s: float = 15.0) -> int | None:
    """Partitions of `topic`, or None when it does not exist yet."""
    metadata = broker_metadata(config, timeout_s, topic)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        return None
    return len(described.partitions)
