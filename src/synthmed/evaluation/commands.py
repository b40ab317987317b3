"""`synthmed evaluate`. Heavy imports (torch through the evaluation code) stay inside the function so that
`synthmed --help` stays fast."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import EvaluateConfig

#: What each phase of the evaluation does, as the progress lines say it.
PHASES = {
    "load": "loading the sets",
    "extractor": "training (or reading the cached) feature extractor",
    "fidelity": "FID, precision and recall",
    "frd": "texture (FRD)",
    "sharpness": "sharpness",
    "c2st": "machine Turing test (C2ST)",
    "views": "C2ST, sharpness and FRD on the three central views",
    "diversity": "diversity (MS-SSIM)",
    "privacy": "memorisation",
    "label_fidelity": "label fidelity",
    "condition_fidelity": "condition fidelity",
}


@user_errors
def evaluate(
    real: Annotated[
        Path | None,
        typer.Option(
            help="Real training images (class folders, flat folder or NIfTI); default: the training split of "
            "the run named by the synthetic folder's manifest."
        ),
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option(
            help="Real images the generator never saw; default: that run's holdout split (same "
            "distribution). Given beside a run, it is a second floor, checked for a shift."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run whose split gives the real sets (default: the manifest's run).")
    ] = None,
    reference_split: Annotated[
        str | None,
        typer.Option(
            help="The run's split used as unseen reference: holdout (default; to report) or val (to compare "
            "settings while choosing them, leaving the holdout untouched)."
        ),
    ] = None,
    synthetic: Annotated[
        Path | None, typer.Option(help="Synthetic images, e.g. a `synthmed generate` folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder: report.json + report.html.")] = None,
    masks: Annotated[
        bool | None,
        typer.Option(
            "--masks",
            help="Condition fidelity: masks <stem>_mask*.png (beside images or in mask/), or 3D label maps.",
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Common square size of all images (default 64).")
    ] = None,
    extractor: Annotated[
        Path | None, typer.Option(help="Local .pt2/TorchScript feature network instead of the in-house one.")
    ] = None,
    volume_size: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="3D: voxels X Y Z every set is resampled to (default: the synthetic volumes' generation "
            "size from their manifest, else 64 64 64).",
            show_default=False,
        ),
    ] = None,
    volume_spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            help="3D: spacing in mm X Y Z (default: the synthetic volumes' generation spacing, else each "
            "file's own).",
            show_default=False,
        ),
    ] = None,
    max_images: Annotated[int | None, typer.Option(help="Seeded random subset per set.")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for 95% intervals.")] = None,
    copy_percentile: Annotated[
        float | None, typer.Option(help="Flag copies closer to training than this % of holdout images (99).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every sample and the extractor.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with EvaluateConfig fields.")
    ] = None,
) -> None:
    """Compare synthetic with real images: fidelity, texture (FRD), sharpness, a machine Turing test (C2ST),
    diversity, memorisation, label and mask fidelity.

    Every figure stands beside its real-vs-real floor (holdout vs training); by default the real sets are
    the generating run's own train and holdout splits. The summary table and the warnings are printed here
    and open report.html. 3D NIfTI folders get the 2.5D FID over axial, coronal and sagittal slices. Nothing
    is downloaded: the feature extractor is trained on the real training images (and cached), or read from
    --extractor.
    """
    options = locals()  # each option sets the EvaluateConfig field of its name
    from synthmed.evaluation.run import evaluate as run_evaluation

    cfg = command_config(EvaluateConfig, config, options)
    started = time.perf_counter()

    def say_phase(name: str) -> None:  # progress: each phase as it starts, with the time so far
        err.print(f"evaluate: {PHASES.get(name, name)} ({time.perf_counter() - started:.0f} s so far)")

    report = run_evaluation(cfg, on_phase=say_phase)
    print_summary(json.loads((report / "report.json").read_text()))
    err.print(f"done: {report / 'report.html'}")


def print_summary(report: dict) -> None:
    """The report's summary table and warnings, on the terminal."""
    table = Table("measure", "synthetic", "real floor", "rule", "verdict", title="evaluation summary")
    for row in report["summary"]:
        style = {"pass": "green", "warn": "red"}.get(row["verdict"], "dim")
        cells = [f"{v:.3f}" if v is not None else "-" for v in (row["synthetic"], row["floor"])]
        table.add_row(row["measure"], *cells, row["rule"], f"[{style}]{row['verdict']}[/{style}]")
    err.print(table)
    for warning in report["headline"]["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
