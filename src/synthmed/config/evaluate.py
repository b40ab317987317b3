"""Everything ``synthmed evaluate`` needs (``benchmark-augmentation``: config.downstream)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from synthmed.config.base import Strict


class EvaluateConfig(Strict):
    """Everything `synthmed evaluate` needs: three image folders and the metric settings."""

    real: Path | None = Field(
        None,
        description="Real training images the generator was trained on (class folders or flat); default: the "
        "training split of the run named by the synthetic folder's manifest.",
    )
    holdout: Path | None = Field(
        None,
        description="Real images the generator never saw: the real-vs-real reference; default: the holdout "
        "split of that run (same distribution). Given beside a run, it is reported as a second floor and "
        "checked for a shift.",
    )
    reference_split: Literal["holdout", "val"] = Field(
        "holdout",
        description="Which split of the run is the unseen real reference: holdout to report a generator; val "
        "to compare settings while choosing them, so the holdout stays untouched by the choice.",
    )
    synthetic: Path = Field(description="Synthetic images, e.g. the output folder of `synthmed generate`.")
    run_dir: Path | None = Field(
        None, description="Run whose split gives the real sets (default: the one the manifest names)."
    )
    out: Path = Field(description="Report folder: report.json, report.html and its images.")
    masks: bool = Field(
        False,
        description="Evaluate condition fidelity: masks <stem>_mask*.png beside images or in a mask/ folder.",
    )
    image_size: int = Field(64, ge=16, le=1024, description="Every set is resized to this square size.")
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    clip_percentiles: tuple[float, float] = (0.0, 99.0)
    max_images: int | None = Field(None, ge=10, description="Seeded random subset per set (default: all).")
    extractor: Path | None = Field(
        None,
        description="Local .pt2/TorchScript feature network instead of the in-house one (never downloaded).",
    )
    extractor_size: int = Field(224, ge=16, description="Input size the local feature network expects.")
    extractor_steps: int = Field(600, ge=1, description="Training steps of the in-house extractor.")
    segmenter_steps: int = Field(400, ge=1, description="Training steps of the condition-fidelity segmenter.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for the 95% intervals (0: none).")
    prdc_k: int = Field(5, ge=1, description="Neighbours for precision/recall/density/coverage.")
    copy_percentile: float = Field(
        99.0,
        gt=50.0,
        lt=100.0,
        description="Flag a synthetic image closer to training than this % of holdout.",
    )
    msssim_pairs: int = Field(300, ge=2, description="Random pairs per set for the MS-SSIM diversity.")
    c2st_folds: int = Field(5, ge=2, le=20, description="C2ST: cross-validation folds.")
    c2st_steps: int = Field(
        100, ge=1, description="C2ST: training steps of each fold's CNN (calibrated: real-vs-real and blur)."
    )
    c2st_permutations: int = Field(200, ge=10, description="C2ST linear probe: permutations for its p-value.")
    slice_fraction: float = Field(0.5, gt=0.0, le=1.0, description="3D: central fraction of slices per view.")
    volume_size: tuple[int, int, int] | None = Field(
        None,
        description="3D: voxels (x, y, z) after resampling; default: the size the synthetic folder's volumes "
        "were generated at (its manifest), else 64 x 64 x 64.",
    )
    volume_spacing: tuple[float, float, float] | None = Field(
        None,
        description="3D: target spacing in mm; default: the spacing the synthetic folder's volumes were "
        "generated at (its manifest), else each file's own.",
    )
    modality: Literal["mri", "ct"] = Field(
        "mri", description="3D intensity handling: MRI percentiles, CT window."
    )
    cache_dir: Path | None = Field(
        None, description="Cache for data and extractors (default ~/.cache/synthmed)."
    )
    seed: int = 0
