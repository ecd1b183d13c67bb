"""The service contract (../shared/CONTRACT.md beside the repository) as data, for tests that check names."""

from __future__ import annotations

import re
from pathlib import Path

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"

MetricTable = dict[str, tuple[str, frozenset[str]]]


def contract_metrics(text: str) -> MetricTable:
    """The contract's metric table: exposed name -> (type, label names). Label values (`= a, b`),
    parentheticals and descriptions after `:` or `;` are not labels."""
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table: MetricTable = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`consumer_"):
            continue
        described = re.split(r"[;:]", re.sub(r"\([^)]*\)", "", cells[2]))[0]
        without_values = re.sub(r"=\s*`[^`]*`(\s*,\s*`[^`]*`)*", "", described)
        table[cells[0].strip("`")] = (cells[1], frozenset(re.findall(r"`([a-z_]+)`", without_values)))
    return table


def read_contract_metrics() -> MetricTable | None:
    """The table from ../shared/CONTRACT.md, or None when the contract is not beside the repository."""
    return contract_metrics(CONTRACT.read_text(encoding="utf-8")) if CONTRACT.is_file() else None
