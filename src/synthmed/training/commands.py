"""`synthmed train`, `synthmed split` and `synthmed presets`. Heavy imports (torch through the training code)
stay inside the functions so that `synthmed --help` stays fast."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from synthmed.cli_support import ConditionName, err, user_errors
from synthmed.config import PRESETS, load_train_config
from synthmed.errors import SynthmedError

if TYPE_CHECKING:  # annotations only: torch stays out of `synthmed --help`
    import torch

    from synthmed.config import TrainConfig
    from synthmed.training.run import TrainingData


class Stage(StrEnum):
    all = "all"
    autoencoder = "autoencoder"
    diffusion = "diffusion"
    controlnet = "controlnet"


@user_errors
def train(
    stage: Annotated[
        Stage,
        typer.Argument(
            help="Which stage to train: all = autoencoder then diffusion (then the label-map controlnet for "
            "3D data)."
        ),
    ] = Stage.all,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (fields of TrainConfig).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Data source (overrides data.source).")] = None,
    run: Annotated[Path | None, typer.Option(help="Run directory (overrides run_dir).")] = None,
    preset: Annotated[str | None, typer.Option(help=f"Architecture preset: {', '.join(PRESETS)}.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    condition: Annotated[
        ConditionName | None,
        typer.Option(
            help="controlnet stage, 2D: what the ControlNet follows: mask (<stem>_mask*.png files), edges "
            "(Canny) or sobel; each has its own folder in the run (overrides controlnet.condition)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    estimate: Annotated[
        bool,
        typer.Option(
            help="Before the first stage, time a few steps of every stage to train and print the expected "
            "duration of each and in total."
        ),
    ] = True,
) -> None:
    """Train the autoencoder (or install the shipped one: autoencoder.source foundation, the small64 default),
    the class-conditional diffusion model and (3D) the label-map ControlNet.

    2D ControlNets are trained after those with `synthmed train controlnet --condition mask|edges|sobel`.

    Checkpoints, logs (log.jsonl) and preview grids go to the run directory; --resume continues exactly where
    a killed run stopped. On resume without --config the run's saved config.yaml is used. Before the first
    stage the expected duration of every stage and the total is printed (a few timed steps each; --no-estimate
    skips them), and after the first few real steps of each stage its duration again.

    Several GPUs (or CPU processes): torchrun --nproc_per_node N --no-python synthmed train ... splits each
    batch_size batch across the N processes (DistributedDataParallel); rank 0 writes the files.
    """
    from synthmed.runtime import resolve_device, torchrun_command
    from synthmed.training.duration import StepTimer
    from synthmed.training.run import resolve_run_config
    from synthmed.training.run import train as run_training

    overrides: dict[str, Any] = {}
    if data is not None:
        overrides["data"] = {"source": str(data)}
    if run is not None:
        overrides["run_dir"] = str(run)
    if preset is not None:
        overrides["preset"] = preset
    cfg = None
    if config is not None or data is not None:
        cfg = load_train_config(config, overrides)
    elif preset is not None:
        raise SynthmedError("--preset needs --config or --data", field="preset")
    cfg = resolve_run_config(cfg, run, resume)
    if condition is not None:
        cfg.controlnet = cfg.controlnet.model_copy(update={"condition": condition.value})
    stages = None if stage == Stage.all else (stage.value,)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun: rank 0 prints
    cpu = resolve_device(cfg.runtime.device).type == "cpu"
    timer = StepTimer(lambda line: err.print(line, highlight=False), cpu) if main else None
    alone = os.environ.get("WORLD_SIZE", "1") == "1"  # the probe times one process
    before = _say_estimate if estimate and main and alone else None
    with torchrun_command():
        run_training(cfg, stages, resume=resume, progress=progress, on_step=timer, before_stages=before)
    if main:
        err.print(f"done: {cfg.run_dir}")


@user_errors
def distill(
    run_dir: Annotated[
        Path | None, typer.Option("--run", help="Trained run directory (the teacher).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with DistillConfig fields.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps of each round (400).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch (32).")] = None,
    teacher_steps: Annotated[
        int | None, typer.Option(help="Steps of the guidance-distilled student; halving starts there (32).")
    ] = None,
    min_steps: Annotated[int | None, typer.Option(help="Fewest steps: the last student's (1).")] = None,
    decoder_steps: Annotated[
        int | None,
        typer.Option(
            help="Optimiser steps of the lightweight decoder for generate --decoder lite (2000; 0: none)."
        ),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto, fp32, bf16 or fp16 (default: the run's runtime.precision).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted distillation.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Add a distilled stage to a trained run: few-step students for `generate --sampler distilled`.

    Round 1 teaches a student that takes the guidance scale as an input to match the guided teacher in one
    network evaluation per step (at --teacher-steps); each further round halves the steps (progressive
    distillation) down to --min-steps. 3D rectified-flow runs (no guidance) only halve, from the teacher
    itself, with their label-map ControlNet attached. Last (2D), a lightweight decoder learns the
    autoencoder's decoder (run/distilled/decoder/; generate --decoder lite). Each round is a stage folder
    run/distilled/steps-<N>/ with checkpoints, log and previews; --resume continues inside the round that
    was interrupted.
    """
    options = locals()  # each option sets the DistillConfig field of its name
    import torch

    from synthmed.cli_support import command_config
    from synthmed.config import DistillConfig
    from synthmed.training.distill import distill as run_distill
    from synthmed.training.duration import StepTimer

    cfg = command_config(DistillConfig, config, options)
    # The "steps in an hour" hint is for CPUs; runs on device auto use CUDA where there is one.
    timer = StepTimer(lambda line: err.print(line, highlight=False), cpu=not torch.cuda.is_available())
    students = run_distill(cfg, resume=resume, progress=progress, on_step=timer)
    lite = " and a lightweight decoder" if cfg.decoder_steps else ""
    err.print(f"done: distilled students of {students} steps{lite} in {cfg.run_dir / 'distilled'}")


def _say_estimate(cfg: TrainConfig, stages: Sequence[str], data: TrainingData, device: torch.device) -> None:
    """training.run's before_stages: the expected duration of the stages to train (training.estimate)."""
    from synthmed.training.estimate import describe, estimate_stages

    seconds = estimate_stages(cfg, stages, data, device)
    if seconds:
        err.print(describe(seconds, cfg), highlight=False, soft_wrap=True)


@user_errors
def split(
    out: Annotated[Path, typer.Option(help="Where to write split.json (an existing one is verified).")],
    data: Annotated[
        Path | None,
        typer.Option(help="Data source: class folders, .npz or CSV manifest (default: the config's)."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML with data/seed fields.")] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (overrides the config's seed).")] = None,
) -> None:
    """Check a data set and write its train/val/holdout split with content hashes, without training.

    3D: give a config that sets data.volume (e.g. one with preset: small3d).

    Prints images per class and split and every skipped file with the reason; copy split.json into a run
    directory (or train with the same data settings and seed) to train on exactly this split.
    """
    from rich.table import Table

    from synthmed.data import prepare
    from synthmed.data.splits import split_counts

    overrides: dict[str, Any] = {"data": {"source": str(data)}} if data is not None else {}
    if seed is not None:
        overrides["seed"] = seed
    cfg = load_train_config(config, overrides)
    if cfg.data.source is None:
        raise SynthmedError("no data source: give --data, or a --config that sets data.source", field="data")
    if cfg.data.volume is not None:  # 3D: every volume is read and checked once
        from synthmed.data.volume_sets import prepare_volumes

        prepared = prepare_volumes(cfg.data, cfg.seed, out)
    else:
        prepared = prepare(cfg.data, cfg.seed, out)
    counts = split_counts(prepared.records, prepared.class_names)
    table = Table("class", *counts, title=f"{cfg.data.source} (seed {cfg.seed})")
    for name in prepared.class_names:
        table.add_row(name, *(str(counts[s][name]) for s in counts))
    Console().print(table)
    for skipped in prepared.skipped:
        err.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False, soft_wrap=True)
    err.print(f"written: {out}")


def presets() -> None:
    """List the architecture presets."""
    import yaml

    typer.echo(yaml.safe_dump(PRESETS, sort_keys=False))
