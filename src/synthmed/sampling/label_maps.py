"""The database of candidate label maps that new 3D volumes are generated for (MAISI style): the
training label maps, drawn by seed and optionally deformed. Their encoding as ControlNet channels is in
models.conditioning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Affine, ResizeWithPadOrCrop
from monai.utils import convert_to_tensor

from synthmed.errors import SynthmedError

#: Augmentation ranges (MAISI's are similar): rotation per axis, relative scale, shift in voxels.
MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.1
MAX_SHIFT_VOXELS = 3.0


def lost_shares(full: torch.Tensor, fitted: torch.Tensor) -> dict[int, float]:
    """Share of each foreground label's voxels in the (N, 1, X, Y, Z) or (1, X, Y, Z) maps ``full`` that
    their crops ``fitted`` no longer hold (0 where nothing is cut)."""
    labels = [int(v) for v in full.unique().tolist() if v > 0]
    return {v: 1.0 - int((fitted == v).sum()) / int((full == v).sum()) for v in labels}


def keeping_size(maps: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """The smallest size per axis whose centred crop (as :func:`fit` crops) keeps every labelled voxel of
    each (1, X, Y, Z) map in ``maps``."""
    need = [0, 0, 0]
    for label in maps:
        found = label[0].nonzero()
        if not len(found):
            continue
        for axis, n in enumerate(label.shape[1:]):
            lo, hi = int(found[:, axis].min()), int(found[:, axis].max())
            # MONAI's centred crop of s voxels keeps [n // 2 - s // 2, n // 2 - s // 2 + s)
            s = next(s for s in range(1, n + 1) if n // 2 - s // 2 <= lo and n // 2 - s // 2 + s > hi)
            need[axis] = max(need[axis], s)
    return tuple(need)


def check_crop(
    lost: dict[int, float], extent: tuple[int, ...], size: Sequence[int], limit: float, what: str
) -> None:
    """Warn with each label's share lost to a crop to ``size``; refuse above ``limit`` (naming ``what``)."""
    cut = {v: s for v, s in sorted(lost.items()) if s > 0}
    if not cut:
        return
    shares = ", ".join(f"label {v} loses {s:.0%}" for v, s in cut.items())
    message = (
        f"{what}: --size {tuple(size)} crops the labelled structures ({shares}); give --size of at least "
        f"{extent} (keeps every labelled voxel at this spacing)"
    )
    if max(cut.values()) > limit:
        raise SynthmedError(f"{message}, or raise max_label_loss (now {limit})", field="size")
    warnings.warn(message, stacklevel=3)


def fit(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(1, X, Y, Z) label map centre-cropped or zero-padded (background) to ``size``, still int64."""
    out = ResizeWithPadOrCrop(tuple(size), mode="constant", value=0)(label)
    return convert_to_tensor(out, track_meta=False).long()


class CandidateLabelMaps:
    """MAISI's candidate mask database: the training label maps, from which each generated volume's
    condition is drawn, optionally deformed so that new volumes need not copy a training anatomy exactly."""

    def __init__(self, labels: torch.Tensor, keys: Sequence[str], spacing: Sequence[float]) -> None:
        if labels.ndim != 5 or labels.shape[1] != 1 or labels.is_floating_point():
            raise SynthmedError(
                f"expected integer label maps (N, 1, X, Y, Z), got {tuple(labels.shape)} {labels.dtype}",
                field="labels",
            )
        if len(keys) != labels.shape[0] or not len(keys):
            raise SynthmedError(f"{len(keys)} keys for {labels.shape[0]} label maps", field="keys")
        self.labels, self.keys = labels.long().cpu(), list(keys)
        self.spacing = tuple(float(s) for s in spacing)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def sample(self, seed: int, *, augment: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """One (1, X, Y, Z) int64 label map and its provenance; the same seed always gives the same map."""
        rng = np.random.default_rng(seed)
        index = int(rng.integers(len(self)))
        label = self.labels[index].clone()  # callers may edit it; the database must not change
        info: dict[str, Any] = {"key": self.keys[index], "seed": seed, "augment": augment}
        if augment:
            label, params = _deform(label, rng)
            info.update(params)
        return label, info


def _deform(label: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """A small random rotation, scaling and shift, drawn from ``rng`` (so recorded and replayable).

    Nearest neighbour only copies existing values, so the result holds no class that was not there;
    what moves out of the box is lost and what moves in is background.
    """
    rotate = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3)
    scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE, 3)
    shift = rng.uniform(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS, 3)
    affine = Affine(
        rotate_params=np.deg2rad(rotate).tolist(),
        scale_params=scale.tolist(),
        translate_params=shift.tolist(),
        mode="nearest",
        padding_mode="zeros",
        image_only=True,
    )
    # float32 holds class indices exactly up to 2**24; round() only undoes the cast.
    out = convert_to_tensor(affine(label.float()), track_meta=False).round().long()
    params = {"rotate_deg": rotate.tolist(), "scale": scale.tolist(), "shift_voxels": shift.tolist()}
    return out, params
