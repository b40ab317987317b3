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
        hold_d, _ = nearest(holdout, train)
        threshold = float(np.percentile(hold_d.numpy(), 100 - percentile))
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
    """The ``count`` flagged synthetic images closest to a training image (relative to each threshold)."""
    rows = []
    for space, a in audits.items():
        for i in np.flatnonzero(a.flagged):
            ratio = a.distance[i] / a.threshold if a.threshold > 0 else 0.0
            rows.append(
                {
                    "synthetic": int(i),
                    "train": int(a.nearest[i]),
                    "space": space,
                    "distance": float(a.distance[i]),
                    "ratio": float(ratio),
                }
            )
    rows.sort(key=lambda r: r["ratio"])
    seen, out = set(), []
    for r in rows:
        if r["synthetic"] not in seen:
            seen.add(r["synthetic"])
            out.append(r)
    return out[:count]


def audit(
    spaces: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], percentile: float
) -> tuple[dict[str, SpaceAudit], dict[str, Any]]:
    """Audit each space given as (train, holdout, synthetic) unit vectors; flagged = flagged in any space."""
    audits = {name: SpaceAudit.run(*vectors, percentile) for name, vectors in spaces.items()}
    flagged = np.logical_or.reduce([a.flagged for a in audits.values()])
    copied = {int(a.nearest[i]) for a in audits.values() for i in np.flatnonzero(a.flagged)}
    summary = {
        "percentile": percentile,
        "flagged_fraction": float(flagged.mean()),
        "flagged": int(flagged.sum()),
        "distinct_train_images_copied": len(copied),
        "n_synthetic": len(flagged),
        "spaces": {name: a.summary() for name, a in audits.items()},
    }
    return audits, summary
