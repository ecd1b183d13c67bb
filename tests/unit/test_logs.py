"""Logs: one JSON object per line or text with context fields; secrets masked whatever carries them."""

from __future__ import annotations

import json
import logging

import pytest

from consumer.observability.logs import (
    JsonFormatter,
    RedactingFormatter,
    TextFormatter,
    redactor,
    secret_values,
)
from consumer.secrets import url_secrets as url_password
from consumer.settings import load_settings


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("consumer.runner", logging.INFO, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_level_logger_message_and_context_fields() -> None:
    line = JsonFormatter().format(_record("batch committed", batch_id=7, records=500, partition=2))
    assert "\n" not in line
    parsed = json.loads(line)
    assert {k: parsed[k] for k in ("level", "logger", "msg", "batch_id", "records", "partition")} == {
        "level": "INFO",
        "logger": "consumer.runner",
        "msg": "batch committed",
        "batch_id": 7,
        "records": 500,
        "partition": 2,
    }
    assert parsed["ts"].endswith("+00:00")


def test_text_lines_append_context_as_key_values() -> None:
    line = TextFormatter().format(_record("partitions assigned", partitions=["t/0"]))
    assert "INFO" in line and "consumer.runner: partitions assigned" in line
    assert line.endswith("partitions=['t/0']")


@pytest.mark.parametrize("inner", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_secrets_are_masked_in_messages_fields_and_tracebacks(inner: logging.Formatter) -> None:
    formatter = RedactingFormatter(inner, redactor(["s3cr3t-pw", "p%40ss"]))
    try:
        raise ValueError("login failed for s3cr3t-pw")
    except ValueError:
        import sys

        record = _record("connecting to %s", url="postgresql://u:p%40ss@h/db")
        record.args = ("postgresql://u:s3cr3t-pw@h/db",)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "s3cr3t-pw" not in line and "p%40ss" not in line
    assert "***" in line


def test_secret_values_cover_the_sasl_password_and_the_sink_url_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSUMER_TOPICS", "t")
    monkeypatch.setenv("VALUE_FORMAT", "json")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-pw")
    monkeypatch.setenv("SINK_URL", "postgresql+psycopg://app:p%40ss@db/x")
    secrets = secret_values(load_settings(_env_file=None))
    assert set(secrets) == {"sasl-pw", "p%40ss", "p@ss"}


def test_url_password_is_empty_without_one() -> None:
    assert url_password("sqlite:///./data/sink.db") == []
    assert url_password("postgresql://app@db/x") == []
