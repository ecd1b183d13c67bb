"""Stopping the services the testbed starts: a polite signal, then SIGKILL after a grace period."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable


def stop_process(
    process: subprocess.Popen[bytes] | None,
    polite: signal.Signals,
    grace_s: float,
    kill: Callable[[subprocess.Popen[bytes]], None] = subprocess.Popen.kill,
) -> None:
    """Send `polite`, wait up to `grace_s`, then `kill` (default SIGKILL to the process) and reap it."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(polite)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill(process)
        process.wait()
