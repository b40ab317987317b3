"""Latent cells folded into channels (space to depth) between a 2D autoencoder and its diffusion UNet.

At 128 or 256 px the shipped 4x foundation autoencoder gives 32x32 or 64x64 latents: a UNet over them costs
4x or 16x small64's. Folding each p x p block of latent cells into channels (``torch.nn.functional``'s
``pixel_unshuffle``; DiT's patch size, Würstchen's and SD3's 2x2 latent patches) gives the UNet 16x16 or 32x32
cells of 4 p^2 channels, so 128 px trains at small64's cost while the images keep the autoencoder's full
resolution and detail. The UNet's first convolution sees every folded cell at once; nothing is discarded
(unfolding is exact).

Like :mod:`synthmed.models.channelwise`, the module has the ``encode``/``decode`` of MONAI's
``AutoencoderKL`` and wraps any of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL
from torch import nn

from synthmed.models.channelwise import ChannelWiseAutoencoder


class PatchedAutoencoder(nn.Module):
    """``autoencoder`` whose (B, L, h, w) latents are folded to (B, L p^2, h/p, w/p)."""

    def __init__(self, autoencoder: AutoencoderKL | ChannelWiseAutoencoder, patch: int) -> None:
        super().__init__()
        self.autoencoder, self.patch = autoencoder, patch

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> folded latent mean and sigma."""
        mu, sigma = self.autoencoder.encode(x)
        return F.pixel_unshuffle(mu, self.patch), F.pixel_unshuffle(sigma, self.patch)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Folded latents -> (B, C, H, W) images."""
        return self.autoencoder.decode(F.pixel_shuffle(z, self.patch))
