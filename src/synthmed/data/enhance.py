"""Optional contrast enhancement of 2D images (``data.enhance``): CLAHE and unsharp masking (scikit-image).

Low-contrast modalities (chest X-ray, ultrasound) keep much of their structure in a narrow intensity band;
local histogram equalisation and sharpening spread it out before the model sees it. The transforms take and
return (C, H, W) images in [0, 1], so they slot into the MONAI preprocessing pipeline between resizing and
padding, where they see the image content only, never the zero padding.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Compose, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from skimage.exposure import equalize_adapthist
from skimage.filters import unsharp_mask

from synthmed.config import EnhanceConfig


class Enhancement(Transform):
    """An intensity-only step applied to each (H, W) channel; geometry-only pipelines (masks) drop it.

    Input: a (C, H, W) tensor or array in [0, 1]; output: the same kind, float32, clipped to [0, 1].
    scikit-image works on numpy, so a tensor goes through the CPU and comes back on its device.
    """

    # MONAI declares backend an instance attribute; it is the same for every instance.
    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]  # type: ignore[misc]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if arr.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects a (C, H, W) image, got shape {arr.shape}")
        # skimage rejects floats outside [-1, 1] and the contract is [0, 1]: clip interpolation overshoot.
        arr = np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0)
        out = np.empty_like(arr)
        for c, channel in enumerate(arr):
            out[c] = self.channel(channel)
        np.clip(out, 0.0, 1.0, out=out)
        dtype = torch.float32 if isinstance(img, torch.Tensor) else np.float32
        return convert_to_dst_type(out, img, dtype=dtype)[0]

    def channel(self, image: np.ndarray) -> np.ndarray:
        """One (H, W) float32 channel in [0, 1] -> the enhanced channel."""
        raise NotImplementedError


class CLAHE(Enhancement):
    """Contrast-limited adaptive histogram equalisation (``skimage.exposure.equalize_adapthist``).

    Equalises each tile's histogram, so faint local structure gains contrast whatever the global
    brightness; ``clip_limit`` caps how far noise in flat regions is amplified. ``kernel_size`` is the
    tile side in pixels (None: 1/8 of each image side, skimage's default). A constant channel is returned
    unchanged: skimage would turn it into all ones, inventing a bright image from a blank one.
    """

    def __init__(self, clip_limit: float = 0.01, kernel_size: int | None = None, nbins: int = 256) -> None:
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size
        self.nbins = nbins

    def channel(self, image: np.ndarray) -> np.ndarray:
        if image.size == 0 or image.min() == image.max():
            return image
        return equalize_adapthist(
            image, kernel_size=self.kernel_size, clip_limit=self.clip_limit, nbins=self.nbins
        )


class UnsharpMask(Enhancement):
    """Unsharp masking (``skimage.filters.unsharp_mask``): adds ``amount`` x (image - Gaussian blur of
    sigma ``radius``), which steepens edges and fine texture while leaving flat regions and the mean
    brightness nearly unchanged."""

    def __init__(self, radius: float = 1.0, amount: float = 1.0) -> None:
        self.radius = radius
        self.amount = amount

    def channel(self, image: np.ndarray) -> np.ndarray:
        return unsharp_mask(image, radius=self.radius, amount=self.amount, preserve_range=True)


def build_enhancement(cfg: EnhanceConfig) -> Compose:
    """The steps of ``cfg.method``: clahe, sharpen, double_clahe (CLAHE applied twice, for stronger local
    contrast) or clahe_sharpen (CLAHE, then unsharp mask: contrast first, so the sharpening acts on it)."""
    clahe = CLAHE(cfg.clip_limit, cfg.kernel_size, cfg.nbins)
    sharpen = UnsharpMask(cfg.sharpen_radius, cfg.sharpen_amount)
    steps: dict[str, list[Transform]] = {
        "clahe": [clahe],
        "sharpen": [sharpen],
        "double_clahe": [clahe, clahe],
        "clahe_sharpen": [clahe, sharpen],
    }
    return Compose(steps[cfg.method])
