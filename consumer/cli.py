"""Command line: `run`, `check`, `config`, `demo`, `dlq inspect`, `dlq replay`, `produce`.
Exit codes: 0 clean stop, 2 configuration error, 1 anything else.

The package's only broad `except Exception` lives here, in `main`, to turn an unforeseen failure into one
logged line and exit code 1 instead of a bare traceback (as arroyo's StreamProcessor.run does).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from consumer import __version__
from consumer.environment import unknown_settings
from consumer.errors import ConfigError, PermanentError
from consumer.observability.logs import configure
from consumer.secrets import Redactor, redacted_output
from consumer.settings import Settings, load_settings

log = logging.getLogger("consumer")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

_EPILOG = """examples:
  CONSUMER_TOPICS=events SCHEMA_FILE={schema} KAFKA_BOOTSTRAP_SERVERS=localhost:9092 consumer run
  consumer check            # validate settings, reach the broker, the sink and the schema; exit 0/1
  consumer demo --records 2000      # needs the demo extra: pip install 'microbatch-consumer[demo]'
  consumer dlq inspect --stage sink      # why records were dead-lettered; `dlq replay` puts them back
  consumer produce --count 10000 --poison-ratio 0.01
settings are environment variables (or a .env file); docs/configuration.md lists every one.
{schema} is the example schema shipped with the package."""

# The settings a first `run` or `check` needs, in the order an operator fills them in, with their defaults from
# Settings itself; docs/configuration.md has them all.
_SETTINGS_THAT_MATTER = (
    ("KAFKA_BOOTSTRAP_SERVERS", "brokers, host:port[,host:port] (required)"),
    ("CONSUMER_TOPICS", "topics to read, comma-separated (required)"),
    ("CONSUMER_GROUP_ID", "consumer group, the same for every replica"),
    ("SCHEMA_FILE", "reader Avro schema (.avsc); or SCHEMA_REGISTRY_URL"),
    ("SCHEMA_REGISTRY_URL", "a Confluent-compatible registry (wire-format values)"),
    ("VALUE_FORMAT", "avro or json"),
    ("IDEMPOTENCY_KEY", "a row's unique key: field:<name>, header:<name>, key or coordinates"),
    ("SINK_URL", "postgresql://user@host/db or sqlite:///<file>"),
    ("SINK_TABLE", "created from the schema, or evolved, at start"),
    ("SINK_WRITE_MODE", "insert (first write wins) or upsert (highest offset wins)"),
    ("DLQ_TOPIC", "dead-letter topic (default <first topic>.dlq)"),
    ("METRICS_PORT", "/metrics, /healthz, /readyz, /status"),
    ("SHUTDOWN_TIMEOUT_MS", "on SIGTERM, time to finish the batch in hand"),
    ("WORKERS", "processes in the same group, or auto (one per CPU)"),
)


def _settings_epilog(command: str) -> str:
    """The `--help` epilog of `run` and `check`: the settings that matter, with an example."""
    from consumer.tools.examples import example_schema

    lines = ["settings that matter (environment variables or a .env file; docs/configuration.md lists all):"]
    for name, meaning in _SETTINGS_THAT_MATTER:
        field = Settings.model_fields[name.lower()]
        shown = None if field.is_required() else getattr(field.default, "value", field.default)
        lines.append(f"  {name:<24} {meaning}" + (f" (default {shown})" if shown is not None else ""))
    lines += [
        "example:",
        f"  KAFKA_BOOTSTRAP_SERVERS=localhost:9092 CONSUMER_TOPICS=events SCHEMA_FILE={example_schema()} \\",
        "  IDEMPOTENCY_KEY=field:event_id SINK_URL=postgresql://consumer@localhost/events SINK_TABLE=events \\",
        f"  consumer {command}",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from consumer.tools.examples import example_schema

    parser = argparse.ArgumentParser(
        prog="consumer", description="Kafka micro-batches into a SQL table, exactly once in effect.",
        epilog=_EPILOG.format(schema=example_schema()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="consume, batch, sink, commit until SIGTERM/SIGINT",
                              epilog=_settings_epilog("run"), formatter_class=argparse.RawDescriptionHelpFormatter)
    # internal, set by the WORKERS > 1 supervisor on the processes it starts (consumer/workers/supervisor.py)
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-metrics-port", type=int, help=argparse.SUPPRESS)
    commands.add_parser("check", help="validate configuration and connectivity; exit 0 ok, 1 not, 2 config",
                        epilog=_settings_epilog("check"), formatter_class=argparse.RawDescriptionHelpFormatter)
    from consumer.tools.config import CONFIG_EPILOG, configure_config

    configure_config(commands.add_parser(
        "config", help="print the effective configuration (values, sources, librdkafka properties); no broker",
        epilog=CONFIG_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))
    demo = commands.add_parser(
        "demo", help="the whole job on an embedded broker and SQLite, with a summary",
        epilog="examples:\n  consumer demo\n  consumer demo --records 20000 --keep-running",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--records", type=int, default=5000, help="events to produce (default 5000)")
    demo.add_argument("--keep-running", action="store_true", help="keep serving until Ctrl-C")
    demo.add_argument("--format", choices=("text", "json"), default="text", help="output format of the summary")
    from consumer.tools.commands import add_tool_parsers

    add_tool_parsers(commands)  # dlq inspect, dlq replay, produce
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Every line any command prints, its one-line errors included, passes the mask of the logs; the mask
    # learns the secrets as soon as the settings are loaded.
    redact = Redactor()
    with redacted_output(redact, sys):
        return _main(args, redact)


def _main(args: argparse.Namespace, redact: Redactor) -> int:
    try:
        if args.command == "demo":
            from consumer.tools.demo import run_demo

            return run_demo(records=args.records, keep_running=args.keep_running, fmt=args.format)
        if args.command in ("dlq", "produce"):
            from consumer.tools.commands import run_tool

            return run_tool(args, redact)
        settings = load_settings()
        redact.learn(settings.secret_values())
        configure(settings.log_level.value, settings.log_format.value, redact)
        if getattr(args, "worker", None) is None:  # the supervisor warned once for its workers
            warn_unknown_settings()
        if args.command == "config":
            from consumer.tools.config import run_config

            return run_config(settings, args)
        if args.command == "check":
            from consumer.tools.check import run_check

            return run_check(settings)
        return _run(settings, args.worker, args.worker_metrics_port)
    except ConfigError as exc:
        print(f"configuration error: {exc}{_misspelling_hint(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except PermanentError as exc:
        log.error("stopping: %s", exc, extra={"error_class": type(exc).__name__})
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `consumer config | head -1`: the reader has all it wanted
        return _quiet_after_closed_pipe()
    except Exception:  # the one catch-all: log once, exit 1 (the runner committed nothing it had not sunk)
        log.exception("stopping on an unexpected error")
        return EXIT_FAILURE


def _run(settings: Settings, worker: int | None = None, worker_port: int | None = None) -> int:
    from consumer.service.app import build

    settings.require_bootstrap()
    stop = threading.Event()
    if worker is not None and worker_port is not None:
        from consumer.workers.worker import become_worker

        settings = become_worker(settings, worker, worker_port, stop)
    log.info("starting", extra={"version": __version__, "settings": settings.masked()})
    install_stop_handlers(stop)
    if worker is None and settings.workers > 1:
        from consumer.workers.supervisor import supervise

        return supervise(settings, stop)
    return build(settings, stop).run()


def warn_unknown_settings() -> None:
    """A variable under one of our prefixes that is no setting is most likely a typo whose default is now in
    use: one WARNING each, naming the closest real setting."""
    for unknown in unknown_settings():
        hint = f"; did you mean {unknown.closest}?" if unknown.closest else ""
        log.warning("%s is not a setting and is ignored%s", unknown.name, hint,
                    extra={"setting": unknown.name, "closest": unknown.closest, "source": unknown.source.value})


def _quiet_after_closed_pipe() -> int:
    """What the Python documentation recommends for SIGPIPE: point stdout at devnull so that the interpreter's
    final flush does not fail again with a second traceback, and exit 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILURE


def _misspelling_hint(error: str) -> str:
    """`CONSUMER_TOPICS: Field required` while CONSUMER_TOPIC is set: say so on the same line."""
    for unknown in unknown_settings():
        if unknown.closest and error.startswith(f"{unknown.closest}:"):
            return f" ({unknown.name} is set: a misspelling of {unknown.closest}?)"
    return ""


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT ask for a graceful stop; a second one while stopping is ignored (the shutdown
    timeout bounds the stop)."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
