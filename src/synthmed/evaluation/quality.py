"""MAISI's quality check for generated 3D volumes: is each structure's intensity plausible?

From the training volumes, each foreground label gets the [lower, upper] percentiles of its per-volume
median intensity (`intensity_bounds`). A generated volume passes when, for every label in its label map,
the median intensity inside that label lies within those bounds (`check_volume`): a cheap test that
catches the generator painting a structure with the wrong tissue, or a washed-out volume. Multi-contrast
volumes are checked channel by channel, each against its own bounds (`channel_bounds`, `check_channels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from synthmed.errors import SynthmedError
from synthmed.models.conditioning import check_label_range


def intensity_bounds(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    lower: float = 0.5,
    upper: float = 99.5,
) -> dict[int, tuple[float, float]]:
    """{label: (low, high)} percentiles over (N, 1, ...) volumes of each label's median intensity.

    Volumes without a label do not vote for it; a label found in no volume has no entry.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise SynthmedError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    if images.shape != labels.shape or images.ndim < 3 or images.shape[1] != 1:
        raise SynthmedError(
            f"expected images and label maps of one shape (N, 1, ...), got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    check_label_range(labels, num_labels)
    per_label: dict[int, list[float]] = {}
    for image, label in zip(images, labels, strict=True):
        for value, median in _label_medians(image, label).items():
            per_label.setdefault(value, []).append(median)
    return {value: _percentiles(medians, lower, upper) for value, medians in sorted(per_label.items())}


def check_volume(
    image: torch.Tensor,
    label: torch.Tensor,
    bounds: Mapping[int, Sequence[float]] | Mapping[str, Sequence[float]],
) -> dict[str, Any]:
    """Check one generated (1, X, Y, Z) volume against `intensity_bounds`; JSON-ready result.

    ``{"passed": bool, "labels": {"<label>": {"median", "lower", "upper", "status", "reason"}}}`` with
    status ``pass``, ``fail`` (median out of bounds, or a label without bounds to judge it by) or
    ``absent`` (a label with bounds that this label map lacks: reported, not a failure).
    """
    if image.shape != label.shape:
        raise SynthmedError(f"image {tuple(image.shape)} and label map {tuple(label.shape)} differ in shape")
    known = {int(k): (float(v[0]), float(v[1])) for k, v in bounds.items()}  # JSON gives str keys
    medians = _label_medians(image, label)
    results = {
        str(value): _judge(medians.get(value), known.get(value)) for value in sorted(known.keys() | medians)
    }
    passed = all(r["status"] != "fail" for r in results.values())
    return {"passed": passed, "labels": results}


def channel_bounds(
    images: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> list[dict[int, tuple[float, float]]]:
    """`intensity_bounds` of each channel of (N, C, ...) volumes: contrasts have their own intensities."""
    return [intensity_bounds(images[:, c : c + 1], labels, num_labels) for c in range(images.shape[1])]


def check_channels(
    image: torch.Tensor, label: torch.Tensor, bounds: Sequence[Mapping[str, Sequence[float]]]
) -> dict[str, Any]:
    """`check_volume` of a (C, X, Y, Z) volume, each channel against its bounds; for several channels the
    result adds ``channels`` (each one's result) and passes when every channel does; ``labels``: channel 0."""
    if len(image) != len(bounds):
        raise SynthmedError(f"{len(image)} channels but quality bounds for {len(bounds)}")
    if len(image) == 1:
        return check_volume(image, label, bounds[0])
    per = [check_volume(image[c : c + 1], label, b) for c, b in enumerate(bounds)]
    return {"passed": all(r["passed"] for r in per), "labels": per[0]["labels"], "channels": per}


def _judge(median: float | None, bound: tuple[float, float] | None) -> dict[str, Any]:
    lower, upper = bound if bound is not None else (None, None)
    entry: dict[str, Any] = {"median": median, "lower": lower, "upper": upper}
    if median is None:
        return entry | {"status": "absent", "reason": "label not in this label map"}
    if bound is None:
        reason = "no intensity bounds for this label: it occurs in no training volume"
        return entry | {"status": "fail", "reason": reason}
    if not bound[0] <= median <= bound[1]:
        reason = f"median {median:.4g} outside the training range [{bound[0]:.4g}, {bound[1]:.4g}]"
        return entry | {"status": "fail", "reason": reason}
    return entry | {"status": "pass", "reason": ""}


def _label_medians(image: torch.Tensor, label: torch.Tensor) -> dict[int, float]:
    """{foreground label: median intensity inside it} for one volume (numpy: fast on busy cores)."""
    arr = image.detach().cpu().numpy().ravel()
    lab = label.detach().cpu().numpy().ravel()
    order = np.argsort(lab, kind="stable")  # one sort groups every label's voxels
    values, starts = np.unique(lab[order], return_index=True)
    groups = np.split(arr[order], starts[1:])
    return {int(v): float(np.median(g)) for v, g in zip(values, groups, strict=True) if v != 0}


def _percentiles(medians: list[float], lower: float, upper: float) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(medians, dtype=np.float64), [lower, upper])
    return float(lo), float(hi)
