"""The broker and the database for a test run, and a TCP proxy to break connections on purpose.

Resolution follows confluent-kafka-python's integration conftest: an explicit address from the environment,
else a container if a Docker engine answers, else Apache Kafka itself (KRaft, from Maven jars the project
fetches: ops/testbed/kafka.py) for Kafka and a private PostgreSQL cluster for the database. Tansu, the
embedded broker of `demo`, is started by the demo itself (its smoke test is tests/integration/test_demo.py). What cannot be had skips the tests needing it with the reason, or fails
them under REQUIRE_KAFKA=1 / REQUIRE_POSTGRES=1 so CI cannot go green by skipping everything.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn, Self

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException

from ops.testbed.kafka import KafkaBroker, TestbedError
from ops.testbed.postgres import (
    PostgresCluster,
    PostgresTestbedError,
    postgres_unavailable_reason,
    private_postgres,
)
from ops.testbed.tls import ServerTls

from .db import can_connect
from .kafka import admin

_DOCKER_PING_TIMEOUT_S = 2
_KAFKA_ANSWER_TIMEOUT_S = 15.0
_LOG_TAIL_CHARS = 2000


def unavailable(reason: str, require_env: str) -> NoReturn:
    """Skip with `reason`, or fail when `require_env`=1 says this run must have the dependency."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{reason} ({require_env}=1)")
    pytest.skip(reason)


def docker_answers() -> bool:
    """Whether a Docker engine responds within a couple of seconds (a client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=_DOCKER_PING_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - missing module, socket, daemon or permissions all mean "no Docker"
        return False


def kafka_answers(bootstrap: str, timeout_s: float = _KAFKA_ANSWER_TIMEOUT_S) -> bool:
    """Whether a broker answers a metadata request; librdkafka retries the connection within `timeout_s`."""
    try:
        admin(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RunBroker:
    """The run's broker: where clients bootstrap, and the local Apache Kafka when it is ours (else None)."""

    bootstrap: str
    local: KafkaBroker | None


@contextmanager
def kafka_bootstrap(log_dir: Path) -> Iterator[RunBroker]:
    """The run's broker: KAFKA_BOOTSTRAP_SERVERS, a Kafka container, or Apache Kafka from Maven jars.

    The local broker also opens a SASL_SSL listener (SCRAM-SHA-512), so the security tests share it.
    """
    explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if explicit:
        if not kafka_answers(explicit):
            unavailable(f"KAFKA_BOOTSTRAP_SERVERS={explicit} does not answer", "REQUIRE_KAFKA")
        yield RunBroker(explicit, None)
    elif docker_answers():
        with _kafka_container() as bootstrap:
            yield RunBroker(bootstrap, None)
    else:
        with local_kafka(log_dir, sasl_ssl=True) as broker:
            yield RunBroker(broker.bootstrap, broker)


@contextmanager
def local_kafka(
    work_dir: Path, port: int | None = None, advertised_port: int | None = None, *, sasl_ssl: bool = False
) -> Iterator[KafkaBroker]:
    """Apache Kafka (KRaft, one node) in `work_dir`, on `port` (default: a free one), stopped on exit.

    `advertised_port` (default: `port`) is the port put in metadata: pointing it at a TcpProxy in front of
    the broker makes every client connection, not just the bootstrap one, go through the proxy.
    """
    broker = KafkaBroker(work_dir, port=port, advertised_port=advertised_port, sasl_ssl=sasl_ssl)
    try:
        broker.start()
    except TestbedError as exc:
        broker.stop()
        unavailable(f"no Kafka: no KAFKA_BOOTSTRAP_SERVERS, no Docker, and Apache Kafka did not start: {exc}",
                    "REQUIRE_KAFKA")
    try:
        yield broker
    finally:
        broker.stop()


@contextmanager
def _kafka_container() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.kafka import KafkaContainer
    container = KafkaContainer()
    try:
        container.start()
    except Exception as exc:  # noqa: BLE001 - image pulls and engine errors come in many types
        unavailable(f"Kafka container did not start: {exc}", "REQUIRE_KAFKA")
    try:
        yield str(container.get_bootstrap_server())
    finally:
        container.stop()


@contextmanager
def postgres_url(log_dir: Path | None = None) -> Iterator[str]:
    """The run's PostgreSQL: TEST_DATABASE_URL (or TEST_POSTGRES_URL), a private cluster made with initdb
    (its log in `log_dir`, kept after the run), or a container."""
    explicit = os.environ.get("TEST_DATABASE_URL") or os.environ.get("TEST_POSTGRES_URL")
    if explicit:
        if not can_connect(explicit):
            shown = sa.make_url(explicit).render_as_string(hide_password=True)
            unavailable(f"TEST_DATABASE_URL/TEST_POSTGRES_URL={shown} does not connect", "REQUIRE_POSTGRES")
        yield explicit
    elif (missing := postgres_unavailable_reason()) is None:
        with private_postgres_cluster(log_dir) as cluster:
            yield cluster.url
    elif docker_answers():
        with _postgres_container() as url:
            yield url
    else:
        unavailable(f"no PostgreSQL: no TEST_DATABASE_URL, {missing}, no Docker", "REQUIRE_POSTGRES")


@contextmanager
def private_postgres_cluster(log_dir: Path | None = None, tls: ServerTls | None = None) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of one's own (ops/testbed/postgres.py), for tests that stop and start it or need TLS
    (`tls`: only TLS clients accepted); logs to `log_dir/postgres.log` when given. Skips, or fails under
    REQUIRE_POSTGRES=1, when it cannot start."""
    log_path = log_dir / "postgres.log" if log_dir is not None else None
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(private_postgres(log_path=log_path, tls=tls))
        except PostgresTestbedError as exc:
            unavailable(f"private PostgreSQL did not start: {exc}", "REQUIRE_POSTGRES")
        yield cluster


@contextmanager
def _postgres_container() -> Iterator[str]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer("postgres:16-alpine", driver="psycopg")
    try:
        container.start()
    except Exception as exc:  # noqa: BLE001 - image pulls and engine errors come in many types
        unavailable(f"PostgreSQL container did not start: {exc}", "REQUIRE_POSTGRES")
    try:
        yield str(container.get_connection_url())
    finally:
        container.stop()


CutMode = Literal["reset", "blackhole"]
_ACCEPT_POLL_S = 0.2
_CONNECT_TIMEOUT_S = 5.0
_CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target, and breaks that path on demand for fault tests.

    `cut()` ("reset") closes every open connection and resets new ones as soon as they are accepted: the
    database looks down (a lost connection, then refused logins). `cut("blackhole")` stops moving bytes
    instead, so clients hang until their own timeouts, like a network partition; `restore()` lets them
    flow again. Refusing by closing the listening socket would free the port for someone else to take.
    `set_latency(s)` delays every chunk sent back to the client, so one round trip gains about `s`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._mode: CutMode | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._latency_s = 0.0
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL_S)  # lets the accept loop notice close()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def active_connections(self) -> int:
        """Connections currently forwarded (for asserting that a client reconnected)."""
        with self._lock:
            return len(self._links)

    def cut(self, mode: CutMode = "reset") -> None:
        """Break the path until restore(); see the class docstring for the two modes."""
        with self._lock:
            self._mode = mode
            links = list(self._links) if mode == "reset" else []
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        for link in links:
            link.shutdown()

    def restore(self) -> None:
        """Accept and forward again; blackholed connections resume where they stopped."""
        with self._lock:
            self._mode = None
        self._flowing.set()

    def set_latency(self, seconds: float) -> None:
        """Delay each chunk towards the client by `seconds` (0 turns it off)."""
        self._latency_s = seconds

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed.set()
        self._listener.close()
        self._flowing.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.shutdown()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        client.settimeout(None)
        with self._lock:
            refused = self._mode == "reset"
        if refused:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self._target, timeout=_CONNECT_TIMEOUT_S)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        link = _Link(client, upstream)
        with self._lock:
            if self._mode == "reset" or self._closed.is_set():  # cut while connecting upstream
                link.shutdown()
            self._links.add(link)
        for source, target, delayed in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(target=self._pump, args=(link, source, target, delayed), daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, delayed: bool) -> None:
        """Copy one direction until either side ends or the link is cut; the last pump out closes it."""
        try:
            while data := source.recv(_CHUNK_BYTES):
                if delayed and self._latency_s > 0:
                    time.sleep(self._latency_s)  # simulated latency, not synchronisation
                self._flowing.wait()
                if link.is_shut:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            link.shutdown()
            if link.pump_done():
                with self._lock:
                    self._links.discard(link)


class _Link:
    """A client socket and its upstream; shut down from any thread, closed only by its last pump.

    shutdown() wakes both pumps blocked in recv(); closing a socket while another thread uses it could
    hand its descriptor number to a new socket, so only the last pump to leave closes them.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self._sockets = (client, upstream)
        self._lock = threading.Lock()
        self._pumps = 2
        self.is_shut = False

    def shutdown(self) -> None:
        with self._lock:
            self.is_shut = True
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already shut or never connected
                pass

    def pump_done(self) -> bool:
        """Count a pump out; the last one closes both sockets and returns True."""
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0
        if last:
            for sock in self._sockets:
                sock.close()
        return last


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER on, 0 s), as a host with nothing listening would answer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
