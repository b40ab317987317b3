"""Memorisation audit: is a synthetic image closer to a training image than real unseen images ever are?

For every synthetic image we find its nearest training image, in pixel space (normalised correlation,
which ignores brightness and contrast) and in feature space (cosine distance of centred features).
Real holdout images, which the model never saw, give the reference: their own nearest-training
distances. A synthetic image is flagged as a likely copy when it is closer to a training image than
``percentile`` % of holdout images are (the holdout's (100 - percentile)-th distance percentile), so by
construction about (100 - percentile) % of genuinely new images are flagged too: that is the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def pixel_vectors(images: torch.Tensor) -> torch.Tensor:
    """Flattened, zero-mean, unit-norm images: their dot product is the Pearson correlation."""
    flat = images.flatten(1).float()
    return F.normalize(flat - flat.mean(1, keepdim=True), dim=1)


def feature_vectors(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Unit-norm features centred on the training mean (raw post-ReLU features all point one way)."""
    return F.normalize(features.float() - centre, dim=1)


def nearest(query: torch.Tensor, ref: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (1 - similarity) to, and index of, the nearest ``ref`` row for each ``query`` row."""
    dists, idx = [], []
    for q in query.split(chunk):
        best = (q @ ref.T).max(1)
        dists.append(1 - best.values)
        idx.append(best.indices)
    return torch.cat(dists).clamp(min=0), torch.cat(idx)


def calibrate(train: torch.Tensor, holdout: torch.Tensor, percentile: float) -> tuple[torch.Tensor, float]:
    """Holdout-to-train nearest distances and the copy threshold: their (100 - percentile)-th percentile."""
    hold_d, _ = nearest(holdout, train)
    return hold_d, float(np.percentile(hold_d.numpy(), 100 - percentile))


class CopyGuard:
    """Pixel-space copy check of new images against the training images, calibrated on holdout images.

    Used by ``synthmed generate --privacy-filter``; pixel space needs no trained extractor, so it can run
    inside generation. ``synthmed evaluate`` audits feature space too.
    """

    def __init__(
        self, train: torch.Tensor, holdout: torch.Tensor, train_sources: list[str], percentile: float
    ) -> None:
        self.train, self.sources, self.percentile = pixel_vectors(train), train_sources, percentile
        _, self.threshold = calibrate(self.train, pixel_vectors(holdout), percentile)

    def check(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: flagged?, its distance and nearest training file, and the threshold used."""
        d, idx = nearest(pixel_vectors(images), self.train)
        return [
            {
                "flagged": bool(dist < self.threshold),
                "distance": round(float(dist), 6),
                "nearest_train": self.sources[int(i)],
                "threshold": round(self.threshold, 6),
                "percentile": self.percentile,
            }
            for dist, i in zip(d, idx, strict=True)
        ]


@dataclass
class SpaceAudit:
    """One space's audit: the threshold from the holdout and, per synthetic image, its nearest neighbour."""

    threshold: float
    holdout_distance: np.ndarray
    distance: np.ndarray
    nearest: np.ndarray
    flagged: np.ndarray

    @classmethod
    def run(
        cls, train: torch.Tensor, holdout: torch.Tensor, synthetic: torch.Tensor, percentile: float
    ) -> SpaceAudit:
        hold_d, threshold = calibrate(train, holdout, percentile)
        d, idx = nearest(synthetic, train)
        return cls(threshold, hold_d.numpy(), d.numpy(), idx.numpy(), (d < threshold).numpy())

    def summary(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "flagged_fraction": float(self.flagged.mean()),
            "flagged": int(self.flagged.sum()),
            "holdout_flagged_fraction": float((self.holdout_distance < self.threshold).mean()),
            "median_distance": float(np.median(self.distance)),
            "holdout_median_distance": float(np.median(self.holdout_distance)),
        }


def top_pairs(audits: dict[str, SpaceAudit], count: int) -> list[dict[str, Any]]:
    """The ``count`` synthetic images closest to a training image in every space, flagged or not.

    Closeness is the largest distance/threshold ratio over the spaces (below 1 everywhere = flagged);
    the pair shown is the pixel-space nearest neighbour, the one a reader can judge by eye.
    """
    ratios = np.stack([a.distance / max(a.threshold, 1e-12) for a in audits.values()]).max(0)
    shown = next(iter(audits.values()))
    return [
        {
            "synthetic": int(i),
            "train": int(shown.nearest[i]),
            "ratio": round(float(ratios[i]), 4),
            "flagged": bool(ratios[i] < 1),
            "distance": {space: round(float(a.distance[i]), 6) for space, a in audits.items()},
        }
        for i in np.argsort(ratios, kind="stable")[:count]
    ]


def audit(
    spaces: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], percentile: float
) -> tuple[dict[str, SpaceAudit], dict[str, Any]]:
    """Audit each space given as (train, holdout, synthetic) unit vectors, the first being pixel space.

    A likely copy is flagged in every space: closeness in feature space alone also catches blurry,
    average-looking images that sit near a hub of the feature space without resembling any patient.
    Each space's own flags are reported too.
    """
    audits = {name: SpaceAudit.run(*vectors, percentile) for name, vectors in spaces.items()}
    flagged = np.logical_and.reduce([a.flagged for a in audits.values()])
    pixel = next(iter(audits.values()))
    summary = {
        "percentile": percentile,
        "flagged_fraction": float(flagged.mean()),
        "flagged": int(flagged.sum()),
        "holdout_flagged_fraction": float(
            np.logical_and.reduce([a.holdout_distance < a.threshold for a in audits.values()]).mean()
        ),
        "distinct_train_images_copied": len({int(pixel.nearest[i]) for i in np.flatnonzero(flagged)}),
        "n_synthetic": len(flagged),
        "spaces": {name: a.summary() for name, a in audits.items()},
    }
    return audits, summary
