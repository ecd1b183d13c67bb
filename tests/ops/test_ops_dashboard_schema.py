"""The dashboards are valid for Grafana's file provisioning, checked against a JSON schema of our own
(tests/ops/grafana_dashboard.schema.json): uid, title and numeric schemaVersion, no dashboard id and no
import-time `__inputs`, the pinned datasource uid on every panel, target, variable and annotation, and no
panel without a target. The schema is itself checked, and shown to reject each of those faults."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from promql import DASHBOARDS, load_dashboard

SCHEMA_PATH = Path(__file__).with_name("grafana_dashboard.schema.json")
GRID_COLUMNS = 24


def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _errors(dashboard: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in _validator().iter_errors(dashboard)]


def _first_panel(dashboard: dict[str, Any]) -> dict[str, Any]:
    panel: dict[str, Any] = next(p for p in dashboard["panels"] if p["type"] != "row")
    return panel


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_validates_against_the_provisioning_schema(path: Path) -> None:
    assert _errors(load_dashboard(path)) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    """Beyond the schema: Grafana moves panels that overflow 24 columns or overlap, so the file would not
    show the layout it describes."""
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard(path)["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def _unpinned_panel(d: dict[str, Any]) -> None:
    _first_panel(d)["datasource"] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def _unpinned_target(d: dict[str, Any]) -> None:
    del _first_panel(d)["targets"][0]["datasource"]


def _no_targets(d: dict[str, Any]) -> None:
    _first_panel(d)["targets"] = []


def _empty_expr(d: dict[str, Any]) -> None:
    _first_panel(d)["targets"][0]["expr"] = ""


def _unpinned_variable(d: dict[str, Any]) -> None:
    d["templating"]["list"][0]["datasource"] = "Prometheus"


def _exported_for_import(d: dict[str, Any]) -> None:
    d["__inputs"] = [{"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}]


def _no_uid(d: dict[str, Any]) -> None:
    del d["uid"]


def _dashboard_id(d: dict[str, Any]) -> None:
    d["id"] = 7


def _schema_version_text(d: dict[str, Any]) -> None:
    d["schemaVersion"] = "39"


def _too_wide(d: dict[str, Any]) -> None:
    _first_panel(d)["gridPos"]["w"] = 30


def _text_panel(d: dict[str, Any]) -> None:
    panel = _first_panel(d)
    panel["type"] = "text"
    del panel["targets"]


FAULTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "a panel on ${DS_PROMETHEUS}": _unpinned_panel,
    "a target without a datasource": _unpinned_target,
    "a panel without targets": _no_targets,
    "an empty query": _empty_expr,
    "a variable on a datasource by name": _unpinned_variable,
    "__inputs of a manual export": _exported_for_import,
    "no uid": _no_uid,
    "a dashboard id": _dashboard_id,
    "schemaVersion as text": _schema_version_text,
    "a panel wider than the grid": _too_wide,
    "a panel that queries nothing": _text_panel,
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_the_schema_rejects_a_dashboard_with(fault: str) -> None:
    dashboard = copy.deepcopy(load_dashboard(DASHBOARDS[0]))
    FAULTS[fault](dashboard)
    assert _errors(dashboard), f"the schema accepted {fault}"
