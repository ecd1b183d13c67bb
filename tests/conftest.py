"""Shared fixtures: one broker and one PostgreSQL per run, fresh names per test, the service as a process.

Support code lives in `tests/support` (imported as `support`, since pytest puts `tests/` on sys.path for
this conftest). Tests under tests/integration are marked `integration` here, so `-m "not integration"`
runs the fast suite without each file repeating the marker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import services
from support.db import drop_table
from support.fake_registry import FakeSchemaRegistry
from support.kafka import create_topic
from support.real_registry import RealSchemaRegistry, RegistryUnderTest, run_registry
from support.service import ServiceProcess
from support.services import TcpProxy

from ops.testbed.kafka import SaslSslAccess

INTEGRATION_DIR = Path(__file__).parent / "integration"

StartService = Callable[..., ServiceProcess]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the services a failed test started to its report: the first thing one reads."""
    report = yield
    started = getattr(item, "funcargs", {}).get("running_services", [])
    if report.failed:
        for process in started:
            report.sections.append((f"service log {process.log_path}", process.log_tail()))
    return report


# --- run-wide dependencies ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def run_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.RunBroker]:
    """The run's broker (see support.services.kafka_bootstrap for the order tried)."""
    with services.kafka_bootstrap(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(run_broker: services.RunBroker) -> str:
    """Bootstrap servers of the run's broker (its plaintext listener)."""
    return run_broker.bootstrap


@pytest.fixture(scope="session")
def sasl_ssl_kafka(run_broker: services.RunBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslSslAccess]:
    """The SASL_SSL listener (SCRAM-SHA-512 over TLS) of the run's local Apache Kafka, or of one started for
    these tests when the run's broker is not ours; its plaintext listener is the same broker's."""
    if run_broker.local is not None:
        yield run_broker.local.sasl_ssl
        return
    with services.local_kafka(tmp_path_factory.mktemp("kafka-sasl"), sasl_ssl=True) as broker:
        yield broker.sasl_ssl


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL of the run's PostgreSQL (see support.services.postgres_url)."""
    with services.postgres_url(tmp_path_factory.mktemp("postgres")) as url:
        yield url


# --- per-test names and resources --------------------------------------------------------------------


@pytest.fixture
def unique() -> Callable[[str], str]:
    """`unique("orders")` -> "orders-1a2b3c4d": topics and groups no other test (or earlier run) uses."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> Callable[..., str]:
    """`make_topic(partitions=3, prefix="topic")` creates a fresh topic and waits for its leaders."""

    def make(partitions: int = 3, prefix: str = "topic") -> str:
        return create_topic(kafka_bootstrap, unique(prefix), partitions)

    return make


@pytest.fixture
def topic(make_topic: Callable[..., str]) -> str:
    """A fresh 3-partition topic."""
    return make_topic()


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The sink database: every test using it runs on SQLite and on PostgreSQL.

    Narrow it with `@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)`. PostgreSQL is
    requested lazily so the SQLite variant still runs where no PostgreSQL is available.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sink.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    raise ValueError(f"unknown sink backend {request.param!r}")


@pytest.fixture
def sink_table(sink_url: str, running_services: list[ServiceProcess]) -> Iterator[str]:
    """A fresh table name for `SINK_TABLE`, dropped afterwards (PostgreSQL is shared by the whole run).

    The teardown first kills services the test left running: one still holding a transaction on the table
    would make DROP TABLE wait. Underscores, not hyphens, so the name needs no quoting in hand-written SQL.
    """
    name = f"events_{uuid.uuid4().hex[:8]}"
    yield name
    _kill_all(running_services)
    if sa.make_url(sink_url).get_backend_name() != "sqlite":
        drop_table(sink_url, name)


@pytest.fixture(scope="session")
def registry_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The run's real schema registry (see support.real_registry.run_registry), or None to use the fake."""
    with run_registry(tmp_path_factory.mktemp("registry")) as url:
        yield url


@pytest.fixture
def schema_registry(registry_base_url: str | None) -> Iterator[RegistryUnderTest]:
    """A Confluent-compatible registry for one test: the run's real one behind a proxy of the test's own,
    else a fresh fake; pass `.url` as SCHEMA_REGISTRY_URL, `set_available(False)` for an outage."""
    registry = RealSchemaRegistry(registry_base_url) if registry_base_url else FakeSchemaRegistry()
    with registry:
        yield registry


@pytest.fixture
def fake_schema_registry() -> Iterator[FakeSchemaRegistry]:
    """Always the fake: for tests of the fake itself (exact bodies, its `requests` log)."""
    with FakeSchemaRegistry() as registry:
        yield registry


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the run's PostgreSQL; build the URL with support.db.via_proxy(url, proxy.port)."""
    url = sa.make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


# --- the service under test --------------------------------------------------------------------------


@pytest.fixture
def running_services() -> Iterator[list[ServiceProcess]]:
    """Every ServiceProcess a test started; any still running at teardown is killed.

    pytest_runtest_makereport reads this list to attach their logs to a failure report.
    """
    started: list[ServiceProcess] = []
    yield started
    _kill_all(started)


@pytest.fixture
def service(tmp_path: Path, running_services: list[ServiceProcess]) -> StartService:
    """`service(env, args=("run",), workdir=None)` starts the service (workdir defaults to tmp_path/"service").

    Several starts in one test share the workdir and get service-1.log, service-2.log, ...
    """

    def start(
        env: Mapping[str, str], args: Sequence[str] = ("run",), workdir: Path | None = None
    ) -> ServiceProcess:
        process = ServiceProcess.start(env, workdir or tmp_path / "service", args)
        running_services.append(process)
        return process

    return start


def _kill_all(processes: list[ServiceProcess]) -> None:
    for process in processes:
        if process.running:
            process.kill()
