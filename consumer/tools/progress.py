"""Progress bars for the operator tools (`dlq replay`, `produce`): rich on a terminal, silent elsewhere.

Commands print their own summary at the end, so a pipe or a CI log gets that instead of redraw noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[[int], None]


class RateColumn(ProgressColumn):
    """Records per second, as rich measures it over its recent samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int | None, console: Console | None = None) -> Iterator[Advance]:
    """Yields `advance(n)`; a bar with count, rate, elapsed time and ETA while it runs (terminal only)."""
    console = console or stderr_console()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        disable=not console.is_terminal, transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
