"""`consumer config` as a real process: every setting with its value and source (environment, `.env`,
default), the derived values and the librdkafka properties, in text and JSON, with no broker and no secret
shown. And misspelt settings are named, with the closest real name, by `config`, `check` and `run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SECRETS = {
    "KAFKA_SASL_PASSWORD": "sasl-Secret-9f1",
    "KAFKA_EXTRA__SSL_KEY_PASSWORD": "key-Secret-4c2",
    "KAFKA_EXTRA__SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-Secret-7d3",
}
_ENV = {
    "CONSUMER_TOPICS": "orders,refunds",
    "VALUE_FORMAT": "json",
    "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "svc",
    "KAFKA_EXTRA__FETCH_WAIT_MAX_MS": "50",
    "SINK_URL": "postgresql://writer:pg-Secret-1a8@db:5432/warehouse",
    "WORKERS": "auto",
    "LOG_FORMAT": "text",
    **_SECRETS,
}


def _consumer(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A clean environment (no variable of the test run leaks in): PATH, PYTHONPATH and `env`."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "consumer", *args], cwd=cwd, env=clean, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text("SINK_TABLE=orders_sink\nBATCH_MAX_RECORD=100\n")
    return tmp_path


def test_config_json_gives_values_sources_derived_values_and_client_properties(workdir: Path) -> None:
    done = _consumer(["config", "--format", "json"], _ENV, workdir)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    settings = shown["settings"]
    assert settings["KAFKA_BOOTSTRAP_SERVERS"] == {"value": "broker-1:9092,broker-2:9092", "source": "environment"}
    assert settings["SINK_TABLE"] == {"value": "orders_sink", "source": ".env"}
    assert settings["BATCH_MAX_RECORDS"] == {"value": 5000, "source": "default"}
    assert settings["KAFKA_EXTRA"]["source"] == "environment"
    assert settings["SINK_URL"]["value"] == "postgresql://writer:***@db:5432/warehouse"
    assert shown["resolved"]["dead_letter_topic"]["value"] == "orders.dlq"
    assert shown["resolved"]["workers"]["value"] >= 1
    assert "auto" in shown["resolved"]["workers"]["from"]
    consumer = shown["librdkafka"]["consumer"]
    assert consumer["bootstrap.servers"] == "broker-1:9092,broker-2:9092"
    assert consumer["fetch.wait.max.ms"] == "50"  # KAFKA_EXTRA applied last
    assert consumer["enable.auto.commit"] == "false"
    assert consumer["sasl.password"] == "***"
    producer = shown["librdkafka"]["dead_letter_producer"]
    assert producer["acks"] == "all" and producer["enable.idempotence"] == "true"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_config_shows_no_secret(workdir: Path, fmt: str) -> None:
    done = _consumer(["config", "--format", fmt], _ENV, workdir)
    assert done.returncode == 0, done.stderr
    for secret in [*_SECRETS.values(), "pg-Secret-1a8"]:
        assert secret not in done.stdout + done.stderr


def test_config_text_lists_every_setting_with_its_source(workdir: Path) -> None:
    done = _consumer(["config"], _ENV, workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and "=" not in line}
    assert row["SINK_TABLE"][1:] == ["orders_sink", ".env"]
    assert row["CONSUMER_TOPICS"][1:] == ["orders,refunds", "environment"]
    assert row["SINK_WRITE_MODE"][1:] == ["insert", "default"]
    assert "librdkafka properties, consumer" in lines
    assert "  group.id = microbatch-consumer" in lines


@pytest.mark.parametrize("command", [["config"], ["check"], ["run"]])
def test_a_misspelt_setting_is_warned_about_with_the_closest_real_name(workdir: Path, command: list[str]) -> None:
    env = {key: value for key, value in _ENV.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}  # check/run stop at once
    env |= {"KAFKA_BOOTSTRAP_SERVER": "broker:9092", "KAFKA_SERVICE_HOST": "10.0.0.7", "KAFKA_PORT_9092_TCP": "x"}
    done = _consumer(command, env, workdir)
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, done.stderr
    assert "KAFKA_BOOTSTRAP_SERVER is not a setting and is ignored; did you mean KAFKA_BOOTSTRAP_SERVERS?" in \
        warnings[1]
    assert "BATCH_MAX_RECORD is not a setting" in warnings[0] and "source=.env" in warnings[0]
    assert "Traceback" not in done.stderr


def test_a_required_setting_missing_beside_its_misspelling_says_so_in_one_line(workdir: Path) -> None:
    env = {key: value for key, value in _ENV.items() if key != "CONSUMER_TOPICS"} | {"CONSUMER_TOPIC": "orders"}
    done = _consumer(["check"], env, workdir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("configuration error: CONSUMER_TOPICS: ")
    assert "(CONSUMER_TOPIC is set: a misspelling of CONSUMER_TOPICS?)" in done.stderr
