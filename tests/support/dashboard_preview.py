"""Pictures of a dashboard from a real run: each row of panels drawn with matplotlib in Grafana's layout,
from the series Prometheus answers for each panel, with the phases of the run shaded, so a reviewer sees
what an SRE would have seen. One small PNG per row (a 64-colour palette keeps them a few dozen KB)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ops.testbed.prometheus import Series

from .grafana import Panel

_DPI = 72
_WIDTH_IN = 18.0
_GRID_UNIT_IN = 0.45  # height of one Grafana grid unit
_COLOURS = 64
_PHASE_COLOURS = ("#4c9be8", "#e8604c", "#9fd356", "#a0a0a0", "#c38de0", "#f2c14e")


@dataclass(frozen=True, slots=True)
class Phase:
    label: str
    start: float  # unix seconds
    end: float


@dataclass(frozen=True, slots=True)
class Drawn:
    """One line of a panel: its legend, its points and the target (refId) it came from."""

    legend: str
    series: Series
    ref_id: str = "A"


def render_rows(title: str, panels: Sequence[Panel], lines: Mapping[str, Sequence[Drawn]],
                phases: Sequence[Phase], origin: float, out_dir: Path, prefix: str) -> list[Path]:
    """One PNG per row of `panels` in `out_dir`, named `<prefix>-<nn>-<row>.png`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[Panel]] = {}
    for panel in panels:
        rows.setdefault(panel.row, []).append(panel)
    written = []
    for number, (row, members) in enumerate(rows.items(), start=1):
        path = out_dir / f"{prefix}-{number:02d}-{_slug(row or 'top')}.png"
        _render_row(f"{title} / {row}" if row else title, members, lines, phases, origin, path)
        written.append(path)
    return written


def _render_row(title: str, panels: Sequence[Panel], lines: Mapping[str, Sequence[Drawn]],
                phases: Sequence[Phase], origin: float, path: Path) -> None:
    top = min(p.grid.get("y", 0) for p in panels)
    height = max(p.grid.get("y", 0) + p.grid.get("h", 8) for p in panels) - top
    figure = Figure(figsize=(_WIDTH_IN, height * _GRID_UNIT_IN + 0.9))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(height, 24, hspace=3.0, wspace=3.0, top=1 - 0.7 / (height * _GRID_UNIT_IN + 0.9))
    for panel in panels:
        y, x = panel.grid.get("y", 0) - top, panel.grid.get("x", 0)
        axes = figure.add_subplot(grid[y : y + panel.grid.get("h", 8), x : x + panel.grid.get("w", 12)])
        _draw_panel(axes, panel, lines.get(panel.title, ()), phases, origin)
    legend = "   ".join(f"{phase.label}: {phase.start - origin:.0f}-{phase.end - origin:.0f} s"
                       for phase in phases)
    figure.suptitle(f"{title}        (x: seconds into the run; shaded: {legend})", fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(_COLOURS).save(path, optimize=True)


def _draw_panel(axes: Axes, panel: Panel, drawn: Sequence[Drawn], phases: Sequence[Phase],
                origin: float) -> None:
    axes.set_title(panel.title, fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    for colour, phase in zip(_PHASE_COLOURS, phases, strict=False):
        axes.axvspan(phase.start - origin, phase.end - origin, color=colour, alpha=0.12, linewidth=0)
    plotted = [d for d in drawn if d.series.finite]
    if not plotted:
        axes.text(0.5, 0.5, "No data", ha="center", va="center", transform=axes.transAxes, color="red")
        return
    right = axes.twinx() if any(line.ref_id in panel.right_axis for line in plotted) else None
    if right is not None:
        right.tick_params(labelsize=7)
        colours = list(rcParams["axes.prop_cycle"].by_key()["color"])
        shift = sum(1 for line in plotted if line.ref_id not in panel.right_axis) % len(colours)
        right.set_prop_cycle(color=colours[shift:] + colours[:shift])  # not the left lines' colours again
    for line in plotted:
        target = right if right is not None and line.ref_id in panel.right_axis else axes
        times = [t - origin for t, _ in line.series.points]
        values = [v if math.isfinite(v) else math.nan for _, v in line.series.points]
        if panel.type == "state-timeline":
            target.step(times, values, where="post", label=line.legend, linewidth=1.2)
        else:  # p99 lines dashed beside their p50 twins, as one would tell them apart in Grafana by colour
            style = "--" if line.legend.startswith("p99") else "-"
            target.plot(times, values, style, label=line.legend, linewidth=1.0)
    if panel.type == "stat":
        last = next((v for _, v in reversed(plotted[0].series.points) if math.isfinite(v)), math.nan)
        axes.text(0.5, 0.55, _format(last, panel.unit), ha="center", va="center", transform=axes.transAxes,
                  fontsize=18, fontweight="bold", alpha=0.8)
    elif len(plotted) <= 8:
        handles = [h for a in (axes, right) if a is not None for h in a.get_legend_handles_labels()[0]]
        axes.legend(handles=handles, fontsize=6, loc="upper left", framealpha=0.6)


def _format(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} s" if unit == "s" else text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
