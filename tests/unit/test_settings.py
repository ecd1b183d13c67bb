from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.cpus import usable_cpus
from consumer.errors import ConfigError
from consumer.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in list(os.environ):
        if name.upper() in {f.upper() for f in Settings.model_fields} or name.upper().startswith("KAFKA_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONSUMER_TOPICS", "a, b ,,c")
    monkeypatch.setenv("VALUE_FORMAT", "json")


def test_defaults_and_topics() -> None:
    s = load_settings()
    assert s.consumer_topics == ["a", "b", "c"]
    assert s.dead_letter_topic == "a.dlq"
    assert s.batch_max_records == 5000


def test_missing_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUMER_TOPICS")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("CONSUMER_TOPICS")


def test_empty_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUMER_TOPICS", " , ")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("CONSUMER_TOPICS")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCH_MAX_RECORDS", "0"),
        ("BATCH_MAX_RECORDS", "many"),
        ("BATCH_MAX_BYTES", "-1"),
        ("BATCH_MAX_WAIT_MS", "soon"),
        ("SINK_TABLE", "bad-name"),
        ("SINK_TABLE", "1abc"),
        ("SINK_WRITE_MODE", "merge"),
        ("VALUE_FORMAT", "xml"),
        ("IDEMPOTENCY_KEY", "field:"),
        ("IDEMPOTENCY_KEY", "offset"),
        ("SINK_URL", "nourl"),
        ("SCHEMA_REGISTRY_URL", "ftp://x"),
        ("DLQ_MAX_RATIO", "0"),
        ("DLQ_MAX_RATIO", "1.5"),
        ("METRICS_PORT", "70000"),
        ("LOG_LEVEL", "chatty"),
        ("KAFKA_SECURITY_PROTOCOL", "tls"),
        ("SCHEMA_FILE", "/does/not/exist.avsc"),
        ("WORKERS", "0"),
        ("WORKERS", "abc"),
        ("WORKERS", "-2"),
        ("WORKERS", "1.5"),
    ],
)
def test_bad_value_names_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(name + ":"), str(info.value)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"VALUE_FORMAT": "avro"}, "SCHEMA_FILE"),
        ({"RETRY_BACKOFF_INITIAL_MS": "500", "RETRY_BACKOFF_MAX_MS": "100"}, "RETRY_BACKOFF_MAX_MS"),
        ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SESSION_TIMEOUT_MS": "60000", "KAFKA_MAX_POLL_INTERVAL_MS": "1000"}, "KAFKA_MAX_POLL_INTERVAL_MS"),
    ],
)
def test_cross_field_errors_name_variable(monkeypatch: pytest.MonkeyPatch, env: dict, name: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(name + ":"), str(info.value)


def test_secret_value_not_in_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in str(s.masked())
    assert s.masked()["KAFKA_SASL_PASSWORD"] == "***"


def test_masked_sink_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINK_URL", "postgresql+psycopg://u:secret@h/db")
    assert load_settings().masked()["SINK_URL"] == "postgresql+psycopg://u:***@h/db"


def test_env_file_in_cwd_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SINK_TABLE=from_env_file\n")
    assert load_settings().sink_table == "from_env_file"


def test_require_bootstrap() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings().require_bootstrap()
    assert str(info.value).startswith("KAFKA_BOOTSTRAP_SERVERS")


def test_every_contract_variable_is_a_settings_field_and_every_field_is_in_the_contract() -> None:
    from support.contract import read_contract_settings

    from consumer.settings import Settings

    contract = {name.rstrip("_") for name in read_contract_settings()}  # KAFKA_EXTRA__ is the field kafka_extra
    missing = [name for name in sorted(contract) if name.lower() not in Settings.model_fields]
    undocumented = [name.upper() for name in Settings.model_fields if name.upper() not in contract]
    assert (missing, undocumented) == ([], [])


@pytest.mark.parametrize(("value", "expected"), [("3", 3), (" 2 ", 2), ("auto", usable_cpus()),
                                                 ("AUTO", usable_cpus())])
def test_workers_is_a_count_or_auto(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("WORKERS", value)
    assert load_settings().workers == expected


def test_workers_defaults_to_one_process() -> None:
    assert load_settings().workers == 1


def test_prefetch_and_fetch_wait_are_bounded_by_default_and_kafka_extra_overrides_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory follows the batch size, not the backlog: librdkafka's prefetch queue is capped (16 MiB); a fetch
    waits at most 100 ms at the broker (latency)."""
    from consumer.kafka.config import consumer_config

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    assert consumer_config(load_settings())["queued.max.messages.kbytes"] == 16384
    assert consumer_config(load_settings())["fetch.wait.max.ms"] == 100
    monkeypatch.setenv("KAFKA_EXTRA__QUEUED_MAX_MESSAGES_KBYTES", "65536")
    assert consumer_config(load_settings())["queued.max.messages.kbytes"] == "65536"


def test_classic_group_protocol_is_the_default_with_cooperative_sticky_and_our_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer.kafka.config import consumer_config

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "6000")
    config = consumer_config(load_settings())
    assert (config["group.protocol"], config["partition.assignment.strategy"], config["session.timeout.ms"]) == (
        "classic", "cooperative-sticky", 6000)


def test_consumer_group_protocol_leaves_assignment_and_session_to_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka refuses partition.assignment.strategy and session.timeout.ms with group.protocol=consumer."""
    from confluent_kafka import Consumer

    from consumer.kafka.config import consumer_config

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("KAFKA_GROUP_PROTOCOL", "consumer")
    config = consumer_config(load_settings())
    assert config["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in config and "session.timeout.ms" not in config
    Consumer({k: v for k, v in config.items() if k != "logger"}).close()  # librdkafka accepts the set


def test_an_unknown_group_protocol_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_GROUP_PROTOCOL", "eager")
    with pytest.raises(ConfigError, match="KAFKA_GROUP_PROTOCOL"):
        load_settings()


def test_group_instance_id_is_unset_by_default_so_membership_is_dynamic(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer.kafka.config import consumer_config

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    assert load_settings().kafka_group_instance_id is None
    assert "group.instance.id" not in consumer_config(load_settings())


def test_group_instance_id_sets_static_membership_that_librdkafka_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import Consumer

    from consumer.kafka.config import consumer_config

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "consumer-0")
    config = consumer_config(load_settings())
    assert config["group.instance.id"] == "consumer-0"
    Consumer({k: v for k, v in config.items() if k != "logger"}).close()


def test_an_empty_group_instance_id_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "")
    with pytest.raises(ConfigError, match="KAFKA_GROUP_INSTANCE_ID"):
        load_settings()


def test_each_worker_gets_its_own_group_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two members with one group.instance.id fence each other: WORKERS > 1 suffixes the worker number."""
    from consumer.workers.worker import worker_settings

    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "consumer-0")
    monkeypatch.setenv("WORKERS", "3")
    settings = load_settings()
    ids = [worker_settings(settings, index, 40000 + index).kafka_group_instance_id for index in range(3)]
    assert ids == ["consumer-0-0", "consumer-0-1", "consumer-0-2"]
    assert worker_settings(settings, 1, 40001).workers == 1
    monkeypatch.delenv("KAFKA_GROUP_INSTANCE_ID")
    assert worker_settings(load_settings(), 1, 40001).kafka_group_instance_id is None
