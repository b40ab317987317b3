"""Everything ``synthmed benchmark-augmentation`` needs: the proof-of-utility protocol (issue 19)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from synthmed.config.base import Strict

ArmName = Literal[
    "real",
    "oversample",
    "weighted",
    "augment",
    "real+synthetic",
    "real+selected",
    "pretrain",
    "synthetic",
]


class SelectionConfig(Strict):
    """Which synthetic images the ``real+selected`` arms may use; every dropped image is recorded with why."""

    min_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Keep an image only if a model trained on the run's real training images agrees with "
        "its label at least this much: classify, the probability of its class; segment, the Dice of a "
        "real-trained segmenter's output with its mask. Pre-declared, never tuned on test results.",
    )
    privacy: bool = Field(
        True,
        description="Drop images closer (pixel correlation) to a real training image than copy_percentile % "
        "of the real validation images are (the generate privacy filter's rule).",
    )
    copy_percentile: float = Field(99.0, gt=50.0, lt=100.0)
    diversity: bool = Field(
        True, description="Take the kept images in k-center greedy order of their features (spread first)."
    )
    extractor_steps: int = Field(
        300, ge=1, description="Training steps of the in-house feature extractor used for k-center."
    )
    model_steps: int | None = Field(
        None, ge=1, description="Training steps of the confidence model (default: the arms' steps)."
    )


class AugmentationConfig(Strict):
    """Everything `synthmed benchmark-augmentation` needs: does synthetic data help a downstream model?"""

    task: Literal["classify", "segment"] = Field(
        "classify", description="classify: ResNet classifier; segment: UNet on <stem>_mask* masks."
    )
    real_train: Path = Field(
        description="Real training images (class folders); the validation split comes from here."
    )
    real_test: Path = Field(description="Real test images the generator never saw (class folders).")
    synthetic: Path | None = Field(
        None,
        description="Synthetic images as `synthmed generate` writes them: <label>/*.png and manifest.jsonl. "
        "Needed by every arm but real and weighted; without it only those run (a real-data reference).",
    )
    out: Path = Field(description="Output folder: results.json, results.csv and report.html.")
    image_size: int = Field(64, ge=16, le=1024, description="Every set is resized to this square size.")
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    volume_size: tuple[int, int, int] = Field(
        (64, 64, 64), description="3D (segment on NIfTI folders): voxels (x, y, z) after crop/pad."
    )
    arms: list[ArmName] | None = Field(
        None,
        description="Training arms. Baseline: real. Controls: oversample (minority, or all, real images "
        "repeated, count-matched to each ratio's synthetic images), weighted (class-weighted loss; "
        "classify), augment (count-matched deformed copies of real images). Synthetic: real+synthetic, "
        "real+selected (selection), pretrain (synthetic pre-training, real fine-tuning), synthetic (only). "
        "Default: all that apply to the task.",
    )
    ratios: list[float] = Field(
        [0.25, 0.5, 1.0, 2.0],
        description="Synthetic images added, as a multiple of the real fill_class images (rarity) or of all "
        "real training images (no fill_class: scarcity).",
    )
    synthetic_weights: list[float] = Field(
        [1.0],
        description="Loss weight of a synthetic image relative to a real one (each mixed arm runs at "
        "each). Segmentation: the rate at which a synthetic pair is drawn into batches (its Dice loss is "
        "batch-wide).",
    )
    real_fractions: list[float] = Field(
        [1.0], description="Fractions of the real training images used (scarcity sweep), stratified."
    )
    minority_class: str | None = Field(None, description="Class subsampled to minority_fraction prevalence.")
    minority_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="Prevalence of minority_class in the real training images."
    )
    fill_class: str | None = Field(
        None,
        description="real+synthetic arms add synthetic images of this class only (fill a minority gap) "
        "and oversample repeats its real images; the synthetic and pretrain arms still use every synthetic "
        "image.",
    )
    primary_metric: str | None = Field(
        None,
        description="Metric that picks the strongest control and the best synthetic arm (on the validation "
        "split) and is corrected for multiplicity: default macro_f1 (classify) or dice (segment); e.g. "
        "f1[NORMAL] for a rare class.",
    )
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    seeds: list[int] = Field(
        [0, 1, 2, 3, 4], min_length=1, description="One training run per seed and arm (5 by default)."
    )
    steps: int = Field(
        400, ge=1, description="Optimiser steps per arm (pretrain: this on synthetic, then on real)."
    )
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of the classifier's one-cycle schedule.")
    val_fraction: float = Field(
        0.15,
        gt=0.0,
        lt=0.9,
        description="Stratified real validation split (early stopping, arm choice), from real_train.",
    )
    eval_every: int = Field(
        25, ge=1, description="Validation every this many steps; the best weights are kept."
    )
    bootstrap: int = Field(
        1000, ge=10, description="Bootstrap resamples (test images and seeds) for the 95% CIs."
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Family-wise error rate of the Holm correction across arms."
    )
    cache_dir: Path | None = Field(None, description="Cache for loaded images (default ~/.cache/synthmed).")
    seed: int = Field(0, description="Seed of the validation split, the bootstrap and the selection.")
    resume: bool = Field(
        True,
        description="Reuse the runs a stopped benchmark finished in out/runs/ (kept per configuration and "
        "data; a changed setting or image never reuses them); false trains every run again.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.minority_class is None) != (self.minority_fraction is None):
            raise ValueError("minority_class and minority_fraction must be given together")
        if any(r <= 0 for r in self.ratios) or any(not 0 < f <= 1 for f in self.real_fractions):
            raise ValueError("ratios must be > 0 and real_fractions in (0, 1]")
        if any(w <= 0 for w in self.synthetic_weights) or not self.synthetic_weights:
            raise ValueError("synthetic_weights must be > 0 (at least one)")
        if self.arms is not None and not self.arms:
            raise ValueError("arms must name at least one arm")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self
