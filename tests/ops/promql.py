"""What ops/ asks Prometheus for: every PromQL expression in the dashboards and rules, the metric names
they reference, and the names the service exports. Shared by the tests in tests/ops."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from consumer.observability.metrics import Metrics

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARDS = sorted((OPS / "grafana" / "dashboards").glob("*.json"))
RULES_DIR = OPS / "prometheus" / "rules"
RULE_FILES = sorted(p for p in RULES_DIR.glob("*.yml") if not p.name.endswith(".test.yml"))
RULE_TESTS = sorted(RULES_DIR.glob("*.test.yml"))

# Series Prometheus itself writes for every scrape target; not the service's to export.
PROMETHEUS_OWN = frozenset({"up"})

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)
_GRAFANA_DURATIONS = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([A-Za-z_:][\w:]*)"')
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\((.*),\s*\w+\s*\)\s*$|^\s*label_values\(\s*\w+\s*\)\s*$", re.DOTALL
)


@dataclass(frozen=True)
class Expression:
    where: str  # file and element, for failure messages
    promql: str


def grafana_to_promql(expr: str) -> str:
    """Dashboard text as Prometheus would receive it: durations for $__rate_interval and friends, `.*`
    for template variables (they only ever appear inside label matchers here)."""
    return _GRAFANA_VARIABLE.sub(".*", _GRAFANA_DURATIONS.sub("5m", expr))


def metric_names(promql: str) -> set[str]:
    """Metric names an expression selects: identifiers left once strings, label matchers, ranges and label
    lists are gone, minus functions, aggregations (anything called) and keywords."""
    named = set(_NAME_MATCHER.findall(promql))  # {__name__="..."} selects by name too
    text = _STRING.sub('""', promql)
    while _BRACES.search(text):
        text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = named
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        called = text[match.end() :].lstrip().startswith("(")
        if not called and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def variable_query_names(query: str) -> set[str]:
    """Metric names of a Grafana variable query: `label_values(selector, label)` selects `selector`."""
    found = _LABEL_VALUES.match(query)
    if found is None:
        return metric_names(grafana_to_promql(query))
    return metric_names(grafana_to_promql(found.group(1))) if found.group(1) else set()


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def load_dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels(path: Path) -> list[dict[str, Any]]:
    return [p for p in _panels(load_dashboard(path)["panels"]) if p.get("type") != "row"]


def dashboard_expressions(path: Path) -> list[Expression]:
    return [
        Expression(f"{path.name}: panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
    ]


def dashboard_variables(path: Path) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = load_dashboard(path)["templating"]["list"]
    return variables


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def load_rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_expressions() -> list[Expression]:
    return [
        Expression(f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for path in RULE_FILES
        for rule in load_rules(path)
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in load_rules(path) if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for path in RULE_FILES for rule in load_rules(path) if "record" in rule}


def rule_test_series() -> list[Expression]:
    """Input series and expressions of the promtool unit tests: they must use real names too."""
    found = []
    for path in RULE_TESTS:
        for number, test in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]):
            for series in test.get("input_series", []):
                found.append(Expression(f"{path.name}: test {number} series", series["series"]))
            for case in test.get("promql_expr_test", []):
                found.append(Expression(f"{path.name}: test {number} expr", case["expr"]))
    return found


def exported_names(metrics_factory: Callable[[CollectorRegistry, list[str]], object] = Metrics) -> set[str]:
    """Every sample name a fresh `Metrics` can expose, by family type: counters `_total` (and `_created`),
    histograms `_bucket`, `_sum`, `_count`, gauges their name (label-less families have no samples yet,
    so names come from the family, not from samples)."""
    registry = CollectorRegistry()
    metrics_factory(registry, ["t"])
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def unknown_names(
    expressions: Iterable[Expression], known: set[str], grafana: bool = False
) -> dict[str, set[str]]:
    """Per expression, the metric names it references that `known` does not hold."""
    unknown = {}
    for expression in expressions:
        text = grafana_to_promql(expression.promql) if grafana else expression.promql
        missing = metric_names(text) - known
        if missing:
            unknown[expression.where] = missing
    return unknown
