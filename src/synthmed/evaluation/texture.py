"""A weight-free, texture-aware distance: the Fréchet radiomics distance (FRD) on hand-crafted features.

FRD (Konz et al. 2024) is the Fréchet distance between Gaussians fitted to standardised radiomic features
(first-order intensity statistics, grey-level co-occurrence texture, local binary patterns) instead of a
network's features: nothing is downloaded, and texture and blur move it, which ImageNet-style features barely
see. The maintained package (frd-score) pulls OpenCV and SimpleITK (about 130 MB) and PyRadiomics, and works
on files in folders; the same feature families come here from scikit-image, already a dependency, on the
evaluation's in-memory images.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from synthmed.evaluation.fidelity import bootstrap, fid
from synthmed.evaluation.sharpness import laplacian_energy

LEVELS = 32  # grey levels of the co-occurrence matrices
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
DISTANCES = (1, 2, 4)
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
LBP_POINTS = 8
MIN_IMAGES = 10  # a covariance of fewer images says nothing


def _image_features(img: np.ndarray) -> np.ndarray:
    """First-order, GLCM (averaged over 4 angles, per distance) and uniform-LBP histogram features."""
    flat = img.ravel()
    hist = np.histogram(flat, bins=LEVELS, range=(0.0, 1.0))[0] / flat.size
    first = [
        flat.mean(),
        flat.std(),
        scipy.stats.skew(flat),
        scipy.stats.kurtosis(flat),
        *np.percentile(flat, (10, 50, 90)),
        -(hist[hist > 0] * np.log2(hist[hist > 0])).sum(),
    ]
    q = np.clip((img * LEVELS).astype(np.uint8), 0, LEVELS - 1)
    glcm = graycomatrix(q, DISTANCES, ANGLES, levels=LEVELS, symmetric=True, normed=True)
    texture = [graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]
    lbp = local_binary_pattern(q, LBP_POINTS, 1, method="uniform")
    lbp_hist = np.histogram(lbp, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))[0] / lbp.size
    return np.nan_to_num(np.concatenate([first, *texture, lbp_hist]), nan=0.0)


def radiomic_features(images: torch.Tensor) -> torch.Tensor:
    """(N, D) features of (N, C, H, W) images in [0, 1] (channel mean), plus the mean |Laplacian|."""
    grey = images.float().mean(1).clamp(0, 1).numpy()
    feats = np.stack([_image_features(img) for img in grey])
    lap = laplacian_energy(images).numpy()[:, None]
    return torch.from_numpy(np.concatenate([feats, lap], axis=1)).double()


def standardise(reference: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-scores with the reference set's mean and standard deviation (features have very different scales)."""
    mean, std = reference.mean(0), reference.std(0).clamp(min=1e-8)
    return [(x - mean) / std for x in (reference, *others)]


def frd(reference: torch.Tensor, other: torch.Tensor, *, n_boot: int, seed: int) -> dict[str, object]:
    """FRD of ``other`` against ``reference`` standardised radiomic features, with its bootstrap 95% CI."""
    if min(len(reference), len(other)) < MIN_IMAGES:
        return {"not_computed": f"needs {MIN_IMAGES} images per set, got {len(reference)} and {len(other)}"}
    value = fid(reference, other)
    if not n_boot:
        return {"value": value, "ci95": None}
    ci = bootstrap(lambda a, b: {"frd": fid(a, b)}, reference, other, n_boot, seed, {"frd": value})
    return {"value": value, "ci95": ci["frd"]}
