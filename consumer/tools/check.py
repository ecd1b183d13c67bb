"""`check`: validate the configuration, then reach every dependency once; exit 0 when all answer, 1 if one
does not, 2 when one refuses our settings (credentials, TLS) or the settings themselves are wrong."""

from __future__ import annotations

from collections.abc import Callable

from consumer.errors import ConfigError, ConsumerError
from consumer.kafka.admin import partition_count
from consumer.kafka.config import kafka_client_config
from consumer.service.components import record_decoder, registry_client, sql_sink
from consumer.settings import Settings


def run_check(settings: Settings) -> int:
    config = kafka_client_config(settings)  # raises ConfigError without KAFKA_BOOTSTRAP_SERVERS
    record_decoder(settings)  # as `run` builds it: schema file parsed, key field checked; ConfigError if wrong
    checks: list[tuple[str, Callable[[], str]]] = [
        *((f"topic {topic}", _topic_check(config, topic)) for topic in settings.consumer_topics),
        ("sink", lambda: _sink_check(settings)),
    ]
    if settings.schema_registry_url:
        checks.append(("schema registry", lambda: _registry_check(settings)))
    failed: list[ConsumerError] = []
    for name, check in checks:
        try:
            print(f"ok    {name}: {check()}")
        except ConsumerError as exc:
            failed.append(exc)
            print(f"FAIL  {name}: {exc}")
    # a dependency that answered "no" to our settings (refused credentials, an untrusted certificate) is a
    # configuration error, as it is for `run`; one that did not answer is exit 1
    if any(isinstance(exc, ConfigError) for exc in failed):
        return 2
    return 1 if failed else 0


def _topic_check(config: dict[str, object], topic: str) -> Callable[[], str]:
    def check() -> str:
        partitions = partition_count(config, topic, timeout_s=10)
        if partitions is None:
            raise ConsumerError("the topic does not exist")
        return f"{partitions} partitions"

    return check


def _sink_check(settings: Settings) -> str:
    sink = sql_sink(settings)
    try:
        sink.ping()
    finally:
        sink.close()
    return "answers"


def _registry_check(settings: Settings) -> str:
    registry_client(settings, timeout_s=10).latest("__microbatch_consumer_check__")
    return "answers"
