"""Configuration mistakes at start, as real processes: `check` refuses exactly what `run` refuses (the same
validation code), with the same one line naming the setting and exit 2; a database that refuses us at start
(no such database, authentication failed, no CREATE privilege) is a configuration error naming SINK_URL;
an unsupported SINK_URL names the supported databases; `check` prints what it checked; a SINK_URL left at
its SQLite default is a WARNING; a closed pipe ends a command quietly. No output holds a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.cli import run_cli
from support.db import connect
from support.runs import service_env
from support.service import BASE_ENV, ServiceProcess
from support.waiting import wait_until

_NO_BROKER = "127.0.0.1:9"  # validation happens before any broker is reached
_BOTH = [["run"], ["check"]]


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        ({"KAFKA_EXTRA__NO_SUCH_PROPERTY": "1"},
         'configuration error: KAFKA_EXTRA__NO_SUCH_PROPERTY: No such configuration property: "no.such.property"'),
        ({"KAFKA_EXTRA__FETCH_WAIT_MAX_MS": "soon"},
         ('configuration error: KAFKA_EXTRA__FETCH_WAIT_MAX_MS: Invalid value for configuration property '
         '"fetch.wait.max.ms"')),
        ({"KAFKA_EXTRA__ENABLE_IDEMPOTENCE": "true", "KAFKA_EXTRA__ACKS": "1"},
         ("configuration error: KAFKA_EXTRA: Failed to create admin client: `acks` must be set to `all` when "
         "`enable.idempotence` is true")),
        ({"IDEMPOTENCY_KEY": "field:no_such_field"}, "configuration error: IDEMPOTENCY_KEY"),
        ({"SINK_URL": "mysql://user:pw@db/warehouse"},
         "configuration error: SINK_URL: unsupported database 'mysql'; supported: PostgreSQL"),
        ({"SINK_URL": "postgress://user@db/warehouse"},
         "configuration error: SINK_URL: unsupported database 'postgress'; supported: PostgreSQL"),
        ({"SINK_URL": "sqlite:////proc/no_such_folder/sink.db"}, "configuration error: SINK_URL: [Errno"),
    ],
    ids=["unknown-property", "bad-value", "conflicting-properties", "key-not-in-schema", "mysql", "typo",
         "sqlite-folder"],
)
def test_check_and_run_refuse_the_same_settings_with_the_same_line(
    tmp_path: Path, bad: dict[str, str], line: str
) -> None:
    env = service_env(_NO_BROKER, "events", "g", f"sqlite:///{tmp_path}/sink.db", "events", **bad)
    lines = []
    for command in _BOTH:
        done = run_cli(command, env, tmp_path / command[0])
        assert done.returncode == 2, done.stdout + done.stderr
        lines.append(_last_line(done))
    assert lines[0] == lines[1]
    assert lines[0].startswith(line)


@pytest.fixture
def role(postgres_url: str) -> Iterator[str]:
    """A login role that may use the database but not create anything in `public`."""
    name = f"mbc_{uuid.uuid4().hex[:8]}"
    with connect(postgres_url) as conn:
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
    yield name
    with connect(postgres_url) as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {name}")
        conn.exec_driver_sql(f"DROP ROLE {name}")


def _as(url: str, **parts: str) -> str:
    return sa.make_url(url).set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("refusal", ["no-database", "no-role", "nologin-role", "no-create-privilege"])
@pytest.mark.parametrize("command", _BOTH)
def test_a_database_refusing_us_at_start_is_one_line_naming_sink_url_and_exit_2(
    kafka_bootstrap: str, make_topic: Callable[..., str], postgres_url: str, role: str, tmp_path: Path,
    refusal: str, command: list[str],
) -> None:
    if refusal == "nologin-role":
        with connect(postgres_url) as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} NOLOGIN")
    url = {
        "no-database": _as(postgres_url, database=f"nosuch_{uuid.uuid4().hex[:6]}"),
        "no-role": _as(postgres_url, username=f"nobody_{uuid.uuid4().hex[:6]}"),
        "nologin-role": _as(postgres_url, username=role),
        "no-create-privilege": _as(postgres_url, username=role),
    }[refusal]
    expected = {
        "no-database": "SQLSTATE 3D000", "no-role": "SQLSTATE 28000", "nologin-role": "SQLSTATE 28000",
        "no-create-privilege": "no CREATE privilege on schema 'public'",
    }[refusal]
    topic = make_topic(partitions=1)
    done = run_cli(command, service_env(kafka_bootstrap, topic, "g", url, "events_refused"), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert expected in output
    refused = [line for line in output.splitlines() if "SINK_URL: " in line]
    assert refused, output
    if command == ["run"]:
        assert _last_line(done).startswith("configuration error: SINK_URL: ")
    else:
        assert done.stdout.splitlines()[-1].startswith("FAIL  sink ")


@pytest.fixture
def password_role(postgres_url: str) -> Iterator[str]:
    """A role whose TCP logins must give its password (scram-sha-256): a pg_hba.conf line for it alone, put
    first (the run's cluster trusts everyone else) and taken out afterwards."""
    name = f"mbc_pw_{uuid.uuid4().hex[:8]}"
    rule = f"host all {name} 0.0.0.0/0 scram-sha-256\n"
    with connect(postgres_url) as conn:
        hba = Path(conn.exec_driver_sql("SHOW hba_file").scalar_one())
        if not hba.is_file() or not os.access(hba, os.W_OK):
            pytest.skip(f"cannot require a password for one role: {hba} is not ours to edit")
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD 'the-right-one'")
        hba.write_text(rule + hba.read_text())
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    wrong = _as(postgres_url, username=name, password="not-the-right-one")
    wait_until(lambda: _refused(wrong), 30, "the server asking the role for its password")
    yield name
    hba.write_text(hba.read_text().replace(rule, ""))
    with connect(postgres_url) as conn:
        conn.exec_driver_sql("SELECT pg_reload_conf()")
        conn.exec_driver_sql(f"DROP ROLE {name}")


def _refused(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        engine.connect().close()
        return False
    except sa.exc.OperationalError:
        return True
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", _BOTH)
def test_a_wrong_database_password_at_start_is_one_line_naming_sink_url_and_exit_2(
    kafka_bootstrap: str, make_topic: Callable[..., str], postgres_url: str, password_role: str, tmp_path: Path,
    command: list[str],
) -> None:
    url = _as(postgres_url, username=password_role, password="not-the-right-one")
    topic = make_topic(partitions=1)
    done = run_cli(command, service_env(kafka_bootstrap, topic, "g", url, "events_pw"), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "not-the-right-one" not in output
    assert "password authentication failed" in output and "SQLSTATE 28P01" in output
    line = _last_line(done) if command == ["run"] else done.stdout.splitlines()[-1]
    assert line.startswith("configuration error: SINK_URL: " if command == ["run"] else "FAIL  sink ")


@pytest.mark.parametrize("sink_url", ["postgresql"], indirect=True)
def test_check_prints_brokers_topics_dead_letter_topic_masked_sink_and_table(
    kafka_bootstrap: str, make_topic: Callable[..., str], sink_url: str, sink_table: str, tmp_path: Path,
) -> None:
    topic = make_topic(partitions=3)
    with_password = _as(sink_url, password="pw-Secret-55")  # trust authentication ignores it
    done = run_cli(["check"], service_env(kafka_bootstrap, topic, "g", with_password, sink_table), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"ok    brokers {kafka_bootstrap}: 1 broker answer" in out
    assert f"ok    topic {topic}: 3 partitions" in out
    assert f"ok    dead-letter topic {topic}.dlq: missing; `run` creates it with the partitions of {topic}" in out
    masked = sink_url.replace("postgres@", "postgres:***@")
    assert f"ok    sink {masked}: answers; table {sink_table} missing; created at start" in out
    assert "pw-Secret-55" not in out + done.stderr
    assert "WARNING" not in done.stderr


def test_a_sink_url_left_at_its_default_is_a_warning_in_check_and_run(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
    service: Callable[..., ServiceProcess],
) -> None:
    topic = make_topic(partitions=1)
    env = service_env(kafka_bootstrap, topic, "g", "unused", "events")
    del env["SINK_URL"]
    warning = "SINK_URL is not set: writing to the default SQLite database sqlite:///./data/sink.db"
    checked = run_cli(["check"], env, tmp_path / "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert warning in checked.stderr
    svc = service(env)
    wait_until(lambda: warning in svc.log_text(), 60, "the default SINK_URL warning")
    assert svc.terminate() == 0


@pytest.mark.parametrize("command", [["config"], ["config", "--format", "json"]])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path: Path, command: list[str]) -> None:
    """`consumer config | head -1` with the reader gone before the first line: no traceback, no second one
    from the interpreter's last flush."""
    env = {**BASE_ENV, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "CONSUMER_TOPICS": "events", "VALUE_FORMAT": "json", "SINK_URL": f"sqlite:///{tmp_path}/s.db"}
    process = subprocess.Popen([sys.executable, "-m", "consumer", *command], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # long before the interpreter has imported the package and printed anything
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 1
    assert stderr == ""
