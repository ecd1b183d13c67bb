"""`config`: the effective configuration, as `run` would use it, without reaching anything.

Every setting with its value and where it came from (the environment, `.env`, its default), the values
derived from them (the dead-letter topic, WORKERS=auto's count) and the librdkafka properties of the
consumer and the dead-letter producer. Secrets are masked: settings through `Settings.masked()`, client
properties by name, and the whole text once more through the log redactor.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from consumer.environment import Source, raw_setting, setting_sources
from consumer.errors import ConfigError
from consumer.kafka.config import consumer_config, dead_letter_producer_properties, shown_client_config
from consumer.observability.logs import redactor, secret_values
from consumer.settings import Settings

CONFIG_EPILOG = """examples:
  consumer config                       # every setting, its value and where it came from
  consumer config --format json | jq '.settings.SINK_URL'"""


def configure_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def run_config(settings: Settings, args: argparse.Namespace) -> int:
    shown = effective_configuration(settings)
    text = json.dumps(shown, indent=2) if args.format == "json" else render_text(shown)
    print(redactor(secret_values(settings))(text))
    return 0


def effective_configuration(settings: Settings) -> dict[str, Any]:
    sources = setting_sources()
    masked = settings.masked()
    if masked.get("KAFKA_EXTRA"):  # librdkafka properties that carry secrets, as the clients' are shown
        masked["KAFKA_EXTRA"] = shown_client_config(
            {name.lower().replace("_", "."): value for name, value in masked["KAFKA_EXTRA"].items()}
        )
    return {
        "settings": {name: {"value": value, "source": sources.get(name, Source.DEFAULT).value}
                     for name, value in masked.items()},
        "resolved": _resolved(settings),
        "librdkafka": _client_properties(settings),
    }


def _resolved(settings: Settings) -> dict[str, Any]:
    auto = (raw_setting("WORKERS") or "").strip().lower() == "auto"
    workers_note = "WORKERS=auto: the CPUs this process may use" if auto else "WORKERS"
    topic_note = "DLQ_TOPIC" if settings.dlq_topic else "DLQ_TOPIC unset: <first topic>.dlq"
    return {
        "dead_letter_topic": {"value": settings.dead_letter_topic, "from": topic_note},
        "workers": {"value": settings.workers, "from": workers_note},
    }


def _client_properties(settings: Settings) -> dict[str, Any]:
    try:
        return {
            "consumer": shown_client_config(consumer_config(settings)),
            "dead_letter_producer": shown_client_config(dead_letter_producer_properties(settings)),
        }
    except ConfigError as missing:  # no KAFKA_BOOTSTRAP_SERVERS: `run` would stop there, `config` shows why
        return {"not_built": str(missing)}


def render_text(shown: dict[str, Any]) -> str:
    lines = ["settings (value, source)"]
    settings = shown["settings"]
    width = max(len(name) for name in settings) + 2
    for name, entry in settings.items():
        lines.append(f"  {name:<{width}}{_text(entry['value']):<40} {entry['source']}")
    lines.append("resolved")
    for name, entry in shown["resolved"].items():
        lines.append(f"  {name:<{width}}{_text(entry['value']):<40} {entry['from']}")
    clients = shown["librdkafka"]
    if "not_built" in clients:
        lines.append(f"librdkafka properties: not built ({clients['not_built']})")
    for client, properties in clients.items():
        if client == "not_built":
            continue
        lines.append(f"librdkafka properties, {client.replace('_', ' ')}")
        lines.extend(f"  {name} = {value}" for name, value in properties.items())
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return str(value)
