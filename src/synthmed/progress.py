"""One progress bar for every long loop: training steps, generated images, files read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

#: Loops over more files than this show a bar.
PROGRESS_THRESHOLD = 200


@dataclass
class Bar:
    progress: Progress
    task: TaskID

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def show(self, completed: int, status: str) -> None:
        """Move to ``completed`` with ``status`` (e.g. the step's losses) after the counts."""
        self.progress.update(self.task, completed=completed, status=status)


@contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    completed: int = 0,
    enabled: bool = True,
    console: Console | None = None,
    transient: bool = False,
) -> Iterator[Bar]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient, disable=not enabled) as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed, status=""))


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing a transient bar when there are many of them: silent for short loops, so tests
    and small data stay quiet, and off the terminal, where a redrawn bar is noise in logs and CI."""
    if total is None:
        total = len(items) if isinstance(items, Sized) else None
    if total is None or total <= PROGRESS_THRESHOLD:
        yield from items
        return
    console = Console(stderr=True)
    shown = console.is_terminal
    with progress_bar(description, total, console=console, transient=True, enabled=shown) as bar:
        for item in items:
            yield item
            bar.advance()
