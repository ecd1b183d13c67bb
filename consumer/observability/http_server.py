"""The HTTP server under every endpoint (the service's METRICS_PORT and the WORKERS supervisor's): a
ThreadingHTTPServer with limits, so connections nobody finishes cannot take the process's threads.

- A connection gets a thread only once its first bytes arrived: until then it waits, threadless, in one
  selector, for at most `idle_timeout_s`, and at most `max_idle` of them wait (a new one pushes out the
  oldest). So 1,000 idle connections cost 1,000 sockets and no thread, and a probe still gets an answer.
- At most `max_connections` requests are served at once; one more is answered 503 at once and closed.
- Every read of a request waits at most `idle_timeout_s`, and a served connection lives at most
  `max_connection_s` (then its socket is shut down under its thread): a slow sender (slowloris), even one
  trickling a byte at a time, frees its thread.

Binding is where a setting can be wrong: a port in use or not ours is METRICS_PORT's fault, an address
this host does not have is METRICS_HOST's (ConfigError, exit 2).
"""

from __future__ import annotations

import errno
import queue
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from consumer.clock import Clock, SystemClock
from consumer.errors import ConfigError

MAX_CONNECTIONS = 32  # requests served at once; the probes and a scrape need a handful
MAX_IDLE = 256  # connections waiting for their first bytes, threadless
IDLE_TIMEOUT_S = 10.0  # a probe's or a scrape's request arrives in milliseconds
MAX_CONNECTION_S = 30.0  # a probe or a scrape is served in milliseconds
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BUSY_SEND_TIMEOUT_S = 1.0

Address = tuple[str, int]


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog (socketserver's 5 makes a burst of connections wait for SYN retries)

    def __init__(
        self, host: str, port: int, handler: type[BaseHTTPRequestHandler], *,
        max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S, max_idle: int = MAX_IDLE,
        max_connection_s: float = MAX_CONNECTION_S, clock: Clock | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle
        self._clock = clock or SystemClock()
        self._arrived: queue.SimpleQueue[tuple[socket.socket, Address]] = queue.SimpleQueue()
        self._idle: dict[socket.socket, tuple[Address, float]] = {}  # the dispatcher's alone: no lock
        self._max_connection_s = max_connection_s
        self._serving: dict[socket.socket, float] = {}  # connection -> deadline; handler threads remove theirs
        self._serving_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._closing = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="http-dispatch", daemon=True)
        try:
            super().__init__((host, port), handler)
        except OSError as exc:
            self._close_dispatcher_parts()
            raise _bind_error(host, port, exc) from None
        self._dispatcher.start()

    @property
    def idle_connections(self) -> int:
        """Connections waiting for their first bytes (read from any thread: a len() of a dict)."""
        return len(self._idle)

    # socketserver calls this on the serving thread for each accepted connection
    def process_request(self, request: Any, client_address: Any) -> None:
        self._arrived.put((request, client_address))
        self._wake()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._serving_lock:
                self._serving.pop(request, None)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        if self._dispatcher.is_alive():
            self._closing.set()
            self._wake()
            self._dispatcher.join(timeout=5.0)

    # --- the dispatcher thread ------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # closed, or its buffer full: the dispatcher is awake anyway
            pass

    def _dispatch(self) -> None:
        while not self._closing.is_set():
            for key, _events in self._selector.select(self._seconds_to_next_expiry()):
                if key.fileobj is self._wake_reader:
                    self._wake_reader.recv(4096)
                    continue
                connection: socket.socket = key.fileobj  # type: ignore[assignment]
                self._selector.unregister(connection)
                address, _deadline = self._idle.pop(connection)
                self._serve(connection, address)
            self._take_arrivals()
            self._expire()
        for connection in list(self._idle):
            self._drop(connection)
        self._close_dispatcher_parts()

    def _close_dispatcher_parts(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _seconds_to_next_expiry(self) -> float:
        with self._serving_lock:
            deadlines = [*self._serving.values(), *(deadline for _address, deadline in self._idle.values())]
        if not deadlines:
            return self._idle_timeout_s
        return max(0.0, min(deadlines) - self._clock.monotonic())

    def _take_arrivals(self) -> None:
        while True:
            try:
                connection, address = self._arrived.get_nowait()
            except queue.Empty:
                return
            if len(self._idle) >= self._max_idle:  # dicts keep insertion order: the first is the oldest
                self._drop(next(iter(self._idle)))
            self._idle[connection] = (address, self._clock.monotonic() + self._idle_timeout_s)
            self._selector.register(connection, selectors.EVENT_READ)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        for connection in [c for c, (_a, deadline) in self._idle.items() if deadline <= now]:
            self._drop(connection)
        with self._serving_lock:
            overdue = [c for c, deadline in self._serving.items() if deadline <= now]
            for connection in overdue:
                del self._serving[connection]
        for connection in overdue:  # its thread's read or write fails now, and the thread ends
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed meanwhile by its thread
                pass

    def _drop(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._idle[connection]
        self.shutdown_request(connection)

    def _serve(self, connection: socket.socket, address: Address) -> None:
        """A thread for a connection whose request started arriving, or 503 at once when all are busy."""
        if not self._slots.acquire(blocking=False):
            connection.settimeout(_BUSY_SEND_TIMEOUT_S)
            try:
                connection.sendall(_BUSY)
            except OSError:  # the client went away or does not read: closing is all we owe it
                pass
            self.shutdown_request(connection)
            return
        connection.settimeout(self._idle_timeout_s)  # every read of the request waits at most this long
        with self._serving_lock:
            self._serving[connection] = self._clock.monotonic() + self._max_connection_s
        threading.Thread(target=self.process_request_thread, args=(connection, address), name="http",
                         daemon=True).start()


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ConfigError(f"METRICS_HOST: cannot listen on {host}: {exc.strerror or exc}")
    return ConfigError(f"METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}")
