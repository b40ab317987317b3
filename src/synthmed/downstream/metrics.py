"""Test-set metrics with percentile-bootstrap 95% CIs, and paired differences between arms.

Every run is scored on the same bootstrap resamples of the test images (one index matrix per benchmark),
so the difference of two arms on each resample is a paired bootstrap of their difference; means over
seeds are taken per resample too, so pooled CIs include test-set sampling but not seed-to-seed noise
beyond the seeds run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from synthmed.evaluation.condition import per_image_scores

#: Test-image indices -> {metric name: value}; NaN where undefined on that resample.
Scorer = Callable[[np.ndarray], dict[str, float]]


@dataclass
class Scores:
    """Point estimates (M,) on the whole test set and (B, M) values on the bootstrap resamples."""

    names: list[str]
    point: np.ndarray
    boots: np.ndarray

    def minus(self, other: Scores) -> Scores:
        return Scores(self.names, self.point - other.point, self.boots - other.boots)

    def summary(self) -> dict[str, dict[str, Any]]:
        """{metric: {"value", "ci95"}}; None where undefined (e.g. AUROC with one class present)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give None below
            lo, hi = np.nanpercentile(self.boots, [2.5, 97.5], axis=0)
        return {
            name: {"value": _num(v), "ci95": None if np.isnan(a) else [float(a), float(b)]}
            for name, v, a, b in zip(self.names, self.point, lo, hi, strict=True)
        }


def mean_scores(runs: list[Scores]) -> Scores:
    """Mean over seeds, per resample."""
    return Scores(runs[0].names, np.mean([r.point for r in runs], 0), np.mean([r.boots for r in runs], 0))


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def score(scorer: Scorer, n: int, indices: np.ndarray) -> Scores:
    point = scorer(np.arange(n))
    boots = np.array([list(scorer(idx).values()) for idx in indices])
    return Scores(list(point), np.array(list(point.values())), boots)


def classification_scorer(y_true: np.ndarray, prob: np.ndarray, class_names: list[str]) -> Scorer:
    """Macro-F1, balanced accuracy, AUROC (one-vs-rest macro for 3+ classes) and F1 per class."""
    labels = list(range(len(class_names)))

    def scorer(idx: np.ndarray) -> dict[str, float]:
        y, p = y_true[idx], prob[idx]
        pred = p.argmax(1)
        per_class = f1_score(y, pred, average=None, labels=labels, zero_division=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a resample may miss a class
            out = {"macro_f1": float(per_class.mean()), "balanced_accuracy": balanced_accuracy_score(y, pred)}
        out["auroc"] = _auroc(y, p, labels)
        return out | {f"f1[{c}]": float(f) for c, f in zip(class_names, per_class, strict=True)}

    return scorer


def _auroc(y: np.ndarray, prob: np.ndarray, labels: list[int]) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    if len(labels) == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # a class absent: NaN for that class
            return float(roc_auc_score(y, prob, multi_class="ovr", labels=labels))
    except ValueError:  # a class absent from this resample
        return float("nan")


def segmentation_scorer(pred: Any, target: Any) -> Scorer:
    """Mean Dice over images and mean HD95 (pixels) over images where both masks have foreground."""
    dice, hd_both, both = per_image_scores(pred, target)
    hd95 = np.full(both.shape, np.nan)
    hd95[both] = hd_both

    def scorer(idx: np.ndarray) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no image with HD95 in this resample
            return {"dice": float(dice[idx].mean()), "hd95": float(np.nanmean(hd95[idx]))}

    return scorer
