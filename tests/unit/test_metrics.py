"""Metrics: attribute names follow the exposed names, and the exported set matches the contract's table."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from support.contract import contract_metrics, read_contract_metrics

from consumer.observability.metrics import Metrics

_TYPES = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}


def _declared() -> dict[str, MetricWrapperBase]:
    metrics = Metrics(CollectorRegistry(), ["t"])
    return {name: value for name, value in vars(metrics).items() if isinstance(value, MetricWrapperBase)}


def _exposed_name(metric: MetricWrapperBase) -> str:
    name: str = metric._name  # prometheus_client keeps the name without `_total` for counters
    return f"{name}_total" if isinstance(metric, Counter) else name


def _type_of(metric: MetricWrapperBase) -> str:
    return next(kind for cls, kind in _TYPES.items() if isinstance(metric, cls))


def test_every_attribute_is_its_exposed_name_minus_the_prefix() -> None:
    """`metrics.records_total` is `consumer_records_total`: grep finds both (counters keep `_total`)."""
    declared = _declared()
    assert declared, "Metrics declares no metric attributes"
    for attribute, metric in declared.items():
        exposed = _exposed_name(metric)
        assert exposed.startswith("consumer_"), exposed
        assert attribute == exposed.removeprefix("consumer_"), (attribute, exposed)
        assert attribute.endswith("_total") == isinstance(metric, Counter), attribute


def test_the_contract_parser_reads_types_and_labels() -> None:
    sample = """## Metrics (Prometheus)

| metric | type | labels |
| --- | --- | --- |
| `consumer_a_total` | counter | `topic`, `outcome` = `x`, `y` |
| `consumer_b` | histogram | |
| `consumer_c` | gauge | `topic`, `partition`: what it means |
| `consumer_d` | gauge | `dependency` = `sink`, `schema_registry`; 0 closed |

## Next
| `consumer_not_a_metric` | gauge | |
"""
    assert contract_metrics(sample) == {
        "consumer_a_total": ("counter", frozenset({"topic", "outcome"})),
        "consumer_b": ("histogram", frozenset()),
        "consumer_c": ("gauge", frozenset({"topic", "partition"})),
        "consumer_d": ("gauge", frozenset({"dependency"})),
    }


def test_exported_metrics_match_the_contract_table() -> None:
    contract = read_contract_metrics()
    assert len(contract) >= 16, f"contract table not parsed: {sorted(contract)}"
    exported = {_exposed_name(m): (_type_of(m), frozenset(m._labelnames)) for m in _declared().values()}
    missing = sorted(set(contract) - set(exported))
    assert not missing, f"contract metrics not exported: {missing}"
    for name, (kind, labels) in contract.items():
        assert exported[name] == (kind, labels), name
