"""Free TCP ports on the loopback interface, for the services the tests and the benchmark start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (another process could take it before use; rare enough)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
