"""Secrets: what is secret (KAFKA_EXTRA properties, every URL form, the registry's user info, the password file),
masked where shown on purpose and redacted by value, in every encoded form, wherever else text goes out."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
from pathlib import Path

import pytest
from support.fake_registry import FakeSchemaRegistry

from consumer.decode.registry import RegistryCredentialsError, SchemaRegistryClient
from consumer.errors import ConfigError
from consumer.kafka.dead_letters import dead_letter_headers
from consumer.kafka.headers import ERROR_MESSAGE
from consumer.observability.logs import JsonFormatter, RedactingFormatter, TextFormatter
from consumer.records import DeadLetter, RawRecord, Stage
from consumer.secrets import (
    RedactingStream,
    Redactor,
    is_secret_property,
    mask_url,
    url_credentials,
    url_secrets,
)
from consumer.settings import Settings, load_settings

# A password with everything that an encoder escapes or a URL must quote.
AWKWARD = 'p"a\\s@s/é€ %'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in list(os.environ):
        if name.upper() in {f.upper() for f in Settings.model_fields} or name.upper().startswith("KAFKA_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONSUMER_TOPICS", "t")
    monkeypatch.setenv("VALUE_FORMAT", "json")


@pytest.mark.parametrize("prop", [
    "ssl.key.password", "SSL_KEY_PASSWORD", "sasl.oauthbearer.client.secret", "ssl.keystore.password",
    "ssl.key.pem", "sasl.jaas.config", "sasl.oauthbearer.config", "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.assertion.private.key.passphrase", "sasl.kerberos.keytab", "some.future.token",
])
def test_secret_bearing_librdkafka_properties_are_secret(prop: str) -> None:
    assert is_secret_property(prop)


@pytest.mark.parametrize("prop", ["fetch.wait.max.ms", "ssl.key.location", "SSL_KEYSTORE_LOCATION",
                                  "ssl.ca.location", "sasl.username", "client.id"])
def test_ordinary_properties_and_file_locations_are_shown(prop: str) -> None:
    assert not is_secret_property(prop)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://app:pw@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
    ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
    ("postgresql://app:p@ss/w@db/x", "postgresql://app:***@db/x"),  # a raw @ or / must not move the mask
    ("postgresql://app@db/x?password=pw&sslmode=require", "postgresql://app@db/x?password=***&sslmode=require"),
    ("postgresql://db/x?sslmode=require&password=pw", "postgresql://db/x?sslmode=require&password=***"),
    ("postgresql://db/x?sslpassword=pw", "postgresql://db/x?sslpassword=***"),
    ("https://reg:pw@registry:8081", "https://reg:***@registry:8081"),
    ("postgresql://app@db/x?sslrootcert=/ca.pem", "postgresql://app@db/x?sslrootcert=/ca.pem"),
    ("sqlite:///./data/sink.db", "sqlite:///./data/sink.db"),
    ("postgresql://app:@db/x", "postgresql://app:@db/x"),
])
def test_every_url_form_is_shown_without_its_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_url_secrets_are_the_passwords_as_written_and_decoded() -> None:
    assert set(url_secrets("postgresql://:p%40ss@db/x")) == {"p%40ss", "p@ss"}
    assert set(url_secrets("postgresql://db/x?password=a%2Bb+c")) == {"a%2Bb+c", "a+b+c", "a+b c"}
    assert url_secrets("postgresql://app@db/x") == []


def test_url_credentials_leave_the_url_bare() -> None:
    assert url_credentials("https://reg:p%40ss@registry:8081/api") == ("https://registry:8081/api", ("reg", "p@ss"))
    assert url_credentials("http://registry:8081") == ("http://registry:8081", None)


def test_masked_settings_hide_every_secret_and_keep_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("file-pw\n")
    monkeypatch.setenv("KAFKA_EXTRA__SSL_KEY_PASSWORD", "key-pw")
    monkeypatch.setenv("KAFKA_EXTRA__SASL_OAUTHBEARER_CLIENT_SECRET", "oauth-pw")
    monkeypatch.setenv("KAFKA_EXTRA__SSL_KEY_LOCATION", "/etc/tls/client.key")
    monkeypatch.setenv("KAFKA_EXTRA__FETCH_WAIT_MAX_MS", "50")
    monkeypatch.setenv("SINK_URL", "postgresql://:url-pw@db/x?password=query-pw")
    monkeypatch.setenv("SINK_PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "https://reg:registry-url-pw@registry")
    monkeypatch.setenv("SCHEMA_REGISTRY_USER_INFO", "reg:user-info-pw")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-pw")
    settings = load_settings()
    shown = settings.masked()
    text = json.dumps(shown)
    for secret in ("key-pw", "oauth-pw", "url-pw", "query-pw", "registry-url-pw", "user-info-pw", "sasl-pw"):
        assert secret not in text
    assert shown["KAFKA_EXTRA"] == {"ssl_key_password": "***", "sasl_oauthbearer_client_secret": "***",
                                    "ssl_key_location": "/etc/tls/client.key", "fetch_wait_max_ms": "50"}
    assert shown["SINK_URL"] == "postgresql://:***@db/x?password=***"
    assert shown["SCHEMA_REGISTRY_URL"] == "https://reg:***@registry"
    assert (shown["SCHEMA_REGISTRY_USER_INFO"], shown["KAFKA_SASL_PASSWORD"]) == ("***", "***")
    assert {"key-pw", "oauth-pw", "url-pw", "query-pw", "registry-url-pw", "user-info-pw", "sasl-pw",
            "file-pw"} <= set(settings.secret_values())
    assert "/etc/tls/client.key" not in settings.secret_values()


def test_a_bad_setting_is_named_without_the_url_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "ftp://reg:registry-url-pw@registry")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "SCHEMA_REGISTRY_URL" in str(info.value) and "registry-url-pw" not in str(info.value)


def test_a_url_too_malformed_to_mask_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINK_URL", "postgresql:/app:typo-pw@db/x")  # one slash: no password to find
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("SINK_URL: must be") and "typo-pw" not in str(info.value)


def _encoded_forms(secret: str) -> list[str]:
    from urllib.parse import quote

    return [secret, quote(secret, safe=""), json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]]


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("consumer.sink", logging.WARNING, __file__, 1, msg, args or None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@pytest.mark.parametrize("form", _encoded_forms(AWKWARD), ids=["raw", "percent", "json", "json-utf8"])
def test_json_log_lines_redact_before_encoding_whatever_form_the_secret_arrives_in(form: str) -> None:
    redact = Redactor([AWKWARD])
    formatter = RedactingFormatter(JsonFormatter(redact), redact)
    line = formatter.format(_record("login failed: %s", f"password={form}",
                                    error=f"driver said {form}", context={"url": f"x://u:{form}@h"}))
    parsed = json.loads(line)
    for leaked in _encoded_forms(AWKWARD):
        assert leaked not in line
    assert parsed["msg"] == "login failed: password=***"
    assert parsed["error"] == "driver said ***" and parsed["context"] == {"url": "x://u:***@h"}


def test_text_log_lines_redact_the_repr_of_context_fields() -> None:
    redact = Redactor([AWKWARD])
    line = RedactingFormatter(TextFormatter(), redact).format(_record("x", settings={"pw": AWKWARD}))
    assert AWKWARD not in line and repr(AWKWARD)[1:-1] not in line and "***" in line


def test_a_stream_redacts_a_secret_written_in_pieces() -> None:
    target = io.StringIO()
    stream = RedactingStream(target, Redactor(["hunter2-secret"]))
    for piece in ("FAIL  sink: password hun", "ter2-sec", "ret refused\nnext line", " without newline"):
        stream.write(piece)
    stream.flush()
    assert target.getvalue() == "FAIL  sink: password *** refused\nnext line without newline"


def test_a_redactor_learns_secrets_after_it_is_made() -> None:
    redact = Redactor()
    assert redact("pw-later") == "pw-later"
    redact.learn(["pw-later"])
    assert redact("pw-later") == "***"


def test_dead_letter_error_messages_are_redacted_before_they_are_cut() -> None:
    raw = RawRecord("t", 0, 7, 0, None, b"v")
    message = "x" * 1990 + "pw=hunter2-secret!"  # cut first, 2000 characters would end inside the secret
    letter = DeadLetter(raw, Stage.SINK, "RecordRejectedError", message)
    headers = dict(dead_letter_headers(letter, "g", dt.datetime.now(dt.UTC), Redactor(["hunter2-secret"])))
    shown = headers[ERROR_MESSAGE]
    assert isinstance(shown, bytes) and b"hunter" not in shown and shown.endswith(b"pw=***!")


def test_the_registry_client_sends_basic_auth_from_user_info_or_the_url() -> None:
    with FakeSchemaRegistry() as registry:
        registry.register("t-value", '"string"')
        registry.require_basic_auth("reg:p@ss word")
        host = registry.url.removeprefix("http://")
        assert SchemaRegistryClient(registry.url, user_info="reg:p@ss word").latest("t-value") is not None
        assert SchemaRegistryClient(f"http://reg:p%40ss%20word@{host}").latest("t-value") is not None
        with pytest.raises(RegistryCredentialsError) as info:
            SchemaRegistryClient(registry.url, user_info="reg:wrong").latest("t-value")
        assert registry.authorizations[:2] == ["Basic cmVnOnBAc3Mgd29yZA=="] * 2
    assert "SCHEMA_REGISTRY_USER_INFO" in str(info.value) and "401" in str(info.value)
