"""Selection of synthetic images for the ``real+selected`` arms, recording every image dropped and why.

For each run (real fraction, seed), from the synthetic pool the mixed arms draw from:

1. **label confidence**: a model trained on that run's real training images only (never on test images)
   must agree with the image's label at least ``min_confidence``: for classification the probability of
   the image's class (a class-weighted classifier, so a rare class is not drowned), for segmentation the
   Dice between a real-trained segmenter's output and the image's mask (the mask is the label);
2. **privacy**: the generate privacy filter's rule: dropped if its pixel correlation with a real training
   image is closer than ``copy_percentile`` % of the real validation images are;
3. **spread**: the kept images are ordered by k-center greedy on the in-house extractor's features
   (trained on the same real images), per class, interleaved to keep the pool's class shares, so the first
   n images are the n most spread out. 3D volumes (no 2D extractor) keep a seeded random order.

Thresholds are pre-declared settings, never tuned on test results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.config import AugmentationConfig
from synthmed.downstream.data import Labelled, Sets
from synthmed.downstream.train import class_probabilities, train_classifier, train_segmentation
from synthmed.evaluation.condition import per_image_scores, segment
from synthmed.evaluation.features import ExtractorSettings, trained_extractor
from synthmed.evaluation.privacy import CopyGuard
from synthmed.evaluation.sections import default_cache_dir


@dataclass
class Selected:
    pool: Labelled  # kept images, in the order arms take them
    record: dict[str, Any]  # counts, settings and every dropped image with its reason


def privacy_guard(sets: Sets, cfg: AugmentationConfig) -> CopyGuard | None:
    """Pixel-space copy guard: real training images, calibrated on the real validation images."""
    if not cfg.selection.privacy:
        return None
    names = sets.train.sources or [f"train[{i}]" for i in range(len(sets.train))]
    return CopyGuard(sets.train.images, sets.val.images, names, cfg.selection.copy_percentile)


def select(
    pool: Labelled,
    real: Labelled,
    sets: Sets,
    cfg: AugmentationConfig,
    seed: int,
    guard: CopyGuard | None,
) -> Selected:
    """The images of ``pool`` that pass, in k-center order; ``real``: this run's real training images."""
    confidence = _confidence(pool, real, sets, cfg, seed)
    reasons: list[list[str]] = [[] for _ in range(len(pool))]
    for i, c in enumerate(confidence.tolist()):
        if c < cfg.selection.min_confidence:
            reasons[i].append(f"label confidence {c:.3f} < {cfg.selection.min_confidence}")
    verdicts = guard.check(pool.images) if guard is not None and len(pool) else []
    for i, v in enumerate(verdicts):
        if v["flagged"]:
            reasons[i].append(
                f"privacy: correlation distance {v['distance']} to {v['nearest_train']} < {v['threshold']}"
            )
    kept = torch.tensor([i for i, r in enumerate(reasons) if not r], dtype=torch.long)
    order = _spread_order(pool.take(kept), real, sets, cfg, seed) if len(kept) else kept
    record = _record(pool, sets, cfg, reasons, confidence, len(kept))
    return Selected(pool.take(kept[order]), record)


def _confidence(pool: Labelled, real: Labelled, sets: Sets, cfg: AugmentationConfig, seed: int) -> np.ndarray:
    steps = cfg.selection.model_steps or cfg.steps
    if cfg.task == "segment":
        model, _ = train_segmentation(real, sets.val, steps, cfg.batch_size, seed, cfg.eval_every)
        dice, _, _ = per_image_scores(segment(model, pool.images), pool.targets)
        return np.asarray(dice, dtype=float)
    settings = ExtractorSettings(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, flip=True)
    model, _ = train_classifier(
        real, sets.val, len(sets.class_names), settings, cfg.eval_every, class_weighted=True
    )
    prob = class_probabilities(model, pool.images)
    return prob[torch.arange(len(pool)), pool.labels].numpy().astype(float)


def _spread_order(
    kept: Labelled, real: Labelled, sets: Sets, cfg: AugmentationConfig, seed: int
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if not cfg.selection.diversity or kept.images.ndim != 4:
        return torch.randperm(len(kept), generator=gen)
    settings = ExtractorSettings(steps=cfg.selection.extractor_steps, seed=seed)
    labels = real.labels if len(sets.class_names) >= 2 else None
    extractor, _ = trained_extractor(real.images, labels, sets.class_names, settings, default_cache_dir(cfg))
    features = extractor.features(kept.images)
    per_class = {
        int(c): idx[k_center_order(features[idx], gen)]
        for c in kept.labels.unique().tolist()
        for idx in [torch.nonzero(kept.labels == c).flatten()]
    }
    return interleave(per_class, {c: len(v) for c, v in per_class.items()})


def k_center_order(features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """All rows in k-center greedy order (cosine distance of centred features): each next row is the one
    farthest from every row taken so far; the first is drawn at random."""
    n = len(features)
    x = F.normalize(features.float() - features.float().mean(0), dim=1)
    first = int(torch.randint(n, (1,), generator=gen))
    order, taken = [first], torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    dist = 1 - x @ x[first]
    for _ in range(n - 1):
        j = int(dist.masked_fill(taken, -float("inf")).argmax())
        order.append(j)
        taken[j] = True
        dist = torch.minimum(dist, 1 - x @ x[j])
    return torch.tensor(order, dtype=torch.long)


def interleave(orders: dict[int, torch.Tensor], shares: dict[int, int]) -> torch.Tensor:
    """One order from per-class orders: the class furthest below its share of the images taken so far
    goes next, so any prefix keeps the class shares."""
    total = sum(shares.values())
    taken = dict.fromkeys(orders, 0)
    out = []
    for n in range(1, sum(len(o) for o in orders.values()) + 1):
        open_ = [c for c in orders if taken[c] < len(orders[c])]
        c = max(open_, key=lambda k: shares[k] / total * n - taken[k])
        out.append(int(orders[c][taken[c]]))
        taken[c] += 1
    return torch.tensor(out, dtype=torch.long)


def _record(
    pool: Labelled,
    sets: Sets,
    cfg: AugmentationConfig,
    reasons: list[list[str]],
    confidence: np.ndarray,
    kept: int,
) -> dict[str, Any]:
    names = pool.sources or [f"synthetic[{i}]" for i in range(len(pool))]
    dropped = [
        {
            "file": names[i],
            "label": sets.class_names[int(pool.labels[i])],
            "confidence": round(float(confidence[i]), 4),
            "reasons": r,
        }
        for i, r in enumerate(reasons)
        if r
    ]
    counts = {
        "label_confidence": sum(any(x.startswith("label") for x in r) for r in reasons),
        "privacy": sum(any(x.startswith("privacy") for x in r) for r in reasons),
    }
    return {
        "pool": len(pool),
        "kept": kept,
        "dropped_counts": counts,
        "settings": cfg.selection.model_dump(mode="json"),
        "confidence": "P(own class), class-weighted classifier on the run's real training images"
        if cfg.task == "classify"
        else "Dice of a segmenter trained on the run's real training pairs with the image's mask",
        "order": "k-center greedy on in-house extractor features, per class, class shares kept"
        if cfg.selection.diversity and pool.images.ndim == 4
        else "seeded random",
        "dropped": dropped,
    }
