"""SASL/SCRAM-SHA-512 over TLS against Apache Kafka: the service, `check`, the dlq tools and `produce`.

The run's local broker has a SASL_SSL listener whose certificate comes from a CA made for the run and a
SCRAM user made by Kafka's own `kafka-storage format --add-scram` (ops/testbed/kafka.py); the tests' own topic
work goes through the same broker's plaintext listener. A wrong password or an untrusted CA is a
configuration error at start: one line naming the setting, exit 2, no traceback; the password is in no output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_cli, run_json
from support.events import encode, make_event
from support.kafka import Msg, TopicWriter, create_topic, read_all
from support.runs import assert_one_row_per_key, service_env, valid_messages, wait_committed, wait_metric
from support.service import ServiceProcess

from ops.testbed.kafka import SaslSslAccess
from ops.testbed.tls import make_ca_file

StartService = Callable[..., ServiceProcess]

PARTITIONS = 2
VALID, POISON = 300, 3


def _secure_env(access: SaslSslAccess, topic: str, group: str, sink_url: str, sink_table: str) -> dict[str, str]:
    """The service's settings with the broker reached only through the SASL_SSL listener."""
    return {**service_env(access.bootstrap, topic, group, sink_url, sink_table), **access.service_env()}


def _assert_secret_absent(secret: str, *outputs: str) -> None:
    for output in outputs:
        assert secret not in output, f"the password leaked into: {output[:500]}"


@pytest.fixture
def secure_topic(sasl_ssl_kafka: SaslSslAccess, unique: Callable[[str], str]) -> TopicWriter:
    """A topic with VALID events and POISON undecodable values, written over the plaintext listener."""
    topic = create_topic(sasl_ssl_kafka.admin_bootstrap, unique("secure"), PARTITIONS)
    create_topic(sasl_ssl_kafka.admin_bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(sasl_ssl_kafka.admin_bootstrap, topic)
    writer.send(valid_messages(range(VALID), keyed=True))
    writer.send([Msg(value=b"\x00\x01 not avro", partition=i % PARTITIONS) for i in range(POISON)])
    return writer


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_the_service_consumes_commits_and_dead_letters_over_sasl_ssl_without_showing_the_password(
    sasl_ssl_kafka: SaslSslAccess, secure_topic: TopicWriter, unique: Callable[[str], str],
    sink_url: str, sink_table: str, service: StartService,
) -> None:
    access, writer = sasl_ssl_kafka, secure_topic
    group = unique("group")
    svc = service(_secure_env(access, writer.topic, group, sink_url, sink_table))
    wait_committed(access.admin_bootstrap, group, writer, [svc])
    wait_metric(svc, "sunk", VALID)
    assert_one_row_per_key(sink_url, sink_table, VALID)
    letters = read_all(access.admin_bootstrap, f"{writer.topic}.dlq", POISON)
    assert len(letters) == POISON and {m.headers["dlq.stage"] for m in letters} == {b"decode"}

    outputs = [svc.http_get(path)[1] for path in ("/status", "/metrics", "/healthz", "/readyz")]
    assert svc.terminate() == 0
    _assert_secret_absent(access.password, svc.log_text(), *outputs,
                          *(value.decode(errors="replace") for m in letters for value in m.headers.values()))


def test_check_produce_and_the_dlq_tools_work_over_sasl_ssl(
    sasl_ssl_kafka: SaslSslAccess, unique: Callable[[str], str], tmp_path: Path,
) -> None:
    access = sasl_ssl_kafka
    topic = create_topic(access.admin_bootstrap, unique("secure"), PARTITIONS)
    env = _secure_env(access, topic, unique("group"), f"sqlite:///{tmp_path}/sink.db", "events")

    checked = run_cli(["check"], env, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ok    topic {topic}: {PARTITIONS} partitions" in checked.stdout

    produced = run_json(["produce", "--count", "200", "--poison-ratio", "0"], env, tmp_path)
    assert sum(produced["end_offsets"].values()) == 200
    assert len(read_all(access.admin_bootstrap, topic, 200)) == 200

    dlq = create_topic(access.admin_bootstrap, f"{topic}.dlq", 1)
    TopicWriter(access.admin_bootstrap, dlq).send([Msg(value=encode(make_event(1)))])  # a foreign record
    inspected = run_json(["dlq", "inspect"], env, tmp_path)
    assert (inspected["summary"]["scanned"], inspected["summary"]["foreign"]) == (1, 1)
    replayed = run_json(["dlq", "replay", "--dry-run"], env, tmp_path)
    assert replayed["replayed"] == 0

    _assert_secret_absent(access.password, checked.stdout, checked.stderr, json.dumps(produced),
                          json.dumps(inspected), json.dumps(replayed))


@pytest.mark.parametrize("command", [["run"], ["check"], ["dlq", "inspect"], ["produce", "--count", "1"]])
def test_a_wrong_password_is_one_line_naming_the_setting_and_exit_2(
    sasl_ssl_kafka: SaslSslAccess, secure_topic: TopicWriter, tmp_path: Path, command: list[str],
) -> None:
    wrong = "not-the-password-" + sasl_ssl_kafka.password[:4]
    env = {**_secure_env(sasl_ssl_kafka, secure_topic.topic, "g", f"sqlite:///{tmp_path}/s.db", "events"),
           "KAFKA_SASL_PASSWORD": wrong}
    done = run_cli(command, env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: the broker refused the credentials" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    _assert_secret_absent(wrong, done.stdout, done.stderr)
    _assert_secret_absent(sasl_ssl_kafka.password, done.stdout, done.stderr)


@pytest.mark.parametrize("command", [["run"], ["check"], ["dlq", "inspect"], ["produce", "--count", "1"]])
def test_an_untrusted_broker_certificate_is_one_line_naming_the_ca_setting_and_exit_2(
    sasl_ssl_kafka: SaslSslAccess, secure_topic: TopicWriter, tmp_path: Path, command: list[str],
) -> None:
    env = {**_secure_env(sasl_ssl_kafka, secure_topic.topic, "g", f"sqlite:///{tmp_path}/s.db", "events"),
           "KAFKA_SSL_CA_LOCATION": str(make_ca_file(tmp_path / "other-ca.pem"))}
    done = run_cli(command, env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "KAFKA_SSL_CA_LOCATION: TLS with the broker failed" in done.stdout + done.stderr
    assert "certificate verify failed" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

