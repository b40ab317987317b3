"""The diffusion UNet with its per-sample conditioning bound: ``net(x, timesteps=, class_labels=)``.

The sampler and the training tasks call every denoiser that way (2D class-conditional UNet, 3D MAISI UNet with
voxel spacing, UNet + ControlNet), so one sampling loop and one loss serve them all. Classifier-free guidance
doubles the batch as ``cat([x, x])``; the bound inputs are repeated the same way.
"""

from __future__ import annotations

import torch
from torch import nn


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
