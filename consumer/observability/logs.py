"""Logging set up once, by the CLI: one JSON object per line (LOG_FORMAT=json) or text for people.

Context travels as `extra={...}` fields; payloads and secrets are never passed in. Whatever a library or an
exception puts into a line anyway is redacted by value (consumer/secrets.py): in the JSON format the message and
every field before `json.dumps`, so escaping cannot hide a secret, and the encoded line once more after.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from consumer.secrets import Redactor
from consumer.settings import Settings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or Redactor()

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
        return self._redact(json.dumps(self._redact.value(line), default=str))


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


def redactor(secrets: Iterable[str]) -> Redactor:
    """Replace every occurrence of each secret, in each of its encoded forms, by `***`."""
    return Redactor(secrets)


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold (`Settings.secret_values`)."""
    return settings.secret_values()


def configure(level: str, fmt: str, secrets: Iterable[str] | Redactor = ()) -> None:
    redact = secrets if isinstance(secrets, Redactor) else Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter(redact) if fmt == "json" else TextFormatter()
    handler.setFormatter(RedactingFormatter(inner, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
