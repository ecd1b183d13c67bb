"""The operator commands on the command line: each has --help with examples, bad options exit 2 with one
line, and none of them needs a broker to say so."""

from __future__ import annotations

import pytest

from consumer.cli import main


@pytest.mark.parametrize(
    "command",
    [["dlq"], ["dlq", "inspect"], ["dlq", "replay"], ["produce"], ["demo"]],
)
def test_every_tool_has_help_with_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "examples:" in shown and f"consumer {' '.join(command)}" in shown


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["dlq", "inspect", "--since", "soon"], "--since"),
        (["dlq", "replay", "--limit", "-3"], "--limit"),
        (["produce", "--poison-ratio", "1.5"], "--poison-ratio"),
        (["produce", "--count", "5", "--duration", "2"], "--duration"),
    ],
)
def test_bad_tool_options_exit_2_naming_the_option(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


def test_demo_needs_at_least_one_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--records", "0"]) == 2
    assert capsys.readouterr().err.strip() == "configuration error: --records: must be at least 1"


def test_tools_without_a_broker_exit_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("CONSUMER_TOPICS", "orders")
    monkeypatch.setenv("VALUE_FORMAT", "json")
    assert main(["dlq", "inspect"]) == 2
    assert capsys.readouterr().err.strip().startswith("configuration error: KAFKA_BOOTSTRAP_SERVERS:")
