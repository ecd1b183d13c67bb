"""The Grafana dashboard as code: pinned datasource everywhere, the variables and panels the issue lists,
and provisioning files a Grafana container loads as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import DASHBOARDS, OPS, dashboard_panels, dashboard_variables, load_dashboard

PROVISIONING = OPS / "grafana" / "provisioning"
PINNED = {"type": "prometheus", "uid": "prometheus"}

# What the on-call engineer must see at a glance (issue 4), by panel title.
REQUIRED_PANELS = (
    "Throughput by outcome",
    "Lag by partition",
    "Lag total per topic",
    "Batch size (records)",
    "Batch duration by stage (p50 / p99)",
    "End-to-end latency (p50 / p99)",
    "Dead letters by stage and error class",
    "Circuit breaker state",
    "Paused partitions per pod",
    "Rebalances",
    "Commit age per pod",
)


def _datasources(node: Any) -> list[Any]:
    """Every `datasource` value anywhere in the dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append(value)
            found += _datasources(value)
    elif isinstance(node, list):
        for item in node:
            found += _datasources(item)
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_target_and_variable_names_the_pinned_datasource(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "${DS_" not in text and "__inputs" not in text, "exported for manual import, not provisioning"
    dashboard = load_dashboard(path)
    for panel in dashboard_panels(path):
        assert panel.get("datasource") == PINNED, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == PINNED, (panel["title"], target["refId"])
    for variable in dashboard_variables(path):
        assert variable.get("datasource") == PINNED, variable["name"]
    assert all(ds == PINNED for ds in _datasources(dashboard))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_variables_namespace_pod_topic_group(path: Path) -> None:
    variables = {v["name"]: v for v in dashboard_variables(path)}
    assert set(variables) >= {"namespace", "pod", "topic", "group"}
    for name in ("namespace", "pod", "topic", "group"):
        assert variables[name]["includeAll"] and variables[name]["multi"], name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_panels_an_on_call_engineer_needs(path: Path) -> None:
    panels = dashboard_panels(path)
    titles = [p["title"] for p in panels]
    assert set(REQUIRED_PANELS) <= set(titles), set(REQUIRED_PANELS) - set(titles)
    assert len(set(titles)) == len(titles), "duplicate panel titles"
    ids = [p["id"] for p in load_dashboard(path)["panels"]]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels:
        assert panel["targets"] and panel.get("description"), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_filter_on_the_variables(path: Path) -> None:
    for panel in dashboard_panels(path):
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'namespace=~"$namespace"' in expr, (panel["title"], expr)
            assert 'pod=~"$pod"' in expr or 'group=~"$group"' in expr, (panel["title"], expr)


def test_provisioned_datasource_has_the_pinned_uid() -> None:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (datasource,) = document["datasources"]
    assert (datasource["uid"], datasource["type"]) == ("prometheus", "prometheus")


def test_provisioned_dashboard_provider_loads_files_from_a_mounted_folder() -> None:
    document = yaml.safe_load(
        (PROVISIONING / "dashboards" / "microbatch-consumer.yml").read_text(encoding="utf-8")
    )
    (provider,) = document["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert DASHBOARDS and all(load_dashboard(p)["uid"] for p in DASHBOARDS)
