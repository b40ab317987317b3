"""`synthmed benchmark-augmentation`. Heavy imports stay inside the function so that `synthmed --help` stays
fast."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import AugmentationConfig


class Task(StrEnum):
    classify = "classify"
    segment = "segment"


@user_errors
def benchmark_augmentation(
    task: Annotated[Task | None, typer.Option(help="classify (ResNet) or segment (UNet on masks).")] = None,
    real_train: Annotated[
        Path | None,
        typer.Option(
            help="Real training images: class folders, an .npz (its train split), or NIfTI images/ + labels/ "
            "(3D, segment)."
        ),
    ] = None,
    real_test: Annotated[
        Path | None,
        typer.Option(
            help="Real test images the generator never saw: class folders, an .npz (its test split)."
        ),
    ] = None,
    synthetic: Annotated[
        Path | None,
        typer.Option(
            help="A `synthmed generate` folder (with manifest.jsonl). Without one only the real and "
            "weighted arms run (a real-data reference)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for results.json, results.csv, report.html.")
    ] = None,
    arms: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help="Arm to run (repeatable): real; controls oversample, weighted (classify), augment; "
            "real+synthetic, real+selected, pretrain, synthetic. Default: all for the task.",
        ),
    ] = None,
    ratios: Annotated[
        list[float] | None,
        typer.Option(
            "--ratio", help="Images added per fill-class real image (or per real image) (repeatable)."
        ),
    ] = None,
    synthetic_weights: Annotated[
        list[float] | None,
        typer.Option("--synthetic-weight", help="Loss weight of synthetic images (repeatable)."),
    ] = None,
    primary_metric: Annotated[
        str | None,
        typer.Option(help="Metric choosing arms on validation and Holm-tested, e.g. 'f1[NORMAL]'."),
    ] = None,
    min_confidence: Annotated[
        float | None, typer.Option(help="real+selected: least label confidence of a kept image.")
    ] = None,
    real_fractions: Annotated[
        list[float] | None,
        typer.Option("--real-fraction", help="Fraction of the real training images (repeatable)."),
    ] = None,
    minority_class: Annotated[str | None, typer.Option(help="Class to subsample to a prevalence.")] = None,
    minority_fraction: Annotated[float | None, typer.Option(help="Prevalence of --minority-class.")] = None,
    fill_class: Annotated[
        str | None, typer.Option(help="real+synthetic arms add synthetic images of this class only.")
    ] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="Training seed (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per arm (fixed budget).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Common square image size (default 64).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for 95% intervals.")] = None,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Reuse runs a stopped benchmark finished (out/runs/, same settings and data). Default: on.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with AugmentationConfig fields.")
    ] = None,
) -> None:
    """Does synthetic data help? Train a downstream model with and without it; test on real images.

    Arms: real only (standard augmentation); controls (oversampling count-matched to the synthetic images,
    class-weighted loss, deformed real copies); real + synthetic and real + selected synthetic at each
    ratio and loss weight, synthetic pre-training + real fine-tuning, synthetic only; over 5 seeds and
    real-data fractions. Paired bootstrap CIs pooled over seeds against real-only and the strongest
    control (chosen on validation), Holm-corrected across arms. Refuses a test image the generator was
    trained on (decoded pixels are compared, so re-encoded copies count); says "not checked" and why when
    it cannot tell.
    """
    options = locals()  # each option sets the AugmentationConfig field of its name
    from synthmed.downstream.run import benchmark

    cfg = command_config(AugmentationConfig, config, options)
    if min_confidence is not None:
        cfg.selection = cfg.selection.model_copy(update={"min_confidence": min_confidence})
    results = benchmark(cfg)
    leak = results["leak_check"]
    err.print(f"headline: {results['headline']}", highlight=False, soft_wrap=True)
    err.print(
        f"leak check: {'passed' if leak['checked'] else leak['reason']}", highlight=False, soft_wrap=True
    )
    if results["reused_runs"]:
        err.print(f"reused {results['reused_runs']} finished runs from {cfg.out / 'runs'}")
    err.print(f"done: {cfg.out / 'report.html'}")
