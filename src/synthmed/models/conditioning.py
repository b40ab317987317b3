"""How the diffusion UNet is conditioned: its per-sample inputs bound as
``net(x, timesteps=, class_labels=)``, and 3D label maps encoded as ControlNet channels (MAISI style).

The sampler and the training tasks call every denoiser that way (2D class-conditional UNet, 3D MAISI UNet with
voxel spacing, UNet + ControlNet), so one sampling loop and one loss serve them all. Classifier-free guidance
doubles the batch as ``cat([x, x])``; the bound inputs are repeated the same way.

Encodings of a (B, 1, X, Y, Z) label map with ``num_labels`` classes (background 0 included):

- ``onehot``: one channel per foreground class (C = num_labels - 1; background is all channels zero);
- ``bits``: MAISI's binary encoding, channel i holding bit i of the class index, so C = ceil(log2
  num_labels) and MAISI's 132 classes fit in 8 channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from synthmed.errors import SynthmedError

Encoding = Literal["onehot", "bits"]


def _repeat(value: torch.Tensor, n: int) -> torch.Tensor:
    if n % len(value):
        raise ValueError(f"batch of {n} is not a multiple of the {len(value)} conditioning inputs")
    return value.repeat(n // len(value), *([1] * (value.ndim - 1)))


class ConditionedUNet(nn.Module):
    """``unet`` with its voxel ``spacing`` (N, 3) in mm and a ControlNet on ``control`` (N, C, *full-res)
    bound; either may be None (plain 2D UNet)."""

    def __init__(
        self,
        unet: nn.Module,
        spacing: torch.Tensor | None = None,
        controlnet: nn.Module | None = None,
        control: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if (controlnet is None) != (control is None):
            raise ValueError("a ControlNet needs its conditioning input and vice versa")
        self.unet, self.controlnet = unet, controlnet
        self.spacing, self.control, self.scale = spacing, control, scale

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        extra: dict[str, object] = {}
        if self.spacing is not None:
            extra["spacing_tensor"] = _repeat(self.spacing, len(x)).to(x.dtype)
        if self.controlnet is not None and self.control is not None and self.scale:
            down, mid = self.controlnet(
                x,
                timesteps,
                controlnet_cond=_repeat(self.control, len(x)).to(x.dtype),
                conditioning_scale=self.scale,
                class_labels=class_labels,
            )
            extra |= {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x, timesteps=timesteps, class_labels=class_labels, **extra)


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


def check_label_range(labels: torch.Tensor, num_labels: int, path: Path | None = None) -> None:
    """Every value must be a class index in [0, num_labels): anything else would be silently mis-encoded.
    ``path``: the label map file given for generation, named in the error (num_labels is fixed by then)."""
    if labels.is_floating_point():
        raise SynthmedError(f"label maps must be integer tensors, got {labels.dtype}", field="labels")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_labels:
        bad = lo if lo < 0 else hi
        if path is not None:
            raise SynthmedError(
                f"label value {bad} is not one of this model's labels 0..{num_labels - 1}; remap the label "
                f"map to those values (data.volume.num_labels applies only when training)",
                path=path,
            )
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
