"""Logging set up once, by the CLI: one JSON object per line (LOG_FORMAT=json) or text for people.

Context travels as `extra={...}` fields; payloads and secrets are never passed in.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from consumer.settings import Settings, url_password

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = _context(record)
        text = super().format(record)
        return text + ("  " + " ".join(f"{k}={v}" for k, v in context.items()) if context else "")


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then masks every known secret: whatever an exception message or a library
    put into the line, the password does not reach the log."""

    def __init__(self, inner: logging.Formatter, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """Replace every occurrence of each secret (longest first) by `***`."""
    known = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in known:
            text = text.replace(secret, "***")
        return text

    return redact


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold: the SASL password, the sink URL's password, the password file's text."""
    secrets = url_password(settings.sink_url)
    if settings.kafka_sasl_password is not None:
        secrets.append(settings.kafka_sasl_password.get_secret_value())
    if settings.sink_password_file is not None:
        try:
            secrets.append(settings.sink_password_file.read_text(encoding="utf-8").strip())
        except OSError:
            pass  # unreadable: the sink reports it when it builds its engine
    return [secret for secret in secrets if secret]


def configure(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(RedactingFormatter(inner, redactor(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
