"""The endpoints' HTTP server under hostile clients (issue 14, point 6): idle connections take no thread,
requests in progress are bounded (one more is answered 503 at once), a slow or silent client is closed after
the idle timeout, the bind address is a setting and a port in use is a configuration error naming it."""

from __future__ import annotations

import select
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from support.waiting import wait_until

from consumer.clock import SystemClock
from consumer.errors import ConfigError
from consumer.observability.health import HealthServer, HealthState

WAIT_S = 10.0


def _server(max_connections: int = 32, idle_timeout_s: float = 10.0) -> HealthServer:
    server = HealthServer(0, CollectorRegistry(), HealthState(SystemClock(), 60), host="127.0.0.1",
                          max_connections=max_connections, idle_timeout_s=idle_timeout_s)
    server.start()
    return server


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _connect(server: HealthServer, opened: list[socket.socket], send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    opened.append(sock)
    if send:
        sock.sendall(send)
    return sock


def _get(server: HealthServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=WAIT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed `sock` (a read returns end of file, or a reset)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_take_no_thread_and_healthz_still_answers(sockets: list[socket.socket]) -> None:
    server = _server(max_connections=4)
    try:
        threads_before = threading.active_count()
        for _ in range(200):
            _connect(server, sockets)
        wait_until(lambda: server.idle_connections, WAIT_S, "200 idle connections held", until=lambda n: n == 200)
        assert threading.active_count() <= threads_before
        assert _get(server, "/healthz") == 200
        assert threading.active_count() <= threads_before + 4
    finally:
        server.close()


def test_requests_in_progress_are_bounded_and_one_more_is_answered_503_at_once(
    sockets: list[socket.socket],
) -> None:
    server = _server(max_connections=4)
    try:
        threads_before = threading.active_count()
        for _ in range(50):  # slowloris: a request line, then headers that never end
            _connect(server, sockets, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        wait_until(lambda: server.idle_connections, WAIT_S, "every slow request dispatched", until=lambda n: n == 0)
        wait_until(threading.active_count, WAIT_S, "four handler threads",
                   until=lambda n: n == threads_before + 4)
        # all but the four being served were answered 503 and closed
        busy = wait_until(lambda: [sock for sock in sockets if _has_data(sock)], WAIT_S, "46 answered at once",
                          until=lambda answered: len(answered) == 46)
        assert all(sock.recv(4096).startswith(b"HTTP/1.0 503") for sock in busy)
        assert _get(server, "/healthz") == 503
        assert threading.active_count() == threads_before + 4
    finally:
        server.close()


def _has_data(sock: socket.socket) -> bool:
    """Bytes from the server wait on `sock` (without blocking: a socket with a timeout ignores MSG_DONTWAIT)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and bool(sock.recv(1, socket.MSG_PEEK))


def test_a_silent_connection_and_a_slow_request_are_closed_after_the_idle_timeout(
    sockets: list[socket.socket],
) -> None:
    server = _server(idle_timeout_s=0.3)
    try:
        silent = _connect(server, sockets)
        slow = _connect(server, sockets, b"GET /healthz HTTP/1.1\r\n")
        assert wait_until(lambda: _closed_by_server(silent), WAIT_S, "the silent connection closed")
        assert wait_until(lambda: _closed_by_server(slow), WAIT_S, "the slow request closed")
        assert server.idle_connections == 0
        assert _get(server, "/healthz") == 200
    finally:
        server.close()


def test_a_request_trickling_in_a_byte_at_a_time_is_cut_at_the_connection_deadline(
    sockets: list[socket.socket],
) -> None:
    server = HealthServer(0, CollectorRegistry(), HealthState(SystemClock(), 60), host="127.0.0.1",
                          idle_timeout_s=5.0, max_connection_s=0.5)
    server.start()
    try:
        threads_before = threading.active_count()
        trickle = _connect(server, sockets, b"GET /healthz HTTP/1.1\r\n")
        wait_until(threading.active_count, WAIT_S, "its handler thread", until=lambda n: n == threads_before + 1)

        def trickled_until_cut() -> bool:
            try:
                trickle.sendall(b"X")  # one byte of a header that never ends, well within the read timeout
            except OSError:
                return True
            readable, _, _ = select.select([trickle], [], [], 0.1)
            return bool(readable) and _closed_by_server(trickle)

        assert wait_until(trickled_until_cut, WAIT_S, "the trickling request cut")
        wait_until(threading.active_count, WAIT_S, "its thread gone", until=lambda n: n == threads_before)
    finally:
        server.close()


def test_the_oldest_idle_connection_makes_room_for_a_new_one(sockets: list[socket.socket]) -> None:
    server = HealthServer(0, CollectorRegistry(), HealthState(SystemClock(), 60), host="127.0.0.1", max_idle=3)
    server.start()
    try:
        first = _connect(server, sockets)
        for _ in range(3):
            _connect(server, sockets)
        assert wait_until(lambda: _closed_by_server(first), WAIT_S, "the oldest idle connection closed")
        # the newest is registered as idle just after the oldest is closed: wait for it, do not race it
        assert wait_until(lambda: server.idle_connections, WAIT_S, "three idle connections", until=lambda n: n == 3) == 3
        assert _get(server, "/readyz") == 503  # answered: not ready, but served
    finally:
        server.close()


def test_metrics_host_is_the_bind_address() -> None:
    server = _server()
    try:
        assert server.host == "127.0.0.1"
        assert _get(server, "/healthz") == 200
    finally:
        server.close()


def test_a_port_in_use_is_a_configuration_error_naming_metrics_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"^METRICS_PORT: cannot listen on 127.0.0.1:\d+: Address already"):
            HealthServer(port, CollectorRegistry(), HealthState(SystemClock(), 60), host="127.0.0.1")


def test_an_address_this_host_does_not_have_is_a_configuration_error_naming_metrics_host() -> None:
    with pytest.raises(ConfigError, match=r"^METRICS_HOST: cannot listen on 192\.0\.2\.1"):
        HealthServer(0, CollectorRegistry(), HealthState(SystemClock(), 60), host="192.0.2.1")
