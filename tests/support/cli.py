"""Running the operator commands (`dlq inspect`, `dlq replay`, `produce`, `demo`) as real processes.

Each call is `python -m consumer ...` with os.environ + BASE_ENV + `env`, like the service fixture, so the
tests go through argument parsing, settings, exit codes and output exactly as an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .service import BASE_ENV

_TIMEOUT_S = 180.0


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout_s: float = _TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run `python -m consumer *args` to completion; fails the test (showing the output) on a hang."""
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [sys.executable, "-m", "consumer", *args], cwd=cwd, env={**os.environ, **BASE_ENV, **env},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"consumer {' '.join(args)} still running after {timeout_s}s\n{exc.stdout}\n{exc.stderr}")


def run_json(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> Any:
    """Run a command with `--format json`, require exit 0, and return the parsed stdout."""
    done = run_cli([*args, "--format", "json"], env, cwd)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return json.loads(done.stdout)
