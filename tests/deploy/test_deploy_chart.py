"""The Helm chart, linted and rendered offline with Helm's own Go SDK (helm-python-sdk): what the rendered
objects say about probes, settings, secrets, security, shutdown, monitoring, autoscaling and labels, and that
values.schema.json turns a misspelled key or a wrong type into an error."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    ALL_ON_DEPLOYMENT_HPA,
    ALL_ON_STATEFULSET_KEDA,
    CHART,
    CHART_OWNED,
    DASHBOARDS_DIR,
    EXTRA_SETTINGS,
    NAMESPACE,
    NEWEST_KUBERNETES,
    OLDEST_KUBERNETES,
    RELEASE,
    RENDERS,
    ROOT,
    RULES_DIR,
    container,
    helm,
    is_service_setting,
    objects,
    of_kind,
    one,
    render,
    workload,
)
from support.contract import read_contract_settings

from consumer.settings import Settings
from consumer.workers.supervisor import _STOP_MARGIN_S

RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                      "helm.sh/chart")
# The kafka trigger's metadata keys in KEDA's documentation (Apache Kafka scaler, 2.17).
KEDA_KAFKA_METADATA = frozenset({
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
    "unsafeSsl", "awsRegion",
})


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {name: objects(render(values)) for name, values in RENDERS.items()}


def _config(items: list[dict[str, Any]]) -> dict[str, str]:
    maps = [obj for obj in of_kind(items, "ConfigMap") if obj["metadata"]["name"] == f"{RELEASE}-microbatch-consumer"]
    assert len(maps) == 1
    return dict(maps[0]["data"])


# --- lint and render ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("name", list(RENDERS))
def test_chart_lints_clean_in_strict_mode(name: str, kube_version: str) -> None:
    report = helm().lint(str(CHART), RENDERS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; info is fine
    assert not report["errors"] and not problems, report


def test_every_render_has_the_objects_its_options_ask_for(renders: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted(obj["kind"] for obj in items) for name, items in renders.items()}
    assert kinds["defaults"] == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds["all-on-statefulset-keda"] == sorted([
        "ConfigMap", "ConfigMap", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule",
        "ScaledObject", "Service", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet",
        "TriggerAuthentication"])
    assert "HorizontalPodAutoscaler" in kinds["all-on-deployment-hpa"]
    assert all("Secret" not in k for k in kinds.values())  # secrets are referenced, never created


# --- probes, settings, secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RENDERS))
def test_probes_hit_healthz_and_readyz_on_the_metrics_port(renders: dict[str, list[dict[str, Any]]], name: str) -> None:
    items = renders[name]
    consumer = container(items)
    port = int(_config(items)["METRICS_PORT"])
    assert consumer["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert consumer[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    service = next(s for s in of_kind(items, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["publishNotReadyAddresses"] is True  # an unready pod is still scraped


@pytest.mark.parametrize("name", list(RENDERS))
def test_env_names_are_the_service_settings(renders: dict[str, list[dict[str, Any]]], name: str) -> None:
    contract = read_contract_settings()
    items = renders[name]
    names = set(_config(items)) | {entry["name"] for entry in container(items).get("env", [])}
    assert names and all(is_service_setting(n, contract) for n in names), sorted(
        n for n in names if not is_service_setting(n, contract))
    assert container(items)["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-microbatch-consumer"}}]


def test_settings_beyond_the_contract_are_real_documented_settings() -> None:
    fields = {field.upper() for field in Settings.model_fields}
    documented = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in EXTRA_SETTINGS:
        assert name in fields and f"`{name}`" in documented, name


def test_the_values_schema_accepts_every_contract_setting_and_nothing_else() -> None:
    contract = read_contract_settings()
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    env = set(schema["properties"]["env"]["properties"])
    assert all(is_service_setting(n, contract) for n in env), sorted(env)
    assert (contract - CHART_OWNED - {"KAFKA_EXTRA__"}) <= env, sorted(contract - CHART_OWNED - env)
    assert not env & CHART_OWNED


def test_secrets_are_referenced_and_mounted_as_the_settings_say(renders: dict[str, list[dict[str, Any]]]) -> None:
    items = renders["all-on-statefulset-keda"]
    secrets = ALL_ON_STATEFULSET_KEDA["secrets"]
    config, consumer = _config(items), container(items)
    volumes = {v["name"]: v for v in workload(items)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in consumer["volumeMounts"]}
    for volume, setting, ref in (("sink-password", "SINK_PASSWORD_FILE", secrets["sinkPassword"]),
                                 ("kafka-ca", "KAFKA_SSL_CA_LOCATION", secrets["kafkaCa"]),
                                 ("sink-ca", "SINK_SSL_CA_LOCATION", secrets["sinkCa"])):
        assert volumes[volume]["secret"]["secretName"] == ref["existingSecret"]
        assert mounts[volume]["readOnly"] is True
        assert config[setting] == f"{mounts[volume]['mountPath']}/{ref['key']}"
    sasl = next(e for e in consumer["env"] if e["name"] == "KAFKA_SASL_PASSWORD")
    assert sasl["valueFrom"]["secretKeyRef"] == {"name": "mbc-kafka", "key": "sasl-password"}
    assert "KAFKA_SASL_PASSWORD" not in config
    user_info = next(e for e in consumer["env"] if e["name"] == "SCHEMA_REGISTRY_USER_INFO")
    assert user_info["valueFrom"]["secretKeyRef"] == {"name": "mbc-registry", "key": "user-info"}
    assert "SCHEMA_REGISTRY_USER_INFO" not in config
    assert config["SCHEMA_FILE"] == f"{mounts['schema']['mountPath']}/schema.avsc"


def test_workers_default_to_auto_which_follows_the_cpu_limit(renders: dict[str, list[dict[str, Any]]]) -> None:
    items = renders["defaults"]
    assert _config(items)["WORKERS"] == "auto"
    assert container(items)["resources"]["limits"]["cpu"]


# --- security ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RENDERS))
def test_the_pod_runs_restricted(renders: dict[str, list[dict[str, Any]]], name: str) -> None:
    items = renders[name]
    pod = workload(items)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container(items)["securityContext"]
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    writable = {m["mountPath"] for m in container(items)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/lib/consumer"}  # the Dockerfile's only writable places
    assert set(container(items)["resources"]) == {"requests", "limits"}


# --- shutdown ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "limits_cpu", "margin", "supervised"),
    [
        ({}, "1", 15, False),  # defaults: WORKERS=auto on a 1-CPU limit is one process
        ({"SHUTDOWN_TIMEOUT_MS": 45500}, "1", 15, False),  # a part-second rounds up
        ({"WORKERS": 2}, "1", 15, True),
        ({"WORKERS": "1"}, "4", 5, False),
        ({"WORKERS": "auto"}, "1500m", 15, True),  # 2 CPUs -> 2 workers
        ({"WORKERS": "auto", "SHUTDOWN_TIMEOUT_MS": 60000}, None, 20, True),  # no limit: may be several
    ],
)
def test_the_grace_period_covers_the_shutdown_timeout_and_the_supervisor(
    env: dict[str, Any], limits_cpu: str | None, margin: int, supervised: bool
) -> None:
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    resources["limits"]["cpu"] = limits_cpu  # None deletes the chart's default limit (Helm merges values)
    values = {"env": env, "resources": resources, "terminationGraceMarginSeconds": margin}
    items = objects(render(values))
    shutdown_ms = int(env.get("SHUTDOWN_TIMEOUT_MS", 30000))
    expected = math.ceil(shutdown_ms / 1000) + (int(_STOP_MARGIN_S) if supervised else 0) + margin
    assert workload(items)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == expected
    assert expected > shutdown_ms / 1000


# --- monitoring: one source in ops/ ------------------------------------------------------------------------


def test_the_chart_reads_ops_through_symlinks() -> None:
    assert (CHART / "files" / "prometheus-rules").resolve() == RULES_DIR.resolve()
    assert (CHART / "files" / "grafana-dashboards").resolve() == DASHBOARDS_DIR.resolve()


def test_the_prometheus_rule_is_ops_prometheus_rules(renders: dict[str, list[dict[str, Any]]]) -> None:
    rule = one(renders["all-on-statefulset-keda"], "PrometheusRule")
    expected: list[Any] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        if not path.name.endswith(".test.yml"):
            expected.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    assert expected and rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_service_monitor_scrapes_the_metrics_service_once_as_the_rules_job(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    items = renders["all-on-statefulset-keda"]
    monitor = one(items, "ServiceMonitor")
    selected = [s for s in of_kind(items, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [f"{RELEASE}-microbatch-consumer-metrics"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    job = endpoint["relabelings"][0]["replacement"]
    alerts = (RULES_DIR / "alerts.yml").read_text(encoding="utf-8")
    assert f'job="{job}"' in alerts


def test_the_dashboard_configmap_is_ops_grafana_dashboards(renders: dict[str, list[dict[str, Any]]]) -> None:
    dashboards = next(m for m in of_kind(renders["all-on-statefulset-keda"], "ConfigMap")
                      if m["metadata"]["name"].endswith("-dashboards"))
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS_DIR.glob("*.json")}
    assert files and {k: json.loads(v) for k, v in dashboards["data"].items()} == files


# --- autoscaling -------------------------------------------------------------------------------------------


def test_the_keda_trigger_reads_the_groups_lag_with_the_pods_credentials(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    items = renders["all-on-statefulset-keda"]
    scaled, config = one(items, "ScaledObject"), _config(items)
    keda = ALL_ON_STATEFULSET_KEDA["autoscaling"]["keda"]
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                "name": workload(items)["metadata"]["name"]}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 6)
    assert scaled["spec"]["maxReplicaCount"] * int(config["WORKERS"]) <= keda["partitions"]
    [trigger] = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert set(metadata) <= KEDA_KAFKA_METADATA and all(isinstance(v, str) for v in metadata.values()), metadata
    assert metadata["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == config["CONSUMER_GROUP_ID"]
    assert metadata["topic"] == config["CONSUMER_TOPICS"].split(",")[0]
    assert metadata["lagThreshold"] == str(keda["lagThreshold"])
    assert metadata["offsetResetPolicy"] == "earliest"  # the service's auto.offset.reset
    assert metadata["allowIdleConsumers"] == "false"
    assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")
    auth = one(items, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": ("mbc-kafka", "sasl-password"), "ca": ("mbc-kafka-ca", "ca.crt")}
    assert auth["spec"]["env"] == [{"parameter": "username", "name": "KAFKA_SASL_USERNAME", "containerName": "consumer"}]


def test_keda_on_a_plaintext_broker_needs_no_trigger_authentication() -> None:
    items = objects(render({"autoscaling": {"keda": {"enabled": True}}}))
    [trigger] = one(items, "ScaledObject")["spec"]["triggers"]
    assert "authenticationRef" not in trigger and not {"sasl", "tls"} & set(trigger["metadata"])
    assert not list(of_kind(items, "TriggerAuthentication"))
    assert "replicas" not in workload(items)["spec"]  # the autoscaler owns the count


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"env": {"WORKERS": 2}, "autoscaling": {"keda": {"enabled": True, "partitions": 12, "maxReplicaCount": 7}}},
         "maxReplicaCount 7 x 2 workers per pod exceeds the topic's 12 partitions"),
        ({"resources": {"limits": {"cpu": None}}, "autoscaling": {"keda": {"enabled": True}}},
         "WORKERS=auto needs resources.limits.cpu"),
        ({"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}, "enable either hpa or keda"),
        ({"env": {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
          "autoscaling": {"keda": {"enabled": True}}}, "needs secrets.kafkaSaslPassword.existingSecret"),
    ],
)
def test_autoscaling_that_cannot_work_fails_the_render(values: dict[str, Any], message: str) -> None:
    sdk = helm()
    with pytest.raises(sdk.HelmError, match=re.escape(message)):
        render(values)


def test_the_hpa_scales_on_the_groups_lag(renders: dict[str, list[dict[str, Any]]]) -> None:
    items = renders["all-on-deployment-hpa"]
    hpa = one(items, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == "consumer_lag_records"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "100000"}
    assert "replicas" not in workload(items)["spec"]
    assert ALL_ON_DEPLOYMENT_HPA["autoscaling"]["hpa"]["maxReplicas"] == hpa["spec"]["maxReplicas"]


# --- membership, availability, network ---------------------------------------------------------------------


def test_statefulset_mode_makes_each_pod_a_static_member(renders: dict[str, list[dict[str, Any]]]) -> None:
    items = renders["all-on-statefulset-keda"]
    env = {e["name"]: e for e in container(items)["env"]}
    assert env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    headless = next(s for s in of_kind(items, "Service") if s["spec"].get("clusterIP") == "None")
    assert workload(items)["spec"]["serviceName"] == headless["metadata"]["name"]
    for name in ("defaults", "all-on-deployment-hpa"):
        assert "KAFKA_GROUP_INSTANCE_ID" not in {e["name"] for e in container(renders[name]).get("env", [])}


def test_the_disruption_budget_lets_a_single_replica_drain(renders: dict[str, list[dict[str, Any]]]) -> None:
    budget = one(renders["defaults"], "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": workload(renders["defaults"])["spec"]["selector"]}


def test_the_network_policy_lets_out_only_dns_broker_database_and_registry(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    policy = one(renders["all-on-statefulset-keda"], "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in spec["egress"]]
    assert ports == [[(53, "TCP"), (53, "UDP")], [(9093, "TCP")], [(5432, "TCP")], [(8081, "TCP")]]
    assert all("to" in rule for rule in spec["egress"][1:])


# --- labels ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RENDERS))
def test_every_object_and_pod_carries_the_recommended_labels(
    renders: dict[str, list[dict[str, Any]]], name: str
) -> None:
    items = renders[name]
    for obj in items:
        labels = obj["metadata"]["labels"]
        assert all(label in labels for label in RECOMMENDED_LABELS), (obj["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == RELEASE and obj["metadata"]["namespace"] == NAMESPACE
    spec = workload(items)["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert all(label in pod_labels for label in RECOMMENDED_LABELS)
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in spec["selector"]["matchLabels"]  # an upgrade keeps the selector


# --- the values schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"replicaCont": 2},
        {"image": {"repository": "x", "tags": "1.0"}},
        {"image": {"digest": "latest"}},
        {"env": {"CONSUMER_TOPIC": "events"}},  # misspelled setting
        {"env": {"METRICS_PORT": 9500}},  # owned by metrics.port
        {"env": {"KAFKA_GROUP_INSTANCE_ID": "x"}},  # owned by workload.kind
        {"env": {"WORKERS": "many"}},
        {"env": {"VALUE_FORMAT": "xml"}},
        {"env": {"SINK_TABLE": "bad-name"}},
        {"env": {"KAFKA_BOOTSTRAP_SERVERS": ""}},
        {"workload": {"kind": "DaemonSet"}},
        {"metrics": {"port": 70000}},
        {"secrets": {"sinkPassword": {"existingSecret": "s", "key": "password", "mountPath": "/x"}}},
        {"autoscaling": {"keda": {"enabled": "yes"}}},
        {"autoscaling": {"keda": {"lagThreshold": "high"}}},
        {"autoscaling": {"kedaa": {}}},
        {"networkPolicy": {"egress": {"kafka": {"ports": ["kafka"]}}}},
        {"probes": {"liveness": {"path": "/live"}}},
        {"serviceMonitor": {"interval": "often"}},
    ],
    ids=lambda v: json.dumps(v)[:60],
)
def test_bad_values_are_rejected_by_the_schema(values: dict[str, Any]) -> None:
    sdk = helm()
    with pytest.raises(sdk.HelmValuesError):
        render(values)


def test_every_values_key_is_documented_with_a_param_line() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\s*## @param ([A-Za-z.]+)", text, flags=re.MULTILINE))
    for key in yaml.safe_load(text):
        assert any(d == key or d.startswith(f"{key}.") for d in documented), key


def test_notes_tell_how_to_watch_scale_and_roll() -> None:
    notes = render()[f"{Path(CHART).name}/templates/NOTES.txt"]
    assert "/status" in notes and "scale" in notes and "rollout restart" in notes


def test_the_packaged_chart_carries_the_rules_and_dashboards_but_not_their_tests(tmp_path: Path) -> None:
    """`helm package` follows the symlinks into ops/, so a packaged chart needs no checkout beside it."""
    import tarfile

    archive = helm().package(str(CHART), destination=str(tmp_path))
    with tarfile.open(archive) as packaged:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in packaged.getnames()}
        rules = packaged.extractfile("microbatch-consumer/files/prometheus-rules/alerts.yml")
        assert rules is not None and rules.read() == (RULES_DIR / "alerts.yml").read_bytes()
    assert {"files/prometheus-rules/recording.yml", "files/grafana-dashboards/microbatch-consumer.json",
            "values.schema.json", "templates/NOTES.txt"} <= names
    assert not any(n.endswith(".test.yml") for n in names)


def test_the_app_version_is_the_packages_version() -> None:
    from consumer import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__ == compose["x-consumer-image"]["build"]["args"]["VERSION"]
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
