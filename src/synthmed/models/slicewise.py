"""A 2D autoencoder under a 3D diffusion model: volumes encoded and decoded slice by slice.

The shipped foundation autoencoder (2D, trained on chest X-ray, ultrasound and MRI slices) encodes each axial
slice of a (B, 1, X, Y, Z) volume (axial = the last, superior-inferior axis of synthmed's RAS volumes) and the
slices' latents are stacked back along Z: (B, C, X/f, Y/f, Z) for a 2D compression f. The 3D UNet then trains
on these latents, so a 3D run inherits the 2D autoencoder's sharpness in-plane without training a 3D
autoencoder of its own; consistency across slices is the diffusion model's job.

The module has the ``encode``/``decode`` of MONAI's ``AutoencoderKL``, so training, tiled decoding and
generation call it as they call a 3D autoencoder. The ControlNet, whose conditioning embedding downsamples
every axis by f, gets its label maps stretched f-fold along Z (:func:`control_grid`) to meet the latents.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from synthmed.config import TrainConfig
from synthmed.models.builders import build_autoencoder
from synthmed.models.channelwise import ChannelWiseAutoencoder
from synthmed.models.conditioning import Encoding, encode_labels
from synthmed.models.patched import PatchedAutoencoder

#: Slices per call of the 2D network: bounds the activations' memory whatever the batch and volume size.
SLICE_BATCH = 64


class SliceWiseAutoencoder(nn.Module):
    """``autoencoder`` (2D) applied to each axial slice of a volume; latents keep every slice."""

    def __init__(self, autoencoder: AutoencoderKL | ChannelWiseAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, X, Y, Z) -> latent mean and sigma, each (B, L, X/f, Y/f, Z) (L: 4 per channel on the
        foundation autoencoder)."""
        slices = _to_slices(x)
        parts = [self.autoencoder.encode(s) for s in slices.split(SLICE_BATCH)]
        mu, sigma = (torch.cat(p) for p in zip(*parts, strict=True))
        return _to_volume(mu, len(x)), _to_volume(sigma, len(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, X/f, Y/f, Z) latents -> (B, C, X, Y, Z) volumes."""
        slices = _to_slices(z)
        return _to_volume(torch.cat([self.autoencoder.decode(s) for s in slices.split(SLICE_BATCH)]), len(z))


def _to_slices(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B * Z, C, X, Y): axial slices, volume-major."""
    b, c, nx, ny, nz = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(b * nz, c, nx, ny)


def _to_volume(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`_to_slices`."""
    n, c, nx, ny = x.shape
    return x.reshape(batch, n // batch, c, nx, ny).permute(0, 2, 3, 4, 1)


def control_grid(control: torch.Tensor, stretch: int) -> torch.Tensor:
    """A (B, C, X, Y, Z) ControlNet input repeated ``stretch`` times along Z (nearest: labels stay exact), so
    the conditioning embedding's f-fold downsampling of every axis lands on slice-wise latents
    (``TrainConfig.control_stretch``)."""
    return control if stretch == 1 else control.repeat_interleave(stretch, dim=-1)


def label_control(
    label_maps: torch.Tensor, num_labels: int, encoding: Encoding, stretch: int
) -> torch.Tensor:
    """A 3D ControlNet's input from (B, 1, X, Y, Z) integer label maps: encoded, then on the latent grid."""
    return control_grid(encode_labels(label_maps, num_labels, encoding), stretch)


#: What encodes and decodes a run's images or volumes.
Autoencoder = AutoencoderKL | SliceWiseAutoencoder | ChannelWiseAutoencoder | PatchedAutoencoder


def build_run_autoencoder(cfg: TrainConfig) -> Autoencoder:
    """The (untrained) autoencoder of run ``cfg``: 2D or 3D AutoencoderKL, or the 2D grey one slice by slice
    (3D) and/or channel by channel (multi-channel); 2D latents folded when ``diffusion.latent_patch`` > 1."""
    if cfg.channelwise:
        grey = ChannelWiseAutoencoder(build_autoencoder(cfg.autoencoder.arch, 2), cfg.image_channels)
        return SliceWiseAutoencoder(grey) if cfg.slicewise else _patched(grey, cfg)
    if cfg.slicewise:
        return SliceWiseAutoencoder(build_autoencoder(cfg.autoencoder.arch, 2))
    model = build_autoencoder(cfg.autoencoder.arch, cfg.data.spatial_dims, cfg.image_channels)
    return _patched(model, cfg)


def _patched(model: AutoencoderKL | ChannelWiseAutoencoder, cfg: TrainConfig) -> Autoencoder:
    patch = cfg.diffusion.latent_patch
    return PatchedAutoencoder(model, patch) if patch > 1 else model


def inner_autoencoder(model: Autoencoder) -> AutoencoderKL:
    """The network whose weights a run stores (the wrapped one for slice-, channel-wise or folded latents)."""
    while not isinstance(model, AutoencoderKL):
        model = model.autoencoder
    return model
