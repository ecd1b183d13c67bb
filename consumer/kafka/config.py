"""Client configuration: the librdkafka properties of every Kafka client the service and its tools make.

Built from `Settings` here and nowhere else, so `run`, `check` and the tools reach the broker the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from consumer.errors import ConfigError
from consumer.kafka.connectivity import LibrdkafkaLog, quiet_error_cb
from consumer.kafka.errors import describe
from consumer.kafka.produce import idempotent_producer_config
from consumer.secrets import MASK, is_secret_property
from consumer.settings import GroupProtocol, Settings

DEAD_LETTER_LINGER_MS = 5  # dead letters are few and a batch waits for them: barely batched
# librdkafka's own log lines go through Python logging (served inside poll), so LOG_FORMAT=json holds for them
KAFKA_LOGGER = "consumer.kafka"


def client_logging() -> dict[str, Any]:
    """The `logger` property: given at construction, or the lines before a client's first poll go to stderr
    as plain text. A client's lines then reach Python only from its poll() or flush()."""
    return {"logger": LibrdkafkaLog(logging.getLogger(KAFKA_LOGGER))}


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Properties shared by every Kafka client: brokers, security, and KAFKA_EXTRA__* passthrough."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.require_bootstrap(),
        "security.protocol": settings.kafka_security_protocol.value,
        # A metadata request naming a topic (AdminClient.list_topics(topic), a producer's first send) would
        # otherwise create it on a broker with auto.create.topics.enable (Kafka's default): a misspelt
        # CONSUMER_TOPICS became an empty topic and a ready pod consuming nothing. We create only the
        # dead-letter topic, explicitly (admin.ensure_dead_letter_topic).
        "allow.auto.create.topics": False,
        **client_logging(),
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    for name, value in settings.kafka_extra.items():
        config[extra_property(name)] = value
    return config


def extra_property(name: str) -> str:
    """KAFKA_EXTRA__FETCH_WAIT_MAX_MS's librdkafka property: fetch.wait.max.ms."""
    return name.lower().replace("_", ".")


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "group.id": settings.consumer_group_id,
        **({"group.instance.id": settings.kafka_group_instance_id} if settings.kafka_group_instance_id else {}),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a new group sinks the whole topic, as a sink connector would
        **group_protocol_config(settings),
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "statistics.interval.ms": 5000,  # the group's committed offsets for lag before our first commit
        # Prefetch at most 16 MiB (librdkafka's default 64 MiB): memory bounded by batches, not by backlog.
        # Draining 300,000 events: peak RSS 166-171 -> 142 MiB, 30,000: 110 -> 111 MiB, records/s unchanged
        # (43.4k/44.8k -> 43.6k/44.3k); 16 MiB is still over a second of records at full speed.
        "queued.max.messages.kbytes": 16384,
        # A fetch the broker may hold for new records: at most 100 ms (librdkafka's default 500). At half the
        # benchmark's throughput, produce-to-commit p50 408/400 -> 264/269 ms, p99 740/760 -> 681/683 ms;
        # draining a backlog unchanged (53.7k/55.0k -> 56.5k/55.3k records/s); idle, a few fetches a second.
        "fetch.wait.max.ms": 100,
        **kafka_client_config(settings),
    }


# Room for the key, the original headers and ours above MAX_RECORD_BYTES in the producer's message.max.bytes
# and the dead-letter topic's max.message.bytes; a letter larger still loses its value, not the service.
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024


def dead_letter_max_bytes(settings: Settings) -> int:
    """message.max.bytes of the dead-letter producer, max.message.bytes of a dead-letter topic we create:
    librdkafka's default (1,000,000) is below MAX_RECORD_BYTES' (1 MiB)."""
    return settings.max_record_bytes + DEAD_LETTER_HEADROOM_BYTES


def dead_letter_producer_config(settings: Settings) -> dict[str, Any]:
    """The dead-letter publisher's client: the shared properties (a KAFKA_EXTRA__MESSAGE_MAX_BYTES wins),
    room for the largest record; its connection errors are the consumer's to report (BrokerConnectivity),
    so they stay at DEBUG here."""
    return {"message.max.bytes": dead_letter_max_bytes(settings), **kafka_client_config(settings),
            "error_cb": quiet_error_cb}


def dead_letter_producer_properties(settings: Settings) -> dict[str, Any]:
    """Everything the dead-letter publisher's idempotent producer is given (`config` and `check` show it)."""
    return idempotent_producer_config(dead_letter_producer_config(settings), DEAD_LETTER_LINGER_MS)


def group_protocol_config(settings: Settings) -> dict[str, Any]:
    """Membership properties: with KIP-848 (`consumer`) the broker assigns partitions and owns the session,
    and librdkafka refuses the classic protocol's assignment strategy and session timeout."""
    if settings.kafka_group_protocol is GroupProtocol.CONSUMER:
        return {"group.protocol": "consumer"}
    return {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
    }


# librdkafka properties whose values are secrets (consumer.secrets.is_secret_property: sasl.password,
# ssl.key.password, ssl.key.pem, sasl.oauthbearer.client.secret, sasl.kerberos.keytab...) are masked when shown.
def shown_client_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Client properties as an operator may see them: secrets masked, the Python-side callbacks left out."""
    return {
        name: MASK if is_secret_property(name) else str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in sorted(config.items())
        if isinstance(value, (str, int, float))
    }


# Throwaway clients reach nothing (no bootstrap.servers) and say nothing (log_level 0) while librdkafka
# checks their properties.
_PROBE = {"log_level": 0}


def verify_client_properties(settings: Settings) -> None:
    """librdkafka refuses an unknown property or a bad value only when a client is made, possibly long after
    start (the dead-letter producer): `run` and `check` make throwaway clients first. A property refused on
    its own is named as its KAFKA_EXTRA__<NAME>; one refused beside others (`acks=1` with idempotence) as
    KAFKA_EXTRA. Exit 2 either way."""
    for name, value in settings.kafka_extra.items():
        try:
            Producer({extra_property(name): value, **_PROBE})
        except KafkaException as exc:
            raise ConfigError(f"KAFKA_EXTRA__{name.upper()}: {describe(exc)}") from None
    without_broker = {"bootstrap.servers"}
    try:
        AdminClient({k: v for k, v in kafka_client_config(settings).items() if k not in without_broker} | _PROBE)
        consumer = Consumer({k: v for k, v in consumer_config(settings).items() if k not in without_broker} | _PROBE)
        consumer.close()
        producer = dead_letter_producer_properties(settings)
        Producer({k: v for k, v in producer.items() if k not in without_broker} | _PROBE)
    except KafkaException as exc:
        raise ConfigError(f"KAFKA_EXTRA: {describe(exc)}") from None
