"""Sharpness and texture of images: mean absolute Laplacian and the radially averaged power spectrum.

Blur is what a latent autoencoder loses first, and feature-based distances barely see it, so it is measured
directly on the pixels: the mean |Laplacian| (edge and fine-texture energy) and the share of spectral power
above half the Nyquist frequency, each for the synthetic set beside the real holdout (the floor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.evaluation.intervals import mean_ci, ratio_ci

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
SPECTRUM_BINS = 32


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean |Laplacian| (4-neighbour kernel, valid pixels only) of (N, C, H, W) images in [0, 1]."""
    x = images.float()
    kernel = _LAPLACIAN.to(x.device)[None, None].repeat(x.shape[1], 1, 1, 1)
    lap = F.conv2d(x, kernel, groups=x.shape[1])
    return lap.abs().mean(dim=(1, 2, 3))


def _power(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image power spectrum (N, H, W) of the channel-mean image with its mean removed (the DC term says
    nothing about detail), and each frequency's radius as a fraction of Nyquist (H, W)."""
    x = images.float().mean(1)
    x = x - x.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2)
    fy, fx = torch.meshgrid(torch.fft.fftfreq(x.shape[-2]), torch.fft.fftfreq(x.shape[-1]), indexing="ij")
    return power, (fy.pow(2) + fx.pow(2)).sqrt() / 0.5


def radial_spectrum(images: torch.Tensor, bins: int = SPECTRUM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (fractions of Nyquist) and the per-image radially averaged power spectrum (N, bins)."""
    power, radius = _power(images)
    index = (radius * bins).long().clamp(max=bins).flatten()  # corners beyond Nyquist: an overflow bin
    sums = torch.zeros(len(power), bins + 1).index_add_(1, index, power.flatten(1))
    counts = torch.bincount(index, minlength=bins + 1).clamp(min=1)
    return (np.arange(bins) + 0.5) / bins, (sums / counts)[:, :bins].numpy()


def high_frequency_share(images: torch.Tensor) -> np.ndarray:
    """Per image: the share of (mean-removed) spectral power above half the Nyquist frequency."""
    power, radius = _power(images)
    return (power[:, radius > 0.5].sum(1) / power.sum(dim=(1, 2)).clamp(min=1e-12)).numpy()


def sharpness(images: dict[str, torch.Tensor], n_boot: int, seed: int) -> dict[str, Any]:
    """Laplacian energy and high-frequency share of each named set (keys: synthetic, holdout, train), the
    synthetic / holdout ratios, and the mean spectra for the plot."""
    rng = np.random.default_rng(seed)
    lap = {n: laplacian_energy(x).numpy() for n, x in images.items()}
    high = {n: high_frequency_share(x) for n, x in images.items()}
    freqs, _ = radial_spectrum(images["holdout"][:1])
    out: dict[str, Any] = {
        "laplacian": {n: mean_ci(v, rng, n_boot) for n, v in lap.items()},
        "high_frequency_share": {n: mean_ci(v, rng, n_boot) for n, v in high.items()},
        "sharpness_ratio": ratio_ci(lap["synthetic"], lap["holdout"], rng, n_boot),
        "high_frequency_ratio": ratio_ci(high["synthetic"], high["holdout"], rng, n_boot),
        "spectrum": {"frequency": freqs.tolist()}
        | {n: radial_spectrum(x)[1].mean(0).tolist() for n, x in images.items()},
    }
    if images["holdout"].shape[1] > 1:  # colour: a channel can lose detail the joint figure hides
        out["per_channel"] = [_channel(images, c, rng, n_boot) for c in range(images["holdout"].shape[1])]
    return out


def _channel(
    images: dict[str, torch.Tensor], c: int, rng: np.random.Generator, n_boot: int
) -> dict[str, Any]:
    """One channel's sharpness ratio and its mean intensity per set (colour balance)."""
    lap = {n: laplacian_energy(x[:, c : c + 1]).numpy() for n, x in images.items()}
    return {
        "channel": c,
        "sharpness_ratio": ratio_ci(lap["synthetic"], lap["holdout"], rng, n_boot),
        "mean_intensity": {
            n: mean_ci(x[:, c].float().mean((1, 2)).numpy(), rng, n_boot) for n, x in images.items()
        },
    }
