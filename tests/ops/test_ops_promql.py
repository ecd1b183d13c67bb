"""Every PromQL expression in ops/ (dashboards, alert and recording rules, rule tests) references only
metrics the service exports (from a fresh `Metrics`), recording rules, or Prometheus' own `up`."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge
from promql import (
    DASHBOARDS,
    PROMETHEUS_OWN,
    Expression,
    dashboard_expressions,
    dashboard_variables,
    exported_names,
    metric_names,
    recorded_names,
    rule_expressions,
    rule_test_series,
    unknown_names,
    variable_query,
    variable_query_names,
)

from consumer.observability.metrics import Metrics


def _known() -> set[str]:
    return exported_names() | recorded_names() | PROMETHEUS_OWN


def _all_expressions() -> list[tuple[Expression, bool]]:
    grafana = [(e, True) for path in DASHBOARDS for e in dashboard_expressions(path)]
    return grafana + [(e, False) for e in rule_expressions() + rule_test_series()]


def _referenced() -> set[str]:
    names: set[str] = set()
    for expression, grafana in _all_expressions():
        names |= unknown_names([expression], set(), grafana).get(expression.where, set())
    return names


def test_ops_has_dashboards_and_rules_to_check() -> None:
    assert DASHBOARDS, "no dashboard under ops/grafana/dashboards"
    assert len(rule_expressions()) >= 10
    assert len([e for path in DASHBOARDS for e in dashboard_expressions(path)]) >= 20


def test_dashboard_expressions_reference_only_exported_metrics() -> None:
    expressions = [e for path in DASHBOARDS for e in dashboard_expressions(path)]
    assert unknown_names(expressions, _known(), grafana=True) == {}


def test_dashboard_variables_reference_only_exported_metrics() -> None:
    for path in DASHBOARDS:
        for variable in dashboard_variables(path):
            names = variable_query_names(variable_query(variable))
            assert names and names <= _known(), (variable["name"], names - _known())


def test_rule_expressions_reference_only_exported_metrics() -> None:
    assert unknown_names(rule_expressions(), _known()) == {}


def test_rule_unit_tests_feed_and_query_only_exported_metrics() -> None:
    assert unknown_names(rule_test_series(), _known()) == {}


def test_recording_rules_are_used_by_the_dashboard_or_the_alerts() -> None:
    used = _referenced()
    assert recorded_names() <= used, recorded_names() - used


@pytest.mark.parametrize("renamed", sorted(_referenced() - PROMETHEUS_OWN))
def test_a_metric_renamed_in_the_service_fails_the_check(renamed: str) -> None:
    """As if `Metrics` (or a recording rule) now exported `renamed` under another name."""
    known = (_known() - {renamed}) | {f"{renamed}_v2"}
    flagged = set()
    for expression, grafana in _all_expressions():
        flagged |= unknown_names([expression], known, grafana).get(expression.where, set())
    assert flagged == {renamed}


def test_a_metric_renamed_in_the_registry_fails_the_check() -> None:
    """The same, end to end: a registry where `consumer_lag_records` is exported under another name."""

    def renamed_metrics(registry: CollectorRegistry, topics: list[str]) -> Metrics:
        metrics = Metrics(registry, topics)
        registry.unregister(metrics.lag_records)
        Gauge("consumer_partition_lag_records", "renamed", ["topic", "partition"], registry=registry)
        return metrics

    known = exported_names(renamed_metrics) | recorded_names() | PROMETHEUS_OWN
    flagged = set()
    for expression, grafana in _all_expressions():
        flagged |= unknown_names([expression], known, grafana).get(expression.where, set())
    assert flagged == {"consumer_lag_records"}


def test_a_metric_misspelled_in_an_expression_fails_the_check() -> None:
    expression = Expression("edited panel", 'sum(consumer_lag_record{topic=~"$topic"})')
    assert unknown_names([expression], _known(), grafana=True) == {"edited panel": {"consumer_lag_record"}}


@pytest.mark.parametrize(
    ("promql", "names"),
    [
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{stage="x"}[5m])))', {"a_bucket"}),
        ("(time() - b > 600) and on (instance) (sum by (instance) (c) > 0)", {"b", "c"}),
        ("d * on (instance) group_left (group) max by (instance, group) (e)", {"d", "e"}),
        ('max_over_time(f[10m:1m]) > 1e3 or g offset 5m unless {__name__="h"}', {"f", "g", "h"}),
        ('label_replace(i, "dst", "$1", "src", "(.*)")', {"i"}),
        ("consumer:lag_records:sum > 0", {"consumer:lag_records:sum"}),
        ("sum(rate(x_total[$__rate_interval]))", {"x_total"}),
    ],
)
def test_metric_names_are_read_from_promql(promql: str, names: set[str]) -> None:
    from promql import grafana_to_promql

    assert metric_names(grafana_to_promql(promql)) == names


def test_exported_names_include_histogram_and_counter_samples() -> None:
    names = exported_names()
    assert {
        "consumer_batch_records_bucket",
        "consumer_batch_records_sum",
        "consumer_batch_records_count",
    } <= names
    assert {"consumer_records_total", "consumer_lag_seconds", "consumer_lag_records"} <= names
    assert "consumer_records" not in names
