"""Bootstrap intervals shared by the evaluation's figures; every interval contains its point estimate."""

from __future__ import annotations

from typing import Any

import numpy as np


def mean_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """The mean with its bootstrap 95% interval."""
    value = float(values.mean())
    means = rng.choice(values, size=(n_boot, len(values))).mean(1)
    return {"value": value, "ci95": bias_corrected_interval(value, means)}


def ratio_ci(num: np.ndarray, den: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """mean(num) / mean(den) with a bias-corrected bootstrap 95% interval (both sets resampled)."""
    value = float(num.mean() / den.mean())
    draws = np.array(
        [rng.choice(num, len(num)).mean() / rng.choice(den, len(den)).mean() for _ in range(n_boot)]
    )
    return {"value": value, "ci95": bias_corrected_interval(value, draws, (0.0, np.inf))}


def bias_corrected_interval(
    point: float, draws: np.ndarray, bounds: tuple[float, float] = (-np.inf, np.inf)
) -> list[float]:
    """Percentile 95% interval of bootstrap ``draws`` shifted by the bootstrap's bias estimate
    (mean(draws) - point), so a statistic that resampling biases (FID, ratios, k-NN coverage) gets an
    interval centred where its estimate is; widened to include ``point`` if the draws are very skewed, and
    kept inside the statistic's ``bounds`` (a share cannot exceed 1, a distance cannot fall below 0)."""
    shift = float(np.mean(draws)) - point
    lo, hi = (float(np.percentile(draws, q)) - shift for q in (2.5, 97.5))
    return [max(min(lo, point), bounds[0]), min(max(hi, point), bounds[1])]
