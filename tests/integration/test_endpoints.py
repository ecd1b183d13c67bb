"""The HTTP endpoints' bind settings through the real command (issue 14 point 6, issue 17 point 3): METRICS_HOST
is the address the service listens on, and a METRICS_PORT another process holds is one line naming it, exit 2,
no traceback, for `run` and for the WORKERS supervisor. The limits themselves: tests/unit/test_http_server.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_cli
from support.runs import SCHEMA_FILE, service_env
from support.service import ServiceProcess

StartService = Callable[..., ServiceProcess]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp: hex address:port, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_metrics_host_is_where_the_service_listens(
    kafka_bootstrap: str, topic: str, unique: Callable[[str], str], sink_url: str, sink_table: str,
    service: StartService,
) -> None:
    svc = service(service_env(kafka_bootstrap, topic, unique("group"), sink_url, sink_table,
                              METRICS_HOST="127.0.0.1"))
    svc.wait_ready()
    assert _listening_addresses(svc.port) == {"127.0.0.1"}
    status = json.loads(svc.http_get("/status")[1])
    assert status["settings"]["METRICS_HOST"] == "127.0.0.1"
    assert svc.terminate() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_metrics_port_in_use_exits_2_naming_it(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "CONSUMER_TOPICS": "events", "WORKERS": workers,
               "SINK_URL": f"sqlite:///{tmp_path}/sink.db", "METRICS_PORT": str(port), "SCHEMA_FILE": SCHEMA_FILE, "LOG_LEVEL": "WARNING"}
        done = run_cli(["run"], env, tmp_path, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "METRICS_PORT" in lines[0] and str(port) in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
