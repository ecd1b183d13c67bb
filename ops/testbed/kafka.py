"""Apache Kafka itself for the tests and the benchmark: one KRaft node (broker and controller) from Maven jars.

`ensure_jars()` copies the broker's jars from Maven Central into the repository's ignored `build/` folder once
(`mvn dependency:copy-dependencies` on `kafka-pom.xml`, keyed by the pom's digest, so a second run fetches
nothing). `KafkaBroker` formats a data folder with Kafka's own `StorageTool` and runs `kafka.Kafka` on free
ports, with settings that make tests fast without changing what a client sees (no initial rebalance delay,
replication factor 1, short KIP-848 heartbeats). With `sasl_ssl=True` it also opens a SASL_SSL listener
(SCRAM-SHA-512 over TLS with a certificate from a CA made for the run, a user made by `StorageTool format
--add-scram`); the plaintext listener stays for the tests' own admin work.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from .net import free_port
from .process import stop_process
from .tls import ServerTls, make_server_tls

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("kafka-pom.xml")
DEFAULT_CACHE = REPO / "build" / "kafka"
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text()).group(1)  # type: ignore[union-attr]
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "consumer-test"

_MAVEN_TIMEOUT_S = 600.0
_READY_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 20.0
_READY_POLL_S = 0.5
_LOG_TAIL_CHARS = 3000
_JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true")

# Broker settings that change timing, never semantics. Two ask to be explained:
# - offsets.topic.num.partitions 10 (default 50): the first group made in a run creates __consumer_offsets,
#   and 50 partitions take seconds to come online on two cores.
# - KIP-848 groups: the broker owns session and heartbeat; its defaults (45 s, 5 s) would make a test of a
#   lost member wait 45 s, where the classic protocol's tests use a 6 s session.
TEST_BROKER_SETTINGS: Mapping[str, str] = MappingProxyType({
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.min.session.timeout.ms": "1000",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
    "num.partitions": "1",
    "log.segment.bytes": str(64 * 1024 * 1024),
})

_LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


class TestbedError(Exception):
    """A local service could not be fetched or started; the message says why (for a skip or a failure)."""


@dataclass(frozen=True, slots=True)
class SaslSslAccess:
    """How a client reaches the SASL_SSL listener: bootstrap, the CA to trust, the SCRAM user."""

    bootstrap: str
    ca_file: Path
    username: str
    password: str
    admin_bootstrap: str  # the same broker's plaintext listener, for a test's own topic work
    mechanism: str = SCRAM_MECHANISM

    def client_config(self) -> dict[str, str]:
        """librdkafka properties for this listener."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": str(self.ca_file),
        }

    def service_env(self) -> dict[str, str]:
        """The service's settings for this listener (contract names)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": self.mechanism,
            "KAFKA_SASL_USERNAME": self.username,
            "KAFKA_SASL_PASSWORD": self.password,
            "KAFKA_SSL_CA_LOCATION": str(self.ca_file),
        }


def java_binary() -> str:
    """`$JAVA_HOME/bin/java`, else `java` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise TestbedError("no Java: set JAVA_HOME or put java on PATH (Kafka's broker is a JVM program)")
    return found


def ensure_jars(cache_root: Path = DEFAULT_CACHE) -> Path:
    """The folder holding the broker's jars, fetched by Maven on first use; concurrent callers wait for one."""
    pom_text = POM.read_bytes()
    libs = cache_root / hashlib.sha256(pom_text).hexdigest()[:12] / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise TestbedError("no Maven (mvn) to fetch the Kafka jars from Maven Central")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with (libs.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a benchmark and a test run may start side by side
        if done.exists():
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        command = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                   f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S,
                                    cwd=libs.parent, check=False)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"fetching the Kafka jars took over {_MAVEN_TIMEOUT_S:.0f} s") from None
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-_LOG_TAIL_CHARS:]
            raise TestbedError(f"mvn could not fetch the Kafka jars (exit {result.returncode}): {tail}")
        done.touch()
    return libs


class KafkaBroker:
    """One KRaft node in `work_dir`; `start()` formats the data folder the first time, `stop()` keeps it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        sasl_ssl: bool = False,
        settings: Mapping[str, str] | None = None,
        cache_root: Path = DEFAULT_CACHE,
    ) -> None:
        self.work_dir = work_dir
        self.port = port if port is not None else free_port()
        self._advertised_port = advertised_port if advertised_port is not None else self.port
        self._controller_port = free_port()
        self._sasl_port = free_port() if sasl_ssl else None
        self._settings = {**TEST_BROKER_SETTINGS, **(settings or {})}
        self._cache_root = cache_root
        self._process: subprocess.Popen[bytes] | None = None
        self._tls: ServerTls | None = None
        self._scram_password = secrets.token_urlsafe(18) if sasl_ssl else None
        self.log_path = work_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        """The plaintext listener as clients see it (the advertised port)."""
        return f"127.0.0.1:{self._advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.poll() is None else None

    @property
    def sasl_ssl(self) -> SaslSslAccess:
        if self._sasl_port is None or self._tls is None or self._scram_password is None:
            raise TestbedError("this broker was started without sasl_ssl=True")
        return SaslSslAccess(f"localhost:{self._sasl_port}", self._tls.ca_file, SCRAM_USER, self._scram_password,
                             self.bootstrap)

    def start(self) -> None:
        """Start the JVM (formatting first if the data folder is new) and wait until it answers."""
        if self.pid is not None:
            return
        libs = ensure_jars(self._cache_root)
        java = java_binary()
        config = self._write_config()
        if not (self.work_dir / "data" / "meta.properties").exists():
            self._format(java, libs, config)
        command = [java, *_JVM_OPTIONS, f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                   "-cp", f"{libs}/*", "kafka.Kafka", str(config)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.work_dir)
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL if it outlives the grace period; the data stays."""
        process, self._process = self._process, None
        stop_process(process, signal.SIGTERM, _STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a word to its clients."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2)
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self._controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self._advertised_port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self._controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.work_dir / "data"),
            **self._settings,
        }
        if self._sasl_port is not None:
            self._tls = self._tls or make_server_tls(self.work_dir / "tls", "kafka-testbed")
            listeners.append(f"SASL_SSL://localhost:{self._sasl_port}")
            advertised.append(f"SASL_SSL://localhost:{self._sasl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
            lines |= {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(self._tls.chain_and_key_file),
            }
        lines |= {
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
        }
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        return path

    def _format(self, java: str, libs: Path, config: Path) -> None:
        command = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                   "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "--config", str(config),
                   "--cluster-id", _cluster_id(), "--ignore-formatted"]
        if self._scram_password is not None:
            command += ["--add-scram",
                        f"{SCRAM_MECHANISM}=[name={SCRAM_USER},password={self._scram_password}]"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=_READY_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise TestbedError(f"kafka-storage format failed (exit {result.returncode}): "
                               f"{(result.stdout + result.stderr)[-_LOG_TAIL_CHARS:]}")

    def _wait_ready(self) -> None:
        """Until a metadata request on the real port answers (the advertised one may be a cut proxy)."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        client = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}", "log_level": 0})
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process else None
                raise TestbedError(f"Kafka exited with {code} before answering: {self.log_tail()}")
            try:
                metadata = client.list_topics(timeout=_READY_POLL_S * 4)
            except KafkaException:
                metadata = None
            if metadata is not None and metadata.brokers:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"Kafka did not answer within {_READY_TIMEOUT_S:.0f} s: {self.log_tail()}")
            time.sleep(_READY_POLL_S)  # a bounded poll for readiness, not synchronisation of a test


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what `random-uuid` prints),
    never starting with "-", which the tool's argument parser would take for an option (as Kafka's Uuid does)."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


@contextmanager
def kafka_broker(
    work_dir: Path,
    *,
    port: int | None = None,
    advertised_port: int | None = None,
    sasl_ssl: bool = False,
    settings: Mapping[str, str] | None = None,
    cache_root: Path = DEFAULT_CACHE,
) -> Iterator[KafkaBroker]:
    """A started broker, stopped on exit (its data folder is left for the caller's temporary directory)."""
    broker = KafkaBroker(work_dir, port=port, advertised_port=advertised_port, sasl_ssl=sasl_ssl,
                         settings=settings, cache_root=cache_root)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
