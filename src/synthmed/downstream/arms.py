"""The arms of the protocol (issue 19) and the training set each one trains on.

- baseline ``real``: the real images with the standard augmentation, plain loss;
- controls, what one can do without a generator: ``oversample`` (real images of the fill class, or of every
  class, repeated, as many as the synthetic images added at each ratio), ``weighted`` (class-weighted
  loss; classification) and ``augment`` (as many deformed copies of real images, by the deformations that
  draw new masks for the mask ControlNet);
- synthetic arms: ``real+synthetic`` and ``real+selected`` (only images that pass the selection, in k-center
  order) at each ratio and synthetic loss weight, ``pretrain`` (synthetic pre-training, then real
  fine-tuning) and ``synthetic`` (synthetic only).

The number added at a ratio is ``ratio`` x the real images of the fill class (rarity) or x all real images
(scarcity), capped by the synthetic pool, and the count-matched controls add exactly that many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from synthmed.config import AugmentationConfig
from synthmed.downstream.data import Labelled, Sets, real_subset, synthetic_subset
from synthmed.downstream.deform import deform_pair
from synthmed.errors import SynthmedError

BASELINE = "real"
CONTROLS = ("oversample", "weighted", "augment")
SYNTHETIC = ("real+synthetic", "real+selected", "pretrain", "synthetic")
TASK_ARMS = {
    "classify": (
        "real",
        "oversample",
        "weighted",
        "real+synthetic",
        "real+selected",
        "pretrain",
        "synthetic",
    ),
    "segment": ("real", "oversample", "augment", "real+synthetic", "real+selected", "pretrain", "synthetic"),
}
RATIO_ARMS = ("oversample", "augment", "real+synthetic", "real+selected")
MIXED = ("real+synthetic", "real+selected")
#: Arms that draw on no synthetic image (nor count-match to them): all a run without a synthetic set does.
REAL_ONLY_ARMS = ("real", "weighted")

#: (real fraction, seed) -> the synthetic pool that passed the selection, in the order to take it.
SelectedPool = Callable[[float, int], Labelled]


@dataclass(frozen=True)
class Arm:
    """One training configuration. ``fraction`` is None for synthetic-only (no real images); ``ratio`` is
    set for count-matched controls and mixed arms, ``weight`` (synthetic loss weight) for mixed arms."""

    name: str
    ratio: float | None = None
    fraction: float | None = None
    weight: float | None = None

    @property
    def kind(self) -> str:
        return "baseline" if self.name == BASELINE else "control" if self.name in CONTROLS else "synthetic"

    @property
    def label(self) -> str:
        text = self.name + (f" x{self.ratio:g}" if self.ratio is not None else "")
        return text + (f" w{self.weight:g}" if self.weight is not None else "")


@dataclass
class TrainingSet:
    data: Labelled
    n_real: int
    n_synthetic: int = 0
    n_copies: int = 0  # repeated or deformed real images (controls)
    sample_weights: torch.Tensor | None = None
    class_weighted: bool = False
    pretrain_on: Labelled | None = None
    info: dict[str, Any] = field(default_factory=dict)


def plan_arms(cfg: AugmentationConfig) -> list[Arm]:
    """Every arm at every real fraction (synthetic-only once), in a fixed order."""
    names = cfg.arms or TASK_ARMS[cfg.task]
    wrong = [n for n in names if n not in TASK_ARMS[cfg.task]]
    if wrong:
        raise SynthmedError(
            f"arms {wrong} are not available for --task {cfg.task} (available: {list(TASK_ARMS[cfg.task])})",
            field="arms",
        )
    needing = [n for n in names if n not in REAL_ONLY_ARMS]
    if cfg.synthetic is None and needing:
        raise SynthmedError(
            f"arms {needing} need a synthetic set: give one, or run only {list(REAL_ONLY_ARMS)}",
            field="synthetic",
        )
    plan: list[Arm] = []
    for f in cfg.real_fractions:
        for name in TASK_ARMS[cfg.task]:
            if name not in names or name == "synthetic":
                continue
            if name in MIXED:
                plan += [Arm(name, r, f, w) for r in cfg.ratios for w in cfg.synthetic_weights]
            elif name in RATIO_ARMS:
                plan += [Arm(name, r, f) for r in cfg.ratios]
            else:
                plan.append(Arm(name, None, f))
    return plan + ([Arm("synthetic")] if "synthetic" in names else [])


def fill_pool(sets: Sets, cfg: AugmentationConfig) -> Labelled:
    """The synthetic images mixed arms draw from: all, or only ``cfg.fill_class``."""
    if cfg.fill_class is None:
        return sets.synthetic
    pool = torch.nonzero(sets.synthetic.labels == sets.class_index(cfg.fill_class, "fill_class")).flatten()
    if not len(pool):
        raise SynthmedError(f"the synthetic set has no '{cfg.fill_class}' images", path=cfg.synthetic)
    return sets.synthetic.take(pool)


def added_count(arm: Arm, real: Labelled, sets: Sets, cfg: AugmentationConfig) -> int:
    """Images added at ``arm.ratio``: of the fill class's real count (or all real images), capped by the
    synthetic pool, so controls and synthetic arms at one ratio add the same number."""
    assert arm.ratio is not None
    return min(round(arm.ratio * _base(real, sets, cfg)), len(fill_pool(sets, cfg)))


def training_set(
    arm: Arm, sets: Sets, cfg: AugmentationConfig, seed: int, selected: SelectedPool
) -> TrainingSet:
    """What ``arm`` trains on for ``seed`` (see the module docstring)."""
    if arm.fraction is None:  # synthetic only
        return TrainingSet(sets.synthetic, 0, len(sets.synthetic))
    real = real_subset(sets, cfg, arm.fraction, seed)
    if arm.name == "weighted":
        return TrainingSet(real, len(real), class_weighted=True)
    if arm.name == "pretrain":
        return TrainingSet(
            real, len(real), pretrain_on=sets.synthetic, info={"n_pretrain": len(sets.synthetic)}
        )
    if arm.name not in RATIO_ARMS:
        return TrainingSet(real, len(real))
    n = added_count(arm, real, sets, cfg)
    if arm.name in ("oversample", "augment"):
        copies = _copies(real, sets, cfg, n, seed, deform=arm.name == "augment")
        return TrainingSet(real.concat(copies), len(real), n_copies=len(copies))
    if arm.name == "real+selected":  # the first n in selection order
        pool = selected(arm.fraction, seed)
        syn = pool.take(torch.arange(min(n, len(pool))))
    else:
        syn = synthetic_subset(fill_pool(sets, cfg), n, seed)
    weight = arm.weight if arm.weight is not None else 1.0
    weights = torch.cat([torch.ones(len(real)), torch.full((len(syn),), weight)])
    info = {"ratio_achieved": round(len(syn) / max(1, _base(real, sets, cfg)), 3), "n_wanted": n}
    return TrainingSet(real.concat(syn), len(real), len(syn), sample_weights=weights, info=info)


def _base(real: Labelled, sets: Sets, cfg: AugmentationConfig) -> int:
    if cfg.fill_class is None:
        return len(real)
    return int((real.labels == sets.class_index(cfg.fill_class, "fill_class")).sum())


def _copies(
    real: Labelled, sets: Sets, cfg: AugmentationConfig, n: int, seed: int, *, deform: bool
) -> Labelled:
    """``n`` real images of the fill class (or of all classes), each repeated in turn in a seeded order;
    with ``deform`` each copy is deformed (images with their masks) by its own seeded deformation."""
    pool = torch.arange(len(real))
    if cfg.fill_class is not None:
        pool = torch.nonzero(real.labels == sets.class_index(cfg.fill_class, "fill_class")).flatten()
    if n and not len(pool):
        raise SynthmedError(f"no real '{cfg.fill_class}' image to repeat in this run", field="fill_class")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))] if n else pool
    idx = order.repeat(-(-n // max(1, len(order))))[:n]
    copies = real.take(idx)
    if not deform:
        return copies
    images, targets = copies.images.clone(), copies.targets.clone()
    for i in range(n):
        mask = targets[i] if cfg.task == "segment" else torch.zeros_like(images[i], dtype=torch.uint8)
        images[i], new_mask = deform_pair(images[i], mask, seed * 1_000_003 + i)
        if cfg.task == "segment":
            targets[i] = new_mask
    return Labelled(images, copies.labels, targets, copies.sources)
