"""TLS to PostgreSQL: `sslmode=verify-full` against a server whose certificate comes from a CA made for the test.

The private cluster (ops/testbed/postgres.py with `tls=`) accepts TCP clients only over TLS (pg_hba
`hostssl`), so rows that land came over an encrypted, verified connection; a CA that did not sign the server's
certificate is refused before any row is written: exit 2, one line naming SINK_URL (libpq gives no SQLSTATE
for it, so consumer/sql/tls.py repeats the handshake to tell it from an outage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import services
from support.cli import run_cli
from support.runs import assert_one_row_per_key, service_env, setup_topic, valid_messages, wait_committed
from support.service import ServiceProcess

from ops.testbed.postgres import PostgresCluster
from ops.testbed.tls import ServerTls, make_ca_file, make_server_tls

StartService = Callable[..., ServiceProcess]
EVENTS = 200


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return make_server_tls(tmp_path_factory.mktemp("pg-tls"), common_name="postgres")


@pytest.fixture(scope="module")
def tls_postgres(server_tls: ServerTls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    with services.private_postgres_cluster(tmp_path_factory.mktemp("pg-tls-log"), tls=server_tls) as cluster:
        yield cluster


def verified_url(cluster: PostgresCluster, ca_file: Path) -> str:
    """The cluster's URL by host name (verify-full checks it against the certificate) with the CA to trust."""
    return (f"postgresql+psycopg://postgres@localhost:{cluster.port}/{cluster.database}"
            f"?sslmode=verify-full&sslrootcert={ca_file}")


def test_rows_land_over_verify_full_tls(
    tls_postgres: PostgresCluster, server_tls: ServerTls, kafka_bootstrap: str, make_topic: Callable[..., str],
    unique: Callable[[str], str], service: StartService,
) -> None:
    url = verified_url(tls_postgres, server_tls.ca_file)
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=2)
    writer.send(valid_messages(range(EVENTS)))
    group = unique("group")
    svc = service(service_env(kafka_bootstrap, topic, group, url, "tls_events"))
    wait_committed(kafka_bootstrap, group, writer, [svc])
    assert svc.terminate() == 0
    assert_one_row_per_key(url, "tls_events", EVENTS)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:  # our own session is encrypted, as every session the server accepts
            assert conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    finally:
        engine.dispose()


def test_sink_ssl_ca_location_alone_verifies_in_full(
    tls_postgres: PostgresCluster, server_tls: ServerTls, kafka_bootstrap: str, make_topic: Callable[..., str],
    unique: Callable[[str], str], service: StartService, tmp_path: Path,
) -> None:
    """The chart's way (`secrets.sinkCa` mounted as SINK_SSL_CA_LOCATION): a plain URL, the CA file beside it;
    the CA of another authority is refused exactly as `sslrootcert` in the URL is."""
    plain = f"postgresql+psycopg://postgres@localhost:{tls_postgres.port}/{tls_postgres.database}"
    topic, writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    writer.send(valid_messages(range(EVENTS)))
    refused = run_cli(["check"], {**service_env(kafka_bootstrap, topic, "g", plain, "ca_events"),
                                  "SINK_SSL_CA_LOCATION": str(make_ca_file(tmp_path / "other-ca.pem"))}, tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "SINK_URL: TLS with the database failed: certificate verify failed" in refused.stdout + refused.stderr
    group = unique("group")
    svc = service({**service_env(kafka_bootstrap, topic, group, plain, "ca_events"),
                   "SINK_SSL_CA_LOCATION": str(server_tls.ca_file)})
    wait_committed(kafka_bootstrap, group, writer, [svc])
    assert svc.terminate() == 0
    assert_one_row_per_key(verified_url(tls_postgres, server_tls.ca_file), "ca_events", EVENTS)


def test_the_server_refuses_clients_without_tls(tls_postgres: PostgresCluster) -> None:
    engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{tls_postgres.port}/test?sslmode=disable")
    try:
        with pytest.raises(sa.exc.OperationalError, match="no encryption"):
            engine.connect().close()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["run"], ["check"]])
def test_a_database_certificate_the_ca_did_not_sign_is_one_line_naming_sink_url_and_exit_2(
    tls_postgres: PostgresCluster, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
    command: list[str],
) -> None:
    url = verified_url(tls_postgres, make_ca_file(tmp_path / "other-ca.pem"))
    topic, _writer = setup_topic(kafka_bootstrap, make_topic, partitions=1)
    done = run_cli(command, service_env(kafka_bootstrap, topic, "g", url, "events"), tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "SINK_URL: TLS with the database failed: certificate verify failed" in output
    assert "Traceback" not in output
