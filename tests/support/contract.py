"""The service contract (docs/contract.md, in the repository) as data, for tests that check names: its metric
table, its settings and its dead-letter headers."""

from __future__ import annotations

import re
from pathlib import Path

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"

MetricTable = dict[str, tuple[str, frozenset[str]]]


def contract_text() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """From `## <heading>` to the next `## ` heading."""
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def contract_metrics(text: str) -> MetricTable:
    """The contract's metric table: exposed name -> (type, label names). Label values (`= a, b`),
    parentheticals and descriptions after `:` or `;` are not labels."""
    table: MetricTable = {}
    for line in _section(text, "Metrics").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`consumer_"):
            continue
        described = re.split(r"[;:]", re.sub(r"\([^)]*\)", "", cells[2]))[0]
        without_values = re.sub(r"=\s*`[^`]*`(\s*,\s*`[^`]*`)*", "", described)
        table[cells[0].strip("`")] = (cells[1], frozenset(re.findall(r"`([a-z_]+)`", without_values)))
    return table


def read_contract_metrics() -> MetricTable:
    return contract_metrics(contract_text())


def contract_settings(text: str) -> frozenset[str]:
    """Every environment variable named in the first column of the contract's settings tables (the section
    from `## Settings` to the next `## `); `KAFKA_EXTRA__<PROPERTY>` is kept as its prefix `KAFKA_EXTRA__`."""
    names: set[str] = set()
    for line in _section(text, "Settings").splitlines():
        if not line.startswith("|"):
            continue
        first = line.strip().strip("|").split("|")[0]
        for name in re.findall(r"`([A-Z][A-Z0-9_]*(?:<[A-Z]+>)?)`", first):
            names.add(name.split("<", 1)[0])
    return frozenset(names)


def read_contract_settings() -> frozenset[str]:
    names = contract_settings(contract_text())
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CONSUMER_TOPICS", "METRICS_PORT", "SHUTDOWN_TIMEOUT_MS"} <= names, names
    return names


def read_contract_dead_letter_headers() -> tuple[str, ...]:
    """The `dlq.*` headers the contract's "Dead-letter records" section says every dead letter carries (the
    paragraph before the first blank line after its opening sentence)."""
    section = _section(contract_text(), "Dead-letter records")
    listed = section.split("plus these headers", 1)[1].split("\n\n", 1)[0]
    names = tuple(dict.fromkeys(re.findall(r"`(dlq\.[a-z.]+)`", listed)))
    assert len(names) >= 10, names
    return names
