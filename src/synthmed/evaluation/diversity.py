"""Diversity: mean pairwise MS-SSIM within a set (MONAI `MultiScaleSSIMMetric`, 2D or 3D).

A synthetic set whose pairs are more similar than pairs of real images lacks diversity (mode collapse);
one far less similar may be producing noise. Random pairs are drawn within each set, so the figure is
comparable between sets of different sizes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

from synthmed.evaluation.intervals import mean_ci

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
# (kernel size, scales) by preference: the standard 11-pixel kernel and as many scales as the image allows.
_CANDIDATES = ((11, 5), (11, 4), (7, 4), (11, 3), (7, 3), (11, 2), (7, 2), (5, 2), (3, 2))


def ms_ssim_settings(spatial: tuple[int, ...]) -> dict[str, Any]:
    """Kernel and scales that fit ``spatial``, by MONAI's rule ``size // (scales - 1)**2 > kernel - 1``."""
    smallest = min(spatial)
    for kernel, scales in _CANDIDATES:
        if smallest // max(1, scales - 1) ** 2 > kernel - 1:
            w = np.asarray(STANDARD_WEIGHTS[:scales])
            return {"kernel_size": kernel, "scales": scales, "weights": (w / w.sum()).round(4).tolist()}
    raise ValueError(f"images of size {spatial} are too small for MS-SSIM")


def random_pairs(n: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (count,), generator=gen)
    j = (i + torch.randint(1, n, (count,), generator=gen)) % n  # never pairs an image with itself
    return i, j


def pairwise_ms_ssim(images: torch.Tensor, pairs: int, seed: int, batch_size: int = 64) -> dict[str, Any]:
    """Mean MS-SSIM of random distinct pairs of (N, 1, *spatial) images, with a bootstrap 95% CI."""
    n = images.shape[0]
    if n < 2:
        return {"not_computed": f"needs at least 2 images, got {n}"}
    settings = ms_ssim_settings(tuple(images.shape[2:]))
    metric = MultiScaleSSIMMetric(
        spatial_dims=images.ndim - 2,
        data_range=1.0,
        kernel_size=settings["kernel_size"],
        weights=settings["weights"],
    )
    i, j = random_pairs(n, pairs, seed)
    values = torch.cat(
        [
            cast(torch.Tensor, metric(images[a].float(), images[b].float())).flatten()
            for a, b in zip(i.split(batch_size), j.split(batch_size), strict=True)
        ]
    ).numpy()
    return {
        **mean_ci(values, np.random.default_rng(seed), 1000),
        "pairs": len(values),
        **settings,
    }
