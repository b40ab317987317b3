"""`synthmed demo`. Heavy imports stay inside the function so that `synthmed --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthmed.cli_support import err, user_errors


@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, run and report.")] = Path("demo_run"),
    quick: Annotated[
        bool, typer.Option(help="A seconds-long smoke run (tiny model) instead of the real demo.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train on MNI152 brain MRI slices shipped with nilearn (no download) and write report.html."""
    from synthmed.reporting.demo import run_demo

    report = run_demo(out, quick=quick, progress=progress)
    err.print(f"done: open {report}")
