"""Misspelt settings are named, with the real name they resemble, and each setting's source is known:
variables under our prefixes that are no setting, from the environment or `.env`; never the settings
themselves, the KAFKA_EXTRA__ family, or the variables Kubernetes injects for a Service named like a prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.environment import Source, UnknownSetting, raw_setting, setting_sources, unknown_settings


@pytest.fixture
def no_dotenv(tmp_path: Path) -> Path:
    return tmp_path / ".env"


@pytest.mark.parametrize(
    ("typo", "closest"),
    [
        ("BATCH_MAX_RECORD", "BATCH_MAX_RECORDS"),
        ("KAFKA_BOOTSTRAP_SERVER", "KAFKA_BOOTSTRAP_SERVERS"),
        ("CONSUMER_TOPIC", "CONSUMER_TOPICS"),
        ("SINK_URI", "SINK_URL"),
        ("DLQ_TOPICS", "DLQ_TOPIC"),
        ("SHUTDOWN_TIMEOUT", "SHUTDOWN_TIMEOUT_MS"),
        ("WORKER", "WORKERS"),
        ("KAFKA_EXTRA_FETCH_WAIT_MAX_MS", "KAFKA_EXTRA__FETCH_WAIT_MAX_MS"),
    ],
)
def test_a_misspelt_setting_is_named_with_the_closest_real_one(typo: str, closest: str, no_dotenv: Path) -> None:
    assert unknown_settings({typo: "1", "PATH": "/bin"}, no_dotenv) == [
        UnknownSetting(typo, Source.ENVIRONMENT, closest)
    ]


def test_a_variable_under_our_prefix_resembling_nothing_is_named_without_a_guess(no_dotenv: Path) -> None:
    assert unknown_settings({"LOG_ROTATION_POLICY_DAYS": "7"}, no_dotenv) == [
        UnknownSetting("LOG_ROTATION_POLICY_DAYS", Source.ENVIRONMENT, None)
    ]


@pytest.mark.parametrize(
    "name",
    [
        "BATCH_MAX_RECORDS", "batch_max_records", "KAFKA_EXTRA__FETCH_WAIT_MAX_MS", "KAFKA_SERVICE_HOST",
        "KAFKA_SERVICE_PORT", "KAFKA_SERVICE_PORT_BROKER", "KAFKA_PORT", "KAFKA_PORT_9092_TCP",
        "KAFKA_PORT_9092_TCP_ADDR", "KAFKA_PORT_9092_TCP_PROTO", "CONSUMER_PORT_9400_TCP_PORT", "HOME", "PATH",
        "KAFKAESQUE", "REQUIRE_KAFKA",
    ],
)
def test_settings_passthroughs_kubernetes_service_variables_and_others_are_not_warned_about(
    name: str, no_dotenv: Path
) -> None:
    assert unknown_settings({name: "x"}, no_dotenv) == []


def test_a_typo_in_dotenv_is_named_with_its_source(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SINK_TABEL=events\nSINK_TABLE=events\n")
    assert unknown_settings({}, dotenv) == [UnknownSetting("SINK_TABEL", Source.DOTENV, "SINK_TABLE")]


def test_sources_are_the_environment_over_dotenv_over_the_default(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SINK_TABLE=from_file\nBATCH_MAX_RECORDS=10\nKAFKA_EXTRA__LINGER_MS=5\n")
    sources = setting_sources({"batch_max_records": "20", "CONSUMER_TOPICS": "a"}, dotenv)
    assert sources["SINK_TABLE"] is Source.DOTENV
    assert sources["BATCH_MAX_RECORDS"] is Source.ENVIRONMENT
    assert sources["CONSUMER_TOPICS"] is Source.ENVIRONMENT
    assert sources["KAFKA_EXTRA"] is Source.DOTENV
    assert sources["SINK_URL"] is Source.DEFAULT
    assert raw_setting("BATCH_MAX_RECORDS", {"batch_max_records": "20"}, dotenv) == "20"
    assert raw_setting("SINK_TABLE", {}, dotenv) == "from_file"
