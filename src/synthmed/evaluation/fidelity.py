"""Distribution metrics on features: FID, KID, precision/recall/density/coverage, with bootstrap CIs.

FID gives MONAI's `FIDMetric` value, computed faster (see `fid`). KID (Binkowski et al. 2018) and
PRDC (Naeem et al. 2020) are written out here because MONAI has neither and the reference
implementations (torchmetrics, clean-fid, `prdc`) would add dependencies for twenty lines of linear
algebra; both follow the published definitions exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from synthmed.evaluation.intervals import bias_corrected_interval

UNBOUNDED = (-np.inf, np.inf)
#: Ranges of the bootstrapped statistics (FRD is an FID on other features).
BOUNDS = {
    "fid": (0.0, np.inf),
    "frd": (0.0, np.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "coverage": (0.0, 1.0),
    "density": (0.0, np.inf),
}

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance of Gaussians fitted to the two feature sets.

    Same value as MONAI's `FIDMetric` (the tests check it), but tr sqrt(S1 S2) comes from two symmetric
    eigendecompositions instead of scipy's general `sqrtm`: 5-10x faster at 128 dimensions here (eval64),
    which makes bootstrap intervals affordable on a CPU.
    """
    x, y = real.double(), fake.double()
    s1, s2 = torch.cov(x.T), torch.cov(y.T)
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    mean_term = (x.mean(0) - y.mean(0)).pow(2).sum()
    return float(mean_term + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def kid(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> dict:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets; its standard error.

    Subsets hold at most half of the smaller set, so they differ and the standard error means something
    (the estimate is unbiased at any subset size).
    """
    gen = torch.Generator().manual_seed(seed)
    m = max(2, min(subset_size, len(real) // 2, len(fake) // 2))
    dim = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]].double()
        y = fake[torch.randperm(len(fake), generator=gen)[:m]].double()
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        mmd = (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
        values.append(float(mmd - 2 * kxy.mean()))
    arr = np.asarray(values)
    se = float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else None
    return {"value": float(arr.mean()), "se": se, "subsets": subsets, "subset_size": m}


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.topk(k + 1, largest=False).values[:, k]  # column 0 is the point itself


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` with k-NN balls."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(real, fake)  # (R, F)
    inside = d < r_real[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside.any(0).float().mean()),
        "recall": float((d < r_fake[None, :]).any(1).float().mean()),
        "density": float(inside.sum(0).float().mean() / k),
        "coverage": float((d.min(1).values < r_real).float().mean()),
    }


def bootstrap(
    metric: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
    real: torch.Tensor,
    fake: torch.Tensor,
    n_boot: int,
    seed: int,
    point: dict[str, float],
) -> dict[str, list[float]]:
    """Bias-corrected 95% intervals of each metric over resamples (with replacement) of both sets.

    Resampling repeats images, which inflates FID and deflates k-NN recall and coverage: plain percentile
    intervals then miss their own estimate (measured: FID 3.76 [5.06, 10.03]). The bootstrap's bias is
    removed from the interval instead (see :func:`bias_corrected_interval`)."""
    gen = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        a = real[torch.randint(0, len(real), (len(real),), generator=gen)]
        b = fake[torch.randint(0, len(fake), (len(fake),), generator=gen)]
        for key, value in metric(a, b).items():
            draws.setdefault(key, []).append(value)
    return {
        k: bias_corrected_interval(point[k], np.asarray(v), BOUNDS.get(k, UNBOUNDED))
        for k, v in draws.items()
    }


def _point_metrics(k: int) -> Callable[[torch.Tensor, torch.Tensor], dict[str, float]]:
    def compute(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        return {"fid": fid(real, fake), **prdc(real, fake, k)}

    return compute


def fidelity(real: torch.Tensor, fake: torch.Tensor, *, k: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Every fidelity figure of ``fake`` against ``real`` features, each {"value", "ci95"} (KID: "se")."""
    n = min(len(real), len(fake))
    if n < 2 or n <= k:
        return {
            "not_computed": f"needs more than {max(k, 1)} images in each set, got {len(real)} and {len(fake)}"
        }
    compute = _point_metrics(k)
    point = compute(real, fake)
    cis = bootstrap(compute, real, fake, n_boot, seed, point) if n_boot else {}
    out: dict[str, Any] = {key: {"value": v, "ci95": cis.get(key)} for key, v in point.items()}
    out["kid"] = kid(real, fake, seed=seed)
    out["n_real"], out["n_fake"] = len(real), len(fake)
    if n <= real.shape[1]:
        out["warning"] = (
            f"fewer images ({n}) than feature dimensions ({real.shape[1]}): the covariances behind FID are "
            "rank-deficient, so FID is inflated; compare it only with the real-vs-real floor"
        )
    return out
