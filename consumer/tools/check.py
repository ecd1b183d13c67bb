"""`check`: validate the configuration exactly as `run` does (the same code: components.validated_parts and
prepare_sink), then reach every dependency once and print what it found; exit 0 when all answer, 1 if one
does not, 2 when one refuses our settings (credentials, TLS, a database we may not use) or the settings
themselves are wrong. It changes nothing: no topic, table or column is created."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from consumer.decode.decoder import Decoder
from consumer.errors import ConfigError, ConsumerError
from consumer.kafka.admin import broker_metadata, partition_count
from consumer.kafka.config import kafka_client_config
from consumer.service.components import prepare_sink, registry_client, shown_sink_url, validated_parts
from consumer.settings import Settings
from consumer.sql.sink import SqlSink

_TIMEOUT_S = 10.0


def run_check(settings: Settings) -> int:
    decoder, sink = validated_parts(settings)  # ConfigError, exit 2, for whatever `run` would refuse
    config = kafka_client_config(settings)
    checks: list[tuple[str, Callable[[], str]]] = [
        (f"brokers {settings.kafka_bootstrap_servers}", lambda: _brokers_check(config)),
        *((f"topic {topic}", _topic_check(config, topic)) for topic in settings.consumer_topics),
        (f"dead-letter topic {settings.dead_letter_topic}", lambda: _dead_letter_check(config, settings)),
        (f"sink {shown_sink_url(settings)}", lambda: _sink_check(sink, decoder, settings)),
    ]
    if settings.schema_registry_url:
        checks.append(("schema registry", lambda: _registry_check(settings)))
    try:
        failed = [exc for name, check in checks if (exc := _report(name, check)) is not None]
    finally:
        sink.close()
    # a dependency that answered "no" to our settings (refused credentials, an untrusted certificate, a
    # database that does not exist) is a configuration error, as it is for `run`; one that did not answer is 1
    if any(isinstance(exc, ConfigError) for exc in failed):
        return 2
    return 1 if failed else 0


def _report(name: str, check: Callable[[], str]) -> ConsumerError | None:
    try:
        print(f"ok    {name}: {check()}")
        return None
    except ConsumerError as exc:
        print(f"FAIL  {name}: {exc}")
        return exc


def _brokers_check(config: Mapping[str, Any]) -> str:
    brokers = broker_metadata(config, _TIMEOUT_S).brokers
    return f"{len(brokers)} broker{'s' if len(brokers) != 1 else ''} answer"


def _topic_check(config: Mapping[str, Any], topic: str) -> Callable[[], str]:
    def check() -> str:
        partitions = partition_count(config, topic, timeout_s=_TIMEOUT_S)
        if partitions is None:
            raise ConsumerError("the topic does not exist")
        return f"{partitions} partitions"

    return check


def _dead_letter_check(config: Mapping[str, Any], settings: Settings) -> str:
    # looked up in the whole cluster's list: asking for the topic by name lets a broker with
    # auto.create.topics.enable create it, and `check` changes nothing
    described = broker_metadata(config, _TIMEOUT_S).topics.get(settings.dead_letter_topic)
    if described is not None and described.error is None and described.partitions:
        return f"{len(described.partitions)} partitions"
    return f"missing; `run` creates it with the partitions of {settings.consumer_topics[0]}"


def _sink_check(sink: SqlSink, decoder: Decoder, settings: Settings) -> str:
    return f"answers; {prepare_sink(sink, decoder, create=False)}"


def _registry_check(settings: Settings) -> str:
    registry_client(settings, timeout_s=_TIMEOUT_S).latest("__microbatch_consumer_check__")
    return "answers"
