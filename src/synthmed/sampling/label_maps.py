"""Label maps as ControlNet conditions for 3D generation (MAISI style): channel encodings, and the
database of candidate label maps that new volumes are generated for.

Encodings of a (B, 1, X, Y, Z) map with ``num_labels`` classes (background 0 included):

- ``onehot``: one channel per foreground class (C = num_labels - 1; background is all channels zero);
- ``bits``: MAISI's binary encoding, channel i holding bit i of the class index, so C = ceil(log2
  num_labels) and MAISI's 132 classes fit in 8 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.transforms import Affine, ResizeWithPadOrCrop
from monai.utils import convert_to_tensor

from synthmed.errors import SynthmedError

Encoding = Literal["onehot", "bits"]
#: Augmentation ranges (MAISI's are similar): rotation per axis, relative scale, shift in voxels.
MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.1
MAX_SHIFT_VOXELS = 3.0


def encoding_channels(num_labels: int, encoding: Encoding) -> int:
    """Channels of the ControlNet condition for ``num_labels`` classes, background 0 included."""
    if num_labels < 2:
        raise SynthmedError(
            f"must count background and at least one structure (>= 2), got {num_labels}", field="num_labels"
        )
    if encoding == "onehot":
        return num_labels - 1
    if encoding == "bits":
        return (num_labels - 1).bit_length()  # ceil(log2(num_labels)) without float rounding
    raise SynthmedError(f"unknown encoding {encoding!r}; choose onehot or bits", field="encoding")


def check_label_range(labels: torch.Tensor, num_labels: int) -> None:
    """Every value must be a class index in [0, num_labels): anything else would be silently mis-encoded."""
    if labels.is_floating_point():
        raise SynthmedError(f"label maps must be integer tensors, got {labels.dtype}", field="labels")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_labels:
        bad = lo if lo < 0 else hi
        raise SynthmedError(
            f"label value {bad} is outside 0..{num_labels - 1} (num_labels={num_labels} counts background "
            "0); raise num_labels or remap the label map",
            field="labels",
        )


def encode_labels(labels: torch.Tensor, num_labels: int, encoding: Encoding) -> torch.Tensor:
    """(B, 1, *spatial) integer label maps -> (B, C, *spatial) float32 condition (see module docstring)."""
    channels = encoding_channels(num_labels, encoding)
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise SynthmedError(
            f"expected label maps (B, 1, *spatial), got shape {tuple(labels.shape)}", field="labels"
        )
    check_label_range(labels, num_labels)
    if encoding == "onehot":
        values = torch.arange(1, num_labels, device=labels.device)
    else:
        values = 2 ** torch.arange(channels, device=labels.device)
    shape = (1, channels) + (1,) * (labels.ndim - 2)
    values = values.view(shape)
    hits = labels == values if encoding == "onehot" else (labels & values) != 0
    return hits.float()


def decode_labels(encoded: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """Inverse of `encode_labels` (B, C, *spatial) -> (B, 1, *spatial) int64; thresholds at 0.5, so it
    also reads a network's soft output. One-hot ties go to the lowest class."""
    on = encoded > 0.5
    if encoding == "onehot":
        index = on.float().argmax(dim=1, keepdim=True) + 1
        return torch.where(on.any(dim=1, keepdim=True), index, 0).long()
    weights = (2 ** torch.arange(encoded.shape[1], device=encoded.device)).view(1, -1, *[1] * (on.ndim - 2))
    return (on.long() * weights).sum(dim=1, keepdim=True)


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
