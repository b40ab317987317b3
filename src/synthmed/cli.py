"""The `synthmed` command line: thin wrappers that build a config object and call a pipeline stage."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from synthmed.catalogue.commands import catalogue_app, catalogue_session, db_app, generate_from_requests
from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import (
    PRESETS,
    AugmentationConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    load_train_config,
)
from synthmed.errors import SynthmedError
from synthmed.jobs.commands import worker
from synthmed.web.commands import serve, users_app

app = typer.Typer(
    help="synthmed: train latent diffusion models on your own medical images and generate labelled "
    "synthetic data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class ConditionName(StrEnum):
    mask = "mask"
    edges = "edges"
    sobel = "sobel"


class Stage(StrEnum):
    all = "all"
    autoencoder = "autoencoder"
    diffusion = "diffusion"
    controlnet = "controlnet"


@app.command()
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
) -> None:
    """Train the autoencoder, the class-conditional diffusion model and (3D) the label-map ControlNet.

    2D ControlNets are trained after those with `synthmed train controlnet --condition mask|edges|sobel`.

    Checkpoints, logs (log.jsonl) and preview grids go to the run directory; --resume continues exactly where
    a killed run stopped. On resume without --config the run's saved config.yaml is used. After the first
    few steps of each stage the expected duration on this machine is printed.

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
    with torchrun_command():
        run_training(cfg, stages, resume=resume, progress=progress, on_step=timer)
    if main:
        err.print(f"done: {cfg.run_dir}")


@app.command()
@user_errors
def split(
    data: Annotated[Path, typer.Option(help="Data source: class folders, .npz or CSV manifest.")],
    out: Annotated[Path, typer.Option(help="Where to write split.json (an existing one is verified).")],
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

    overrides: dict[str, Any] = {"data": {"source": str(data)}}
    if seed is not None:
        overrides["seed"] = seed
    cfg = load_train_config(config, overrides)
    if cfg.data.volume is not None:  # 3D: every volume is read and checked once
        from synthmed.data.volume_sets import prepare_volumes

        prepared = prepare_volumes(cfg.data, cfg.seed, out)
    else:
        prepared = prepare(cfg.data, cfg.seed, out)
    counts = split_counts(prepared.records, prepared.class_names)
    table = Table("class", *counts, title=f"{data} (seed {cfg.seed})")
    for name in prepared.class_names:
        table.add_row(name, *(str(counts[s][name]) for s in counts))
    Console().print(table)
    for skipped in prepared.skipped:
        err.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False, soft_wrap=True)
    err.print(f"written: {out}")


@app.command()
@user_errors
def generate(
    run: Annotated[Path | None, typer.Option(help="Trained run directory.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder: <label>/syn_<seed>.png + manifest.jsonl.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Class to generate (omit for unconditional).")] = None,
    count: Annotated[int | None, typer.Option(help="Number of images.")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Sampler steps (10 for ddpm, 30 for rflow, else 25).")
    ] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = none).")] = None,
    seed: Annotated[int | None, typer.Option(help="First seed; image i gets seed+i.")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(help="ddpm (default), ddim, dpmsolver, unipc or pndm; rflow for rectified-flow models."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    bit_depth: Annotated[int | None, typer.Option(help="PNG bit depth: 8 or 16.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32 (bit-reproducible), bf16, fp16 or auto.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the UNet (minutes of compiling first).")
    ] = False,
    privacy_filter: Annotated[
        bool,
        typer.Option(
            "--privacy-filter",
            help="Drop and replace images closer to a training image than real holdout images are "
            "(pixel-space normalised correlation; recorded in the manifest).",
        ),
    ] = False,
    copy_percentile: Annotated[
        float | None,
        typer.Option(help="Privacy filter threshold: closer than this % of holdout images (99)."),
    ] = None,
    size: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="3D: output voxels X Y Z (default: the training size).", show_default=False),
    ] = None,
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            help="3D: voxel spacing in mm X Y Z, also the model's input (default: training).",
            show_default=False,
        ),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="3D: NIfTI label map to generate the image for (default: drawn from the training maps)."
        ),
    ] = None,
    augment_label_maps: Annotated[
        bool | None,
        typer.Option(
            help="3D: deform label maps drawn from the training set (random affine, nearest).",
            show_default=False,
        ),
    ] = None,
    conditioning_scale: Annotated[
        float | None, typer.Option(help="ControlNet strength (1; 0 ignores the label map or condition file).")
    ] = None,
    condition_file: Annotated[
        Path | None,
        typer.Option(
            help="2D: structure map to follow, any size: a binary mask (written beside each image as "
            "<stem>_mask.png), or for edges/sobel an image whose edges are computed."
        ),
    ] = None,
    condition: Annotated[
        ConditionName | None, typer.Option(help="2D: which ControlNet follows --condition-file (mask).")
    ] = None,
    tile_size: Annotated[
        int | None, typer.Option(help="3D: VAE decoding tile in latent voxels (32); bounds memory.")
    ] = None,
    tile_overlap: Annotated[float | None, typer.Option(help="3D: overlap of decoding tiles (0.25).")] = None,
    qc_retries: Annotated[
        int | None, typer.Option(help="3D: new seeds tried when a volume fails the intensity check (3).")
    ] = None,
    from_requests: Annotated[
        bool,
        typer.Option(
            "--from-requests",
            help="Fulfil the catalogue's open regeneration requests (rejected samples): each is generated "
            "again with its recorded settings and a new seed into its own folder, and imported. Takes only "
            "--database, --device and --config (FromRequestsConfig).",
        ),
    ] = False,
    database: Annotated[
        str | None, typer.Option(help="--from-requests: catalogue URL (default: $SYNTHMED_DATABASE_URL).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with GenerateConfig fields.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate labelled synthetic images (2D PNG) or volumes (3D NIfTI) with a provenance manifest.

    3D runs write syn_<seed>_image.nii.gz with its syn_<seed>_label.nii.gz (the label map it was generated
    for), previews/syn_<seed>.png (three views, labels overlaid), and check every volume's per-label
    intensities against the training data (failures are re-tried with new seeds, all in the manifest).
    2D runs with a ControlNet follow --condition-file: a mask file (BUSI style; any size, resized like the
    training masks; an empty mask means no lesion) is written beside every image as its annotation.
    Re-running the same command continues an interrupted job: images already written are kept.
    """
    from synthmed.runtime import torchrun_command
    from synthmed.sampling.generate import generate_to_folder

    given = {
        "run_dir": run,
        "out": out,
        "label": label,
        "count": count,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "sampler": sampler,
        "batch_size": batch_size,
        "bit_depth": bit_depth,
        "precision": precision,
        "compile": compile or None,
        "device": device,
        "privacy_filter": privacy_filter or None,
        "copy_percentile": copy_percentile,
        "size": size,
        "spacing": spacing,
        "label_map": label_map,
        "augment_label_maps": augment_label_maps,
        "conditioning_scale": conditioning_scale,
        "condition_file": condition_file,
        "condition": condition.value if condition else None,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "qc_retries": qc_retries,
    }
    if from_requests or database is not None:
        generate_from_requests(from_requests, database, config, given, progress)
        return
    cfg = command_config(GenerateConfig, config, given)
    with torchrun_command():
        generate_to_folder(cfg, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, by rank 0
        err.print(f"done: {cfg.count} images in {cfg.out}")


edit_app = typer.Typer(
    help="Edit real 2D images with a trained run: insert a lesion, remove an artefact, harmonise.",
    no_args_is_help=True,
)
app.add_typer(edit_app, name="edit")
app.add_typer(db_app, name="db")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(users_app, name="users")
app.command()(serve)
app.command()(worker)

EditRun = Annotated[Path | None, typer.Option("--run", help="Trained run directory.")]
EditImage = Annotated[Path | None, typer.Option(help="Image to edit (PNG, JPEG, TIFF, DICOM).")]
EditOut = Annotated[
    Path | None,
    typer.Option(
        help="Output image: .png keeps the input's 8/16-bit values, .tif float32; plus <stem>.json."
    ),
]
EditSeed = Annotated[int | None, typer.Option(help="Seed of the new content.")]
EditSteps = Annotated[int | None, typer.Option(help="Sampler steps (50).")]
EditConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML with EditConfig fields.")]
EditResample = Annotated[int | None, typer.Option(help="RePaint passes per step inside the region (2).")]
EditScale = Annotated[
    float | None, typer.Option(help="Mask ControlNet strength if the run has one (1; 0 = not used).")
]
EditDevice = Annotated[str | None, typer.Option(help="auto, cpu or cuda.")]


def _edit(operation: str, config: Path | None, given: dict[str, Any]) -> None:
    from synthmed.config import EditConfig
    from synthmed.sampling.editing import edit_from_config

    cfg = command_config(EditConfig, config, {"operation": operation} | given)
    for path in edit_from_config(cfg):
        err.print(f"wrote {path}")


@edit_app.command("insert")
@user_errors
def edit_insert(
    run: EditRun = None,
    image: EditImage = None,
    region: Annotated[
        Path | None, typer.Option(help="Binary mask at the image's size: where the lesion goes.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Lesion class, e.g. malignant.")] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    resample: EditResample = None,
    conditioning_scale: EditScale = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Insert a lesion of class --label into --region; only the region's pixels change.

    Writes the edited image, <stem>_mask.png (the new lesion's mask: the region) and <stem>.json
    (provenance, incl. the measured largest change outside the region: 0).
    """
    given = {"run_dir": run, "image": image, "region": region, "label": label, "out": out, "seed": seed}
    given |= {
        "steps": steps,
        "resample": resample,
        "conditioning_scale": conditioning_scale,
        "device": device,
    }
    _edit("insert", config, given)


@edit_app.command("remove")
@user_errors
def edit_remove(
    run: EditRun = None,
    image: EditImage = None,
    mask: Annotated[
        Path | None, typer.Option(help="Binary mask at the image's size: the artefact or implant.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Class the fill comes from, e.g. normal (default: unconditional).")
    ] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    resample: EditResample = None,
    conditioning_scale: EditScale = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Fill --mask with plausible anatomy (inpainting); only the masked pixels change."""
    given = {"run_dir": run, "image": image, "region": mask, "label": label, "out": out, "seed": seed}
    given |= {
        "steps": steps,
        "resample": resample,
        "conditioning_scale": conditioning_scale,
        "device": device,
    }
    _edit("remove", config, given)


@edit_app.command("harmonize")
@user_errors
def edit_harmonize(
    run: EditRun = None,
    image: EditImage = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="0 keeps the image (up to the autoencoder), 1 ignores it; 0.2-0.5 change the look."
        ),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Target class, site or scanner of the run.")] = None,
    region: Annotated[Path | None, typer.Option(help="Optional binary mask: harmonise only there.")] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Render an image in the look of --label (SDEdit: noise to --strength of the schedule, then denoise).

    The result is made at the model's resolution and enlarged back to the input's size.
    """
    given = {"run_dir": run, "image": image, "region": region, "label": label, "out": out, "seed": seed}
    given |= {"steps": steps, "strength": strength, "device": device}
    _edit("harmonize", config, given)


@app.command()
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
    synthetic: Annotated[
        Path | None, typer.Option(help="Synthetic images, e.g. a `synthmed generate` folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder: report.json + report.html.")] = None,
    masks: Annotated[
        bool,
        typer.Option(
            "--masks",
            help="Condition fidelity: masks <stem>_mask*.png (beside images or in mask/), or 3D label maps.",
        ),
    ] = False,
    image_size: Annotated[
        int | None, typer.Option(help="Common square size of all images (default 64).")
    ] = None,
    extractor: Annotated[
        Path | None, typer.Option(help="Local .pt2/TorchScript feature network instead of the in-house one.")
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
    from synthmed.evaluation.run import evaluate as run_evaluation

    given = {
        "real": real,
        "holdout": holdout,
        "synthetic": synthetic,
        "run_dir": run_dir,
        "out": out,
        "masks": masks or None,
        "image_size": image_size,
        "extractor": extractor,
        "max_images": max_images,
        "bootstrap": bootstrap,
        "copy_percentile": copy_percentile,
        "seed": seed,
    }
    cfg = command_config(EvaluateConfig, config, given)
    report = run_evaluation(cfg)
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


class Task(StrEnum):
    classify = "classify"
    segment = "segment"


@app.command("benchmark-augmentation")
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
        Path | None, typer.Option(help="A `synthmed generate` folder (with manifest.jsonl).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for results.json, results.csv, report.html.")
    ] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(help="Arm to run (repeatable): real, real+synthetic, synthetic, pretrain."),
    ] = None,
    ratio: Annotated[list[float] | None, typer.Option(help="Synthetic:real ratio (repeatable).")] = None,
    real_fraction: Annotated[
        list[float] | None, typer.Option(help="Fraction of the real training images (repeatable).")
    ] = None,
    minority_class: Annotated[str | None, typer.Option(help="Class to subsample to a prevalence.")] = None,
    minority_fraction: Annotated[float | None, typer.Option(help="Prevalence of --minority-class.")] = None,
    fill_class: Annotated[
        str | None, typer.Option(help="real+synthetic arms add synthetic images of this class only.")
    ] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Training seed (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per arm (fixed budget).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Common square image size (default 64).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for 95% intervals.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with AugmentationConfig fields.")
    ] = None,
) -> None:
    """Does synthetic data help? Train a downstream model with and without it; test on real images.

    Arms: real only (standard augmentation), real + synthetic at each ratio, synthetic only, and
    synthetic pre-training + real fine-tuning, over seeds and real-data fractions, with paired bootstrap
    CIs against the real-only arm. Refuses a test image the generator was trained on (decoded pixels are
    compared, so re-encoded copies count); says "not checked" and why when it cannot tell.
    """
    from synthmed.downstream.run import benchmark

    given = {
        "task": task.value if task else None,
        "real_train": real_train,
        "real_test": real_test,
        "synthetic": synthetic,
        "out": out,
        "arms": arm or None,
        "ratios": ratio or None,
        "real_fractions": real_fraction or None,
        "minority_class": minority_class,
        "minority_fraction": minority_fraction,
        "fill_class": fill_class,
        "seeds": seed or None,
        "steps": steps,
        "image_size": image_size,
        "bootstrap": bootstrap,
    }
    cfg = command_config(AugmentationConfig, config, given)
    leak = benchmark(cfg)["leak_check"]
    err.print(
        f"leak check: {'passed' if leak['checked'] else leak['reason']}", highlight=False, soft_wrap=True
    )
    err.print(f"done: {cfg.out / 'report.html'}")


@app.command()
@user_errors
def regenerate(
    manifest: Annotated[Path, typer.Argument(help="A manifest.jsonl written by synthmed generate.")],
    file: Annotated[str, typer.Option(help="The row's file name, e.g. PNEUMONIA/syn_00000003.png.")],
    out: Annotated[Path, typer.Option(help="Where to write the regenerated PNG (3D: a .nii.gz file).")],
    run: Annotated[
        Path | None, typer.Option(help="Run directory (default: the one in the manifest row).")
    ] = None,
) -> None:
    """Re-create one image (PNG) or volume (NIfTI) of a manifest from its recorded seed and settings."""
    from synthmed.artifacts.images import save_png
    from synthmed.artifacts.manifest import read_manifest
    from synthmed.data.volumes import save_nifti
    from synthmed.sampling.pipeline import Pipeline
    from synthmed.sampling.volumes import regenerate_volume

    rows = [r for r in read_manifest(manifest) if r.get("file") == file]
    if not rows:
        raise SynthmedError(f"no row for '{file}'", path=manifest)
    row = rows[-1]
    pipe = Pipeline.load(
        run or row["run_dir"], device=row["device"], precision=row["precision"], checkpoint=row["checkpoint"]
    )
    if pipe.cfg.data.volume is not None:
        volume, affine = regenerate_volume(pipe, row)
        save_nifti(volume, affine, out, dtype="float32")
    else:
        save_png(pipe.regenerate(row), out, int(row.get("bit_depth", 8)))
    err.print(f"done: {out}")


@app.command()
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


class ExportFormat(StrEnum):
    png = "png"
    nifti = "nifti"
    dicom = "dicom"


@app.command()
@user_errors
def export(
    fmt: Annotated[
        ExportFormat | None,
        typer.Option("--format", help="png (2D), nifti (.nii.gz) or dicom (marked synthetic, masks as SEG)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder: imagesTr/, labelsTr/, dataset.json, manifest.csv.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this synthetic data set (default: all).")] = None,
    database: Annotated[
        str | None,
        typer.Option(help="Catalogue URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a previous export in --out (other files there stay).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with ExportConfig fields.")
    ] = None,
) -> None:
    """Export the approved synthetic samples as a training corpus (nnU-Net / Decathlon layout).

    Writes imagesTr/<case>_0000 files, labelsTr/ for masks and label maps, dataset.json and manifest.csv
    (provenance and checksums of every case). DICOM objects get new UIDs, placeholder patient attributes
    (nothing is copied from source files), Synthetic Data = YES and a series description naming the model.
    """
    from synthmed.catalogue.export import export_approved

    given = {"format": fmt.value if fmt else None, "out": out, "dataset": dataset, "database": database}
    given["overwrite"] = overwrite or None  # unset: the config file's value, else False
    cfg = command_config(ExportConfig, config, given)
    with catalogue_session(cfg.database) as session:
        summary = export_approved(session, cfg.out, cfg.format, dataset=cfg.dataset, overwrite=cfg.overwrite)
    classes = ", ".join(f"{label} {n}" for label, n in sorted(summary["classes"].items()))
    err.print(f"done: {summary['cases']} cases ({classes}; {summary['labelled']} with labels) in {cfg.out}")


@app.command()
def presets() -> None:
    """List the architecture presets."""
    import yaml

    typer.echo(yaml.safe_dump(PRESETS, sort_keys=False))
