"""The grey foundation autoencoder under a multi-channel 2D diffusion model: each channel encoded on its own.

Colour (RGB fundus, dermoscopy, histology) and multi-contrast images have C channels; the shipped foundation
autoencoder takes one. Each channel of a (B, C, H, W) image is encoded as a grey image and the channels'
latents are concatenated, (B, C * L, H/f, W/f) for L latent channels: the UNet sees every channel's latents at
once and learns how the channels go together (colour), while each channel keeps the foundation
autoencoder's detail. It costs C encodings and decodings per image instead of training a colour autoencoder
(``autoencoder.source: train`` does that instead).

Like :mod:`synthmed.models.slicewise`, the module has the ``encode``/``decode`` of MONAI's ``AutoencoderKL``.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn


class ChannelWiseAutoencoder(nn.Module):
    """``autoencoder`` (one channel) applied to each of ``channels`` image channels."""

    def __init__(self, autoencoder: AutoencoderKL, channels: int) -> None:
        super().__init__()
        self.autoencoder, self.channels = autoencoder, channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> latent mean and sigma, each (B, C * L, H/f, W/f), channel-major."""
        mu, sigma = self.autoencoder.encode(x.reshape(-1, 1, *x.shape[2:]))
        return _join(mu, len(x)), _join(sigma, len(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C * L, H/f, W/f) latents -> (B, C, H, W) images."""
        per_channel = z.reshape(len(z) * self.channels, -1, *z.shape[2:])
        return _join(self.autoencoder.decode(per_channel), len(z))


def _join(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B * C, K, ...) -> (B, C * K, ...): each image's channels side by side."""
    return x.reshape(batch, -1, *x.shape[2:])
