"""A progress bar for long file loops, silent for short ones so tests and small data stay quiet."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")

#: Loops over more items than this show a bar.
PROGRESS_THRESHOLD = 200


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing a transient rich progress bar when there are many of them."""
    if total is None:
        total = len(items) if isinstance(items, Sized) else None
    if total is None or total <= PROGRESS_THRESHOLD:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    # Only on a terminal: in logs and CI a redrawn bar is noise.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
