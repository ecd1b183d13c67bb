"""Shared pieces of tests/deploy: where things are, the contract's setting names, the chart's renders, and
the rule for a validator that is missing (skip here, fail where CI sets REQUIRE_DEPLOY_TOOLS=1)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "microbatch-consumer"
OPS = ROOT / "ops"
RULES_DIR = OPS / "prometheus" / "rules"
DASHBOARDS_DIR = OPS / "grafana" / "dashboards"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BUILD = ROOT / "build"

RELEASE, NAMESPACE = "mbc", "microbatch"
OLDEST_KUBERNETES, NEWEST_KUBERNETES = "1.25.0", "1.37.0"  # Chart.yaml kubeVersion >=1.25; newest schemas shipped

# Settings of the service beyond the contract's table that the chart or compose may set: each is a `Settings`
# field documented in docs/configuration.md (test_settings_beyond_the_contract_are_real_documented_settings
# checks it).
EXTRA_SETTINGS = frozenset({"WORKERS", "KAFKA_GROUP_INSTANCE_ID", "KAFKA_GROUP_PROTOCOL", "LOG_SUMMARY_INTERVAL_S"})
# Set by the chart itself from other values, so not accepted under `env`.
CHART_OWNED = frozenset({"METRICS_PORT", "SCHEMA_FILE", "SINK_PASSWORD_FILE", "KAFKA_SSL_CA_LOCATION",
                         "KAFKA_SASL_PASSWORD", "KAFKA_GROUP_INSTANCE_ID", "SINK_SSL_CA_LOCATION",
                         "SCHEMA_REGISTRY_USER_INFO"})
KAFKA_EXTRA = re.compile(r"^KAFKA_EXTRA__[A-Z0-9_]+$")


def require(available: bool, reason: str) -> None:
    """Skip the test when a validator is missing, or fail it where CI demands every deploy tool."""
    if available:
        return
    if os.environ.get("REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(f"{reason} (REQUIRE_DEPLOY_TOOLS=1)")
    pytest.skip(reason)


def fail_or_skip(reason: str) -> NoReturn:
    require(False, reason)
    raise AssertionError("unreachable")


def venv_tool(name: str) -> str | None:
    """A console script installed beside this interpreter (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


# --- the contract ------------------------------------------------------------------------------------------


def is_service_setting(name: str, contract: frozenset[str]) -> bool:
    return name in contract or name in EXTRA_SETTINGS or bool(KAFKA_EXTRA.match(name))


# --- the chart ---------------------------------------------------------------------------------------------

# Every option on: StatefulSet (static membership), KEDA over a SASL_SSL broker with all three Secrets,
# monitoring objects, a NetworkPolicy with peers, an inline schema and a digest-pinned image.
ALL_ON_STATEFULSET_KEDA: dict[str, Any] = {
    "image": {"digest": "sha256:" + "0123456789abcdef" * 4},
    "workload": {"kind": "StatefulSet"},
    "env": {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "consumer", "KAFKA_SESSION_TIMEOUT_MS": 60000, "WORKERS": 2,
        "KAFKA_EXTRA__FETCH_WAIT_MAX_MS": 50, "LOG_LEVEL": "INFO", "DLQ_MAX_RATIO": 0.1,
    },
    "schemaFile": {"content": (ROOT / "schemas" / "event.avsc").read_text(encoding="utf-8")},
    "secrets": {
        "sinkPassword": {"existingSecret": "mbc-sink", "key": "password"},
        "kafkaSaslPassword": {"existingSecret": "mbc-kafka", "key": "sasl-password"},
        "kafkaCa": {"existingSecret": "mbc-kafka-ca", "key": "ca.crt"},
        "sinkCa": {"existingSecret": "mbc-db-ca", "key": "root.crt"},
        "schemaRegistryUserInfo": {"existingSecret": "mbc-registry", "key": "user-info"},
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True},
    "autoscaling": {"keda": {"enabled": True, "partitions": 12, "minReplicaCount": 1, "maxReplicaCount": 6,
                             "lagThreshold": 50000}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "egress": {
            "kafka": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [9093]},
            "database": {"to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}], "ports": [5432]},
            "registry": {"to": [{"podSelector": {"matchLabels": {"app": "registry"}}}], "ports": [8081]},
        },
    },
}
# The other half of "every option": a Deployment scaled by the lag HPA (KEDA and the HPA exclude each other).
ALL_ON_DEPLOYMENT_HPA: dict[str, Any] = {
    **{k: v for k, v in ALL_ON_STATEFULSET_KEDA.items() if k not in ("workload", "autoscaling")},
    "workload": {"kind": "Deployment"},
    "autoscaling": {"hpa": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                            "metricSelector": {"matchLabels": {"topic": "events"}}}},
}
RENDERS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on-statefulset-keda": ALL_ON_STATEFULSET_KEDA,
    "all-on-deployment-hpa": ALL_ON_DEPLOYMENT_HPA,
}


def helm() -> Any:
    try:
        import helm_python
    except ImportError as exc:  # missing package or its shared library
        fail_or_skip(f"helm-python-sdk is not installed ({exc}); `pip install helm-python-sdk`")
    return helm_python


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would give it (schema validation included)."""
    sdk = helm()
    with sdk.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return rendered


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render (NOTES.txt and empty documents left out)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def manifest(rendered: dict[str, str]) -> str:
    return "\n---\n".join(yaml.safe_dump(obj, sort_keys=False) for obj in objects(rendered))


def one(items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matching = [obj for obj in items if obj["kind"] == kind]
    assert len(matching) == 1, f"{len(matching)} {kind} objects"
    return matching[0]


def of_kind(items: list[dict[str, Any]], *kinds: str) -> Iterator[dict[str, Any]]:
    return (obj for obj in items if obj["kind"] in kinds)


def workload(items: list[dict[str, Any]]) -> dict[str, Any]:
    matching = [obj for obj in items if obj["kind"] in ("Deployment", "StatefulSet")]
    assert len(matching) == 1, matching
    return matching[0]


def container(items: list[dict[str, Any]]) -> dict[str, Any]:
    containers = workload(items)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["consumer"]
    return dict(containers[0])
