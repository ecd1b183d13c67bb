"""Dashboards as Grafana runs them against Prometheus: panels in rows, template variables resolved with
`label_values` and interpolated the way Grafana's Prometheus datasource does, legends from `legendFormat`.

Only what our dashboards use is supported (query variables over `label_values`, `$name`/`${name}` and the
`$__rate_interval`/`$__interval` built-ins); anything else raises, so a dashboard edit that outgrows this
fails a test instead of being checked wrongly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.testbed.prometheus import PrometheusApi, Series

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "ops" / "grafana"

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.DOTALL)
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Grafana's prometheusSpecialRegexEscape: regex metacharacters get a backslash, doubled inside a PromQL string
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


class DashboardError(Exception):
    """The dashboard uses something this interpreter (and so the test) cannot evaluate as Grafana would."""


@dataclass(frozen=True, slots=True)
class Target:
    ref_id: str
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    type: str
    row: str  # title of the row the panel sits under ("" above the first row)
    grid: Mapping[str, int]  # gridPos: x, y, w, h in Grafana's 24-column grid
    targets: tuple[Target, ...]
    unit: str
    right_axis: frozenset[str] = frozenset()  # refIds an override puts on a right-hand axis (another unit)


def dashboard_files() -> list[Path]:
    """Every dashboard JSON under ops/grafana (provisioning holds YAML only)."""
    return sorted(GRAFANA_DIR.rglob("*.json"))


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Every non-row panel, in layout order, with the row it belongs to (collapsed rows nest theirs)."""
    found: list[Panel] = []
    row = ""
    for panel in _flat(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            row = str(panel.get("title", ""))
            continue
        targets = tuple(
            Target(str(t.get("refId", "")), str(t["expr"]), str(t.get("legendFormat", "")))
            for t in panel.get("targets", []) if "expr" in t
        )
        field_config = panel.get("fieldConfig", {})
        unit = str(field_config.get("defaults", {}).get("unit", ""))
        found.append(Panel(str(panel.get("title", "")), str(panel.get("type", "")), row,
                           dict(panel.get("gridPos", {})), targets, unit, _right_axis(field_config)))
    return found


def _right_axis(field_config: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(
        str(override["matcher"].get("options")) for override in field_config.get("overrides", [])
        if override.get("matcher", {}).get("id") == "byFrameRefID"
        and {"id": "custom.axisPlacement", "value": "right"} in override.get("properties", [])
    )


def _flat(items: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for item in items:
        yield item
        yield from _flat(item.get("panels", []))


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    query: str
    multi: bool
    include_all: bool


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            raise DashboardError(f"variable {variable.get('name')!r}: type {variable.get('type')!r} unsupported")
        query = variable["query"]
        found.append(Variable(str(variable["name"]), str(query["query"] if isinstance(query, dict) else query),
                              bool(variable.get("multi")), bool(variable.get("includeAll"))))
    return found


@dataclass(frozen=True, slots=True)
class View:
    """What a user picked in the variable drop-downs: name -> chosen values; a name not given is "All"."""

    name: str
    chosen: Mapping[str, Sequence[str]]


class Interpolation:
    """Variable values for one view, resolved in dashboard order as Grafana refreshes them, and the text
    substitution Grafana makes in a query."""

    def __init__(self, values: Mapping[str, Sequence[str]], meta: Mapping[str, Variable],
                 builtins: Mapping[str, str]) -> None:
        self.values = values
        self._meta = meta
        self._builtins = builtins

    @classmethod
    def resolve(cls, api: PrometheusApi, dashboard: Mapping[str, Any], view: View, *, start: float,
                end: float, builtins: Mapping[str, str]) -> Interpolation:
        """Each variable's options from `label_values(selector, label)` over [start, end] (later variables
        see the earlier ones substituted), then the view's choice or "All" of them.

        Raises DashboardError when a variable has no options (Grafana would show "None" and every panel using
        it would select nothing) or when a chosen value is not among its options.
        """
        meta = {v.name: v for v in variables(dashboard)}
        values: dict[str, list[str]] = {}
        for variable in meta.values():
            query = cls(values, meta, builtins).substitute(variable.query)
            options = _label_values(api, query, start, end)
            if not options:
                raise DashboardError(f"variable ${variable.name} has no values ({query})")
            chosen = list(view.chosen.get(variable.name, options))
            missing = [value for value in chosen if value not in options]
            if missing:
                raise DashboardError(f"view {view.name}: ${variable.name} does not offer {missing} ({options})")
            values[variable.name] = chosen
        return cls(values, meta, builtins)

    def substitute(self, text: str) -> str:
        """`text` with `$name`, `${name}`, `[[name]]` and the `$__` built-ins replaced as Grafana would."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(3)
            if name.startswith("__"):
                if name not in self._builtins:
                    raise DashboardError(f"built-in ${name} is not supported here")
                return self._builtins[name]
            if name not in self.values:
                raise DashboardError(f"${name} is not a variable of the dashboard (or is used before it is set)")
            return self._format(self._meta[name], self.values[name])

        return _VARIABLE.sub(replace, text)

    @staticmethod
    def _format(variable: Variable, values: Sequence[str]) -> str:
        """Grafana's Prometheus `interpolateQueryExpr`: a plain variable's value as is (quotes escaped); a
        multi-value or All one regex-escaped, several values as `(a|b)`."""
        if not variable.multi and not variable.include_all:
            return values[0].replace("\\", "\\\\\\\\").replace("'", "\\\\'").replace('"', '\\"')
        escaped = [_REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\")) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _label_values(api: PrometheusApi, query: str, start: float, end: float) -> list[str]:
    found = _LABEL_VALUES.match(query)
    if found is None:
        raise DashboardError(f"variable query {query!r}: only label_values(...) is supported")
    selector, label = found.group(1), found.group(2)
    return sorted(api.label_values(label, match=selector.strip() if selector else None, start=start, end=end))


def legend(template: str, labels: Mapping[str, str]) -> str:
    """A series' name in the panel: `legendFormat` with `{{label}}` filled in (Grafana leaves unknown ones
    empty), or the series' labels when there is no format."""
    if not template or template == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{inner}}}"
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template)


def evaluate(api: PrometheusApi, panel: Panel, interpolation: Interpolation,
             at: float | None = None) -> dict[str, list[Series]]:
    """Each target's instant result at `at` (now by default), by refId."""
    return {target.ref_id: api.query(interpolation.substitute(target.expr), at=at) for target in panel.targets}
