"""The operator tools' place on the command line: `dlq inspect`, `dlq replay`, `produce`.

cli.py stays a screenful: it adds these parsers and hands the parsed arguments to `run_tool`, which loads
the settings (with the options that stand in for settings), keeps logs quiet, and turns a broker that
does not answer into one line and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from consumer.errors import TransientError
from consumer.kafka.admin import broker_metadata
from consumer.kafka.config import kafka_client_config
from consumer.observability.logs import configure
from consumer.secrets import Redactor
from consumer.settings import load_settings

_EXIT_FAILURE = 1


def add_tool_parsers(commands: Any) -> None:
    """Add the tools' subcommands to cli's `add_subparsers()` result."""
    from consumer.tools.dlq_inspect import INSPECT_EPILOG, configure_inspect
    from consumer.tools.dlq_replay import REPLAY_EPILOG, configure_replay
    from consumer.tools.examples import ALL_TYPES_SCHEMA, EVENT_SCHEMA, example_schema
    from consumer.tools.produce import PRODUCE_EPILOG, configure_produce

    raw = argparse.RawDescriptionHelpFormatter
    dlq = commands.add_parser(
        "dlq", help="inspect or replay the dead-letter topic", formatter_class=raw,
        epilog="examples:\n  consumer dlq inspect --stage sink\n  consumer dlq replay --stage sink --dry-run",
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    configure_inspect(actions.add_parser(
        "inspect", help="summary and table of dead-lettered records (reads only, joins no group)",
        description="List dead-lettered records: original coordinates, stage, error class and message.",
        epilog=INSPECT_EPILOG, formatter_class=raw,
    ))
    configure_replay(actions.add_parser(
        "replay", help="re-publish dead-lettered records to their original topic",
        description="Re-publish selected dead-lettered records (key, value, headers kept) and remember how "
                    "far it got, so an interrupted replay resumes.",
        epilog=REPLAY_EPILOG, formatter_class=raw,
    ))
    configure_produce(commands.add_parser(
        "produce", help="load generator: random valid events of any Avro schema, with poison and duplicates",
        description="Produce random valid events from an Avro schema, with poison, duplicates and tombstones "
                    "at chosen ratios; prints what it produced and the end offsets.",
        epilog=PRODUCE_EPILOG.format(event_schema=example_schema(EVENT_SCHEMA),
                                     all_types_schema=example_schema(ALL_TYPES_SCHEMA)),
        formatter_class=raw,
    ))


_PROBE_TIMEOUT_S = 15.0


def run_tool(args: argparse.Namespace, redact: Redactor | None = None) -> int:
    """Run `dlq inspect|replay` or `produce`; ConfigError and PermanentError propagate to cli.main. `redact`,
    the mask of cli's output streams, learns the settings' secrets here, where the settings are loaded."""
    redact = redact if redact is not None else Redactor()
    configure("WARNING", "text", redact)
    if args.command == "produce":
        from consumer.tools.produce import run_produce, settings_overrides

        settings = load_settings(**settings_overrides(args))
        runner: Any = run_produce
    else:
        from consumer.tools.dlq_inspect import run_inspect
        from consumer.tools.dlq_replay import run_replay

        settings = load_settings()
        runner = run_inspect if args.dlq_command == "inspect" else run_replay
    redact.learn(settings.secret_values())
    try:
        # Refused credentials or an untrusted broker certificate: one line naming the setting, exit 2
        broker_metadata(kafka_client_config(settings), _PROBE_TIMEOUT_S)
        return int(runner(settings, args))
    except TransientError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return _EXIT_FAILURE
