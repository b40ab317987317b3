"""Tiled (sliding-window) VAE decoding of large latents, as NVIDIA MAISI does for 3D generation.

Why tile: the decoder's activations at full resolution dominate memory. A 256^3 volume decoded in one call
holds several 128-256 channel feature maps of 256^3 voxels at once (tens of GiB), so peak memory grows with
the volume. Decoding tiles of a fixed latent size and stitching them on ``out_device`` (the CPU, say) bounds
the accelerator's memory by the tile, whatever the volume size.

Why MONAI's inferer: `monai.inferers.SlidingWindowInferer` already handles outputs whose spatial size is a
multiple of the input's (the compression factor), overlapping windows and gaussian blending that down-weights
tile edges, and stitching on a different device than the one the windows run on. Writing our own would
duplicate it and its tests.

Tiles are not exact: the decoder's GroupNorm normalises over each tile instead of the whole volume and the
receptive field is cut at tile borders; overlap plus gaussian blending keep that difference small (see
tests/test_tiled_decode.py for measured figures).
"""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import AutoencoderKL

from synthmed.errors import SynthmedError

#: Smallest tile (latent voxels per axis): a 1-voxel tile has no context at all for the decoder's convolutions.
MIN_TILE = 2


def decode_latents(
    autoencoder: AutoencoderKL,
    z: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: float = 0.25,
    out_device: torch.device | None = None,
) -> torch.Tensor:
    """Decode latents ``z`` (B, C, *spatial; already divided by the latent scale factor) to float32 images.

    ``tile=None``, or a tile covering every latent axis, decodes in one ``autoencoder.decode`` call.
    Otherwise windows of ``tile`` latent voxels per axis, overlapping by the fraction ``overlap``, are decoded
    one at a time on z's device and blended with gaussian weights into an output on ``out_device``
    (default: z's device), so z's device only ever holds one tile's activations.
    """
    _check(z, tile, overlap)
    out_device = torch.device(out_device) if out_device is not None else z.device
    spatial = tuple(z.shape[2:])
    if tile is None or tile >= max(spatial):
        return autoencoder.decode(z).float().to(out_device)
    # Clamp per axis: MONAI pads axes shorter than the window with zeros, which are not plausible latents.
    roi = tuple(min(tile, s) for s in spatial)
    inferer = SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=1,
        overlap=overlap,
        mode="gaussian",
        sw_device=z.device,
        device=out_device,
    )
    return inferer(z.float(), _Decoder(autoencoder, z.dtype))


class _Decoder:
    """The window predictor: decode in the caller's dtype, hand back float32 so stitching is in float32."""

    def __init__(self, autoencoder: AutoencoderKL, dtype: torch.dtype) -> None:
        self.autoencoder, self.dtype = autoencoder, dtype

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(window.to(self.dtype)).float()


def _check(z: torch.Tensor, tile: int | None, overlap: float) -> None:
    if z.ndim not in (4, 5):
        raise SynthmedError(
            f"expected latents shaped (batch, channels, *spatial) with 2 or 3 spatial axes, got {tuple(z.shape)}",
            field="latents",
        )
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
        raise SynthmedError(
            f"tile must be an integer of at least {MIN_TILE} latent voxels (or None for no tiling), got {tile!r}",
            field="tile_size",
        )
    if not 0 <= overlap < 1:
        raise SynthmedError(
            f"overlap is the fraction of a tile shared with its neighbour and must be in [0, 1), got {overlap!r}",
            field="tile_overlap",
        )
