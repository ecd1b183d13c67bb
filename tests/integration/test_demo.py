"""`demo`: the bundled broker on a free port, SQLite, sample events with poison, duplicates and tombstones,
the service in-process, a summary whose counts add up, exit 0. Run as `make demo` runs it (a process,
stdout not a terminal), from a directory other than the checkout, so only the package locates the schema.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_cli
from support.db import count_rows
from support.service import BASE_ENV
from support.waiting import wait_until

DEMO_DB = Path("data/demo.db")


def _no_broker_env() -> dict[str, str]:
    """The demo must not need any setting: drop the ones a developer's shell (or CI) may carry."""
    return {"KAFKA_BOOTSTRAP_SERVERS": "", "CONSUMER_TOPICS": "", "SCHEMA_FILE": ""}


def test_demo_exits_0_and_its_summary_counts_add_up(tmp_path: Path) -> None:
    done = run_cli(["demo", "--records", "300", "--format", "json"], _no_broker_env(), tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    summary = json.loads(done.stdout)

    produced = summary["produced"]
    assert produced["total"] == 300
    assert produced["valid"] + produced["duplicate"] + produced["poison"] + produced["tombstone"] == 300
    assert min(produced["duplicate"], produced["poison"], produced["tombstone"]) > 0
    assert summary["rows_written"] == produced["valid"]
    assert summary["duplicates_skipped"] == produced["duplicate"]
    assert summary["tombstones_skipped"] == produced["tombstone"]
    assert summary["dead_lettered"]["total"] == produced["poison"]
    assert summary["dead_lettered"]["by_stage"] == {"decode": produced["poison"]}
    assert summary["offsets_committed"] == summary["end_offsets"]
    assert sum(summary["end_offsets"].values()) == 300 and summary["all_committed"] is True
    assert summary["metrics_url"].startswith("http://127.0.0.1:")
    assert count_rows(f"sqlite:///{tmp_path / DEMO_DB}", "events") == produced["valid"]
    assert "demo: committed" in done.stderr  # plain progress lines: stderr is not a terminal


def test_demo_leaves_nothing_in_the_temporary_folder(tmp_path: Path) -> None:
    """Its files (the SQLite database, the broker's log) stay under ./data; the temporary folder stays empty."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    done = run_cli(["demo", "--records", "50"], {**_no_broker_env(), "TMPDIR": str(temporary)}, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert list(temporary.iterdir()) == []
    assert (tmp_path / "work" / DEMO_DB).is_file() and (tmp_path / "work" / "data" / "demo-broker.log").is_file()


def test_demo_text_summary_without_a_terminal(tmp_path: Path) -> None:
    done = run_cli(["demo", "--records", "100"], _no_broker_env(), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("demo: committed 100/100, lag 0") for line in lines)
    assert "demo summary" in lines
    assert "\x1b[" not in done.stdout  # no escape codes in a pipe


def test_demo_keep_running_serves_until_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "demo", "--records", "50", "--keep-running"], cwd=tmp_path,
            env={**os.environ, **BASE_ENV, **_no_broker_env()}, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: "committed 50/50, lag 0" in out.read_text(), 120, "the demo to commit all 50")
            assert process.poll() is None  # still serving after everything is committed
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = out.read_text()
    assert "Ctrl-C stops it" in text and "demo summary" in text
    if "rows written" not in text:
        pytest.fail(text)
