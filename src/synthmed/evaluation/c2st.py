"""Classifier two-sample tests (C2ST, Lopez-Paz & Oquab 2017): the machine's visual Turing test.

A classifier is trained to tell real holdout images from synthetic ones and scored on images it did not
train on (k-fold cross-validation, every image predicted once). Accuracy 0.5 means the sets cannot be told
apart; 1.0 means every synthetic image gives itself away (blur, texture, artefacts, missing anatomy).

Two classifiers:
- a small CNN trained from scratch on the pixels (the in-house ResNet, no jitter augmentation: brightness,
  contrast and noise differences are exactly what it must be free to see). Under the null hypothesis its
  held-out correct count is Binomial(n, 1/2), which gives the p-value (the test of the C2ST paper);
- a linear probe (logistic regression) on the evaluation extractor's features, whose p-value comes from
  scikit-learn's permutation test (the probe is refitted on permuted labels).
Accuracies carry Wilson 95% intervals (which always contain the estimate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, permutation_test_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.proportion import proportion_confint

from synthmed.evaluation.features import ExtractorSettings, InHouseExtractor, train_loop

MIN_PER_SET = 10
CNN_WIDTHS = (8, 16, 32, 64)  # MONAI ResNet has four stages


def accuracy_summary(correct: np.ndarray, p_value: float) -> dict[str, Any]:
    """Accuracy of boolean ``correct`` with its Wilson 95% interval, the p-value and the count."""
    n, k = len(correct), int(correct.sum())
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    acc = k / n  # statsmodels' bound at k = n comes out a rounding error below 1
    return {
        "accuracy": acc,
        "ci95": [min(float(lo), acc), max(float(hi), acc)],
        "p_value": float(p_value),
        "n": n,
    }


def balanced(
    real: torch.Tensor, synthetic: torch.Tensor, seed: int
) -> tuple[torch.Tensor, np.ndarray, list[torch.Tensor]]:
    """Equal-sized random samples of both sets stacked, labels (0 real, 1 synthetic), the picked indices."""
    m = min(len(real), len(synthetic))
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(x), generator=g)[:m] for x in (real, synthetic)]
    return torch.cat([real[picks[0]], synthetic[picks[1]]]), np.repeat([0, 1], m), picks


def _folds(y: np.ndarray, folds: int, seed: int) -> StratifiedKFold:
    return StratifiedKFold(n_splits=min(folds, int(np.bincount(y).min())), shuffle=True, random_state=seed)


def _fit_cnn(images: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> InHouseExtractor:
    torch.manual_seed(seed)
    model = InHouseExtractor(2, CNN_WIDTHS, full_resolution_stem=True, in_channels=images.shape[1])
    settings = ExtractorSettings(steps=steps, widths=CNN_WIDTHS, seed=seed, jitter=False)

    def batch_loss(x: torch.Tensor, labels: torch.Tensor | None, _: torch.Generator) -> torch.Tensor:
        assert model.class_head is not None and labels is not None
        return F.cross_entropy(model.class_head(model.backbone(x)).float(), labels)

    train_loop(model, images, y, settings, batch_loss)
    return model.eval()


def cnn_predictions(images: torch.Tensor, y: np.ndarray, *, folds: int, steps: int, seed: int) -> np.ndarray:
    """Held-out prediction (0/1) for every image: one CNN per fold, trained on the other folds."""
    pred = np.zeros(len(y), dtype=np.int64)
    labels = torch.from_numpy(y)
    for i, (train, test) in enumerate(_folds(y, folds, seed).split(np.zeros(len(y)), y)):
        model = _fit_cnn(images[train], labels[train], steps, seed + i)
        pred[test] = model.predict(images[test]).numpy()
    return pred


def cnn_c2st(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    *,
    folds: int,
    steps: int,
    seed: int,
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """The CNN test on all images, and on each group's subset of the same held-out predictions.

    ``groups`` maps a name (a class) to (indices into ``real``, indices into ``synthetic``): its accuracy
    is that of the classifier trained on every class, scored on the group's images only.
    """
    if min(len(real), len(synthetic)) < MIN_PER_SET:
        return {"not_computed": f"needs at least {MIN_PER_SET} images per set"}
    images, y, picks = balanced(real, synthetic, seed)
    correct = cnn_predictions(images, y, folds=folds, steps=steps, seed=seed) == y
    out = {"all": _binomial(correct)}
    for name, (real_idx, syn_idx) in (groups or {}).items():
        member = np.concatenate([np.isin(picks[0].numpy(), real_idx), np.isin(picks[1].numpy(), syn_idx)])
        out[name] = (
            _binomial(correct[member])
            if member.sum() >= MIN_PER_SET
            else {"not_computed": f"fewer than {MIN_PER_SET} images of '{name}' in the balanced sample"}
        )
    return out | {"folds": folds, "steps": steps, "classifier": "CNN (in-house ResNet) from scratch"}


def _binomial(correct: np.ndarray) -> dict[str, Any]:
    p = scipy.stats.binomtest(int(correct.sum()), len(correct), 0.5, alternative="greater").pvalue
    return accuracy_summary(correct, p)


def pooled_accuracy(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several tests' held-out predictions counted together (e.g. the three views of a volume set)."""
    if any("accuracy" not in r for r in results):
        return {"not_computed": "a part of the pooled test was not computed"}
    correct = np.concatenate([np.arange(r["n"]) < round(r["accuracy"] * r["n"]) for r in results])
    return _binomial(correct) | {"pooled": len(results)}


def probe_c2st(
    real: torch.Tensor, synthetic: torch.Tensor, *, folds: int, permutations: int, seed: int
) -> dict[str, Any]:
    """Logistic regression on (standardised) features; permutation p-value."""
    if min(len(real), len(synthetic)) < MIN_PER_SET:
        return {"not_computed": f"needs at least {MIN_PER_SET} images per set"}
    x, y, _ = balanced(real, synthetic, seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = _folds(y, folds, seed)
    correct = cross_val_predict(probe, x.numpy(), y, cv=cv) == y
    _, _, p = permutation_test_score(
        probe, x.numpy(), y, cv=cv, n_permutations=permutations, random_state=seed
    )
    return accuracy_summary(correct, p) | {"classifier": "linear probe on extractor features"}
