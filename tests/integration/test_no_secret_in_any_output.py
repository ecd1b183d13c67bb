"""No output shows a secret: the service, `check`, `config`, `dlq inspect`, `dlq replay` and `produce`, run with
known secrets in every supported form, over the SASL_SSL broker and a PostgreSQL sink.

The secrets: the SASL password; secret KAFKA_EXTRA properties; SINK_URL passwords with `"`, `\\`, `@`, `/`,
non-ASCII and `%` (percent-encoded in the URL), with an empty user and as `?password=`; a password file;
SCHEMA_REGISTRY_USER_INFO and the same credentials in SCHEMA_REGISTRY_URL (a registry that requires them). Every
output (stdout, stderr, the service's log lines, /status, /metrics, /healthz, /readyz, the dead-letter headers)
is searched for each secret as written, percent-encoded (both styles) and JSON-escaped (ASCII and UTF-8).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from support.cli import run_cli
from support.fake_registry import FakeSchemaRegistry
from support.kafka import Msg, TopicWriter, create_topic, read_all
from support.runs import assert_one_row_per_key, service_env, valid_messages, wait_committed, wait_metric
from support.service import ServiceProcess

from ops.testbed.kafka import SaslSslAccess

StartService = Callable[..., ServiceProcess]

PARTITIONS, VALID, POISON = 2, 120, 3
# Each secret carries what encoders escape and URLs must quote, and a tag that occurs nowhere else.
KEY_PASSWORD = 'k"ey\\pw-é-7f3a'  # KAFKA_EXTRA__SSL_KEY_PASSWORD
OAUTH_SECRET = "oauth-Secret-91c2"  # KAFKA_EXTRA__SASL_OAUTHBEARER_CLIENT_SECRET
URL_PASSWORD = 'u"rl\\pw@é/%-4d1e'  # SINK_URL user:password@
FILE_PASSWORD = 'f"ile\\pw@ü-8b0c'  # SINK_PASSWORD_FILE
QUERY_PASSWORD = 'q"uery\\pw&é=-2c7d'  # SINK_URL ?password=
EMPTY_USER_PASSWORD = 'e"mpty\\pw@ß-5e9f'  # SINK_URL :password@
REGISTRY_PASSWORD = 'r"eg\\pw:é-6a2b'  # SCHEMA_REGISTRY_USER_INFO / SCHEMA_REGISTRY_URL
WRONG_REGISTRY_PASSWORD = "wrong-reg-pw-3f8e"
SECRETS = (KEY_PASSWORD, OAUTH_SECRET, URL_PASSWORD, FILE_PASSWORD, QUERY_PASSWORD, EMPTY_USER_PASSWORD,
           REGISTRY_PASSWORD, WRONG_REGISTRY_PASSWORD)


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]}


def assert_no_secret(secrets: Iterable[str], outputs: dict[str, str]) -> None:
    leaks = [f"{form!r} (of {secret!r}) in {where}: ...{text[max(0, text.find(form) - 120):text.find(form) + 60]}..."
             for secret in secrets for form in forms(secret) for where, text in outputs.items() if form in text]
    assert not leaks, "\n".join(leaks)


def outputs_of(name: str, done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return {f"{name} stdout": done.stdout, f"{name} stderr": done.stderr}


def sink_url(postgres_url: str, password: str | None = None, user: str = "postgres", query: str = "") -> str:
    """The run's PostgreSQL (trust authentication: any password is accepted, so each form can be used)."""
    url = sa.make_url(postgres_url)
    userinfo = user + (f":{quote(password, safe='')}" if password is not None else "")
    return f"{url.drivername}://{userinfo}@{url.host}:{url.port}/{url.database}{query}"


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry() as served:
        served.require_basic_auth(f"reader:{REGISTRY_PASSWORD}")
        yield served


@pytest.fixture
def secret_env(
    sasl_ssl_kafka: SaslSslAccess, postgres_url: str, unique: Callable[[str], str], tmp_path: Path,
) -> tuple[dict[str, str], TopicWriter, str]:
    """Settings holding every kind of secret, a topic with VALID events and POISON undecodable values, the table."""
    access = sasl_ssl_kafka
    topic = create_topic(access.admin_bootstrap, unique("secrets"), PARTITIONS)
    create_topic(access.admin_bootstrap, f"{topic}.dlq", 1)
    writer = TopicWriter(access.admin_bootstrap, topic)
    writer.send(valid_messages(range(VALID), keyed=True))
    writer.send([Msg(value=b"\x00\x01 not avro", partition=i % PARTITIONS) for i in range(POISON)])
    password_file = tmp_path / "sink-password"
    password_file.write_text(FILE_PASSWORD + "\n", encoding="utf-8")
    table = f"secrets_{unique('t').split('-')[1]}"
    env = {
        **service_env(access.bootstrap, topic, unique("group"), sink_url(postgres_url, URL_PASSWORD), table),
        **access.service_env(),
        "KAFKA_EXTRA__SSL_KEY_PASSWORD": KEY_PASSWORD,
        "KAFKA_EXTRA__SASL_OAUTHBEARER_CLIENT_SECRET": OAUTH_SECRET,
        "SINK_PASSWORD_FILE": str(password_file),
        "SCHEMA_REGISTRY_USER_INFO": f"reader:{REGISTRY_PASSWORD}",
        "LOG_FORMAT": "json",
    }
    return env, writer, table


def test_the_service_and_every_tool_show_no_secret(
    sasl_ssl_kafka: SaslSslAccess, secret_env: tuple[dict[str, str], TopicWriter, str], postgres_url: str,
    registry: FakeSchemaRegistry, service: StartService, tmp_path: Path,
) -> None:
    access, (env, writer, table) = sasl_ssl_kafka, secret_env
    secrets = (*SECRETS, access.password)
    outputs: dict[str, str] = {}

    svc = service(env)
    wait_committed(access.admin_bootstrap, env["CONSUMER_GROUP_ID"], writer, [svc])
    wait_metric(svc, "dlq", POISON)
    for path in ("/status", "/metrics", "/healthz", "/readyz"):
        outputs[path] = svc.http_get(path)[1]
    assert svc.terminate() == 0
    outputs["service log"] = svc.log_text()
    assert_one_row_per_key(sink_url(postgres_url), table, VALID)  # the secrets were used, not just carried
    letters = read_all(access.admin_bootstrap, f"{writer.topic}.dlq", POISON)
    outputs["dead-letter headers"] = "\n".join(
        f"{name}={value.decode(errors='replace')}" for m in letters for name, value in m.headers.items())
    status = json.loads(outputs["/status"])["settings"]
    assert status["KAFKA_EXTRA"]["ssl_key_password"] == "***" and status["SCHEMA_REGISTRY_USER_INFO"] == "***"

    with_registry = {**env, "SCHEMA_REGISTRY_URL": registry.url}
    host = registry.url.removeprefix("http://")
    registry_in_url = {**env, "SCHEMA_REGISTRY_URL": f"http://reader:{quote(REGISTRY_PASSWORD, safe='')}@{host}"}
    del registry_in_url["SCHEMA_REGISTRY_USER_INFO"]
    wrong_registry = {**registry_in_url, "SCHEMA_REGISTRY_URL": f"http://reader:{WRONG_REGISTRY_PASSWORD}@{host}"}
    registry_only = {name: value for name, value in wrong_registry.items() if name != "SCHEMA_FILE"}
    empty_user = {**env, "SINK_URL": sink_url(postgres_url, EMPTY_USER_PASSWORD, user="")}
    del empty_user["SINK_PASSWORD_FILE"]
    in_query = {**env, "SINK_URL": sink_url(postgres_url, query=f"?password={quote(QUERY_PASSWORD, safe='')}")}
    del in_query["SINK_PASSWORD_FILE"]
    # a URL the driver cannot parse: its error message is where a URL (and its password) gets quoted
    bad_port = {**env, "SINK_URL": f"postgresql+psycopg://postgres:{quote(URL_PASSWORD, safe='')}@db:port/x"}
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("check", ["check"], with_registry),
        ("check registry in url", ["check"], registry_in_url),
        ("check wrong registry password", ["check"], wrong_registry),
        ("run with refused registry credentials", ["run"], registry_only),  # the latest schema, at start
        ("check empty user", ["check"], empty_user),
        ("check ?password=", ["check"], in_query),
        ("check bad url", ["check"], bad_port),
        ("run with a malformed url", ["run"], {**env, "SINK_URL": f"postgresql:/postgres:{URL_PASSWORD}@db/x"}),
        ("config", ["config"], with_registry),
        ("config json", ["config", "--format", "json"], registry_in_url),
        ("config ?password=", ["config", "--format", "json"], in_query),
        ("dlq inspect", ["dlq", "inspect"], env),
        ("dlq inspect json", ["dlq", "inspect", "--format", "json"], env),
        ("dlq replay", ["dlq", "replay", "--format", "json"], env),
        ("produce", ["produce", "--count", "20", "--poison-ratio", "0.1"], env),
    ]
    done = {name: run_cli(args, run_env, tmp_path / "cli") for name, args, run_env in runs}
    for name, finished in done.items():
        outputs.update(outputs_of(name, finished))

    assert done["check"].returncode == 0, done["check"].stdout + done["check"].stderr
    assert done["run with a malformed url"].returncode == 2 and "SINK_URL" in done["run with a malformed url"].stderr
    assert "ok    schema registry" in done["check registry in url"].stdout
    refused = done["check wrong registry password"]
    assert refused.returncode == 2 and "FAIL  schema registry: SCHEMA_REGISTRY_USER_INFO/SCHEMA_REGISTRY_URL: " \
        "the schema registry refused the credentials (401)" in refused.stdout, refused.stdout
    assert json.loads(done["config json"].stdout)["settings"]["SCHEMA_REGISTRY_URL"]["value"].startswith(
        "http://reader:***@")
    refused_run = done["run with refused registry credentials"]
    assert refused_run.returncode == 2 and "the schema registry refused the credentials (401)" in refused_run.stderr
    replayed = json.loads(done["dlq replay"].stdout)
    assert replayed["replayed"] == POISON, done["dlq replay"].stdout
    assert done["produce"].returncode == 0, done["produce"].stderr
    assert_no_secret(secrets, outputs)
