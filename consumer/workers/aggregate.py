"""Merging the workers' `/metrics` into one exposition that keeps the contract's names and labels.

With WORKERS > 1 each worker serves its own registry on an internal port; the supervisor scrapes them and
merges here (prometheus_client's parser and exposition, no shared files): counters and histograms are summed
per identical label set; gauges take the largest value per label set (per-partition gauges are disjoint
across workers, so this is their union; for `consumer_circuit_breaker_state` and `consumer_dlq_guard_tripped`
the worst worker shows), except `consumer_paused_partitions`, which is summed, and the `_created` timestamps,
which keep the earliest.

A worker that dies takes its counters with it; the supervisor keeps what it last saw of them (`retire`), so
the merged counters never go backwards across a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

CONTENT_TYPE = CONTENT_TYPE_LATEST
Families = list[Metric]

# Families whose values accumulate over a process's life: summed across workers, carried over restarts.
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})
_SUMMED_GAUGES = frozenset({"consumer_paused_partitions"})


class Merge(StrEnum):
    SUM = "sum"
    MAX = "max"
    MIN = "min"


def merge_policy(family: Metric) -> Merge:
    """How samples of one family with the same name and labels combine across workers."""
    if family.type in _CUMULATIVE or family.name in _SUMMED_GAUGES:
        return Merge.SUM
    if family.name.endswith("_created"):
        return Merge.MIN
    return Merge.MAX


def parse(text: str) -> Families:
    """The families of one Prometheus text exposition (raises ValueError on a malformed one)."""
    return list(text_string_to_metric_families(text))


def families_of(registry: CollectorRegistry) -> Families:
    """A registry's families in the same shape `parse` gives (counters' `_created` as their own gauges)."""
    return parse(generate_latest(registry).decode("utf-8"))


def cumulative(families: Iterable[Metric]) -> Families:
    """Only the families that accumulate (counters, histograms): what a dead worker leaves behind."""
    return [family for family in families if family.type in _CUMULATIVE]


@dataclass(slots=True)
class _Family:
    template: Metric
    policy: Merge
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        seen = self.values.get(key)
        if seen is None:
            self.values[key] = sample.value
        elif self.policy is Merge.SUM:
            self.values[key] = seen + sample.value
        elif self.policy is Merge.MAX:
            self.values[key] = max(seen, sample.value)
        else:
            self.values[key] = min(seen, sample.value)

    def build(self) -> Metric:
        merged = Metric(self.template.name, self.template.documentation, self.template.type, self.template.unit)
        merged.samples = [Sample(name, dict(labels), value) for (name, labels), value in self.values.items()]
        return merged


def merge(expositions: Iterable[Sequence[Metric]]) -> Families:
    """One family per name, in first-seen order; the first exposition's help text and type win."""
    families: dict[str, _Family] = {}
    for exposition in expositions:
        for family in exposition:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = _Family(family, merge_policy(family))
            for sample in family.samples:
                merged.add(sample)
    return [merged.build() for merged in families.values()]


def render(families: Sequence[Metric]) -> bytes:
    """The Prometheus text exposition of `families`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    """A collector answering with families already merged."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
