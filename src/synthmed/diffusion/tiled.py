"""Tiled (sliding-window) VAE decoding of large latents, as NVIDIA MAISI does for 3D generation.

Why tile: the decoder's full-resolution activations dominate memory and grow with the volume. Decoding a
256^3 volume of the ``vae3d`` autoencoder in one call peaked at 14 GiB (several 64-channel 256^3 feature
maps, 4 GiB each); tiles of 16 latent voxels stitched on the CPU peaked at 0.9 GiB (benchmarks/decode3d.py).
Tiles bound the memory of z's device by the tile, whatever the volume size.

Why MONAI's inferer: `monai.inferers.SlidingWindowInferer` already handles outputs whose spatial size is a
multiple of the input's (the compression factor), overlapping windows and gaussian blending that down-weights
tile edges, and stitching on a different device than the one the windows run on. Writing our own would
duplicate it and its tests.

Tiles are not exact: the decoder's GroupNorm normalises each tile with its own statistics, not the whole
volume's, and the receptive field is cut at tile borders. Gaussian blending keeps seams from showing; the
GroupNorm difference (a few percent of the range for small tiles) shrinks as tiles grow (figures in
tests/test_tiled_decode.py).
"""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer

from synthmed.errors import SynthmedError
from synthmed.models.slicewise import Autoencoder, SliceWiseAutoencoder

#: Smallest tile (latent voxels per axis): a 1-voxel tile gives the decoder's convolutions no context.
MIN_TILE = 2


@torch.no_grad()  # sampling only: with autograd every tile's activations would be kept and memory unbounded
def decode_latents(
    autoencoder: Autoencoder,
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

    Works inside ``torch.inference_mode()`` and under bf16 autocast (tiles are stitched in float32).
    """
    _check(z, tile, overlap)
    out_device = torch.device(out_device) if out_device is not None else z.device
    spatial = tuple(z.shape[2:])
    # Slice by slice already bounds memory (a chunk of slices at a time), and in-plane tiles would only add
    # their GroupNorm error: decoded whole.
    if tile is None or tile >= max(spatial) or isinstance(autoencoder, SliceWiseAutoencoder):
        return autoencoder.decode(z).float().to(out_device)
    # Clamp per axis: MONAI pads axes shorter than the window with zeros, which are not plausible latents.
    roi = tuple(min(tile, s) for s in spatial)
    # A fresh inferer per call caches no weight map across grad modes; z.float() makes MONAI allocate the
    # stitching buffers in float32 whatever the tiles' dtype.
    inferer = SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=1,
        overlap=overlap,
        mode="gaussian",
        sw_device=z.device,
        device=out_device,
    )
    decoded = inferer(z.float(), _Decoder(autoencoder, z.dtype))
    assert isinstance(decoded, torch.Tensor)  # one tensor in, one out (MONAI types every kind it can return)
    return decoded


class _Decoder:
    """The window predictor: decode in the caller's dtype, hand back float32 so stitching is in float32."""

    def __init__(self, autoencoder: Autoencoder, dtype: torch.dtype) -> None:
        self.autoencoder, self.dtype = autoencoder, dtype

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(window.to(self.dtype)).float()


def _check(z: torch.Tensor, tile: int | None, overlap: float) -> None:
    if z.ndim not in (4, 5):
        raise SynthmedError(
            "expected latents shaped (batch, channels, *spatial) with 2 or 3 spatial axes, "
            f"got {tuple(z.shape)}",
            field="latents",
        )
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
        raise SynthmedError(
            f"tile must be an integer of at least {MIN_TILE} latent voxels, or None for no tiling; "
            f"got {tile!r}",
            field="tile_size",
        )
    if not 0 <= overlap < 1:
        raise SynthmedError(
            "overlap is the fraction of a tile shared with its neighbour and must be in [0, 1); "
            f"got {overlap!r}",
            field="tile_overlap",
        )
