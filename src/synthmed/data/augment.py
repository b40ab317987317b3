"""Light geometric augmentation of 2D training images for the diffusion stage (``diffusion.augment``).

Seeded, affine only and small (a few degrees, a few per cent): the generator should learn the slight pose
variation of real acquisitions, not new anatomy. No left-right flips (a chest X-ray's heart would change
side). The strong affine + elastic deformations of the downstream protocol are ``downstream.deform``.
"""

from __future__ import annotations

import math

import torch
from monai.transforms import RandAffine
from monai.utils import convert_to_tensor


def affine_copies(
    images: torch.Tensor, copies: int, seed: int, rotate_deg: float, scale: float, translate: float
) -> torch.Tensor:
    """``copies`` randomly rotated, zoomed and shifted versions of every (N, C, H, W) image, copy-major:
    (copies * N, C, H, W), copy k of image i at k * N + i. Border padding keeps no black corners."""
    h, w = images.shape[-2:]
    t = RandAffine(
        prob=1.0,
        rotate_range=(math.radians(rotate_deg),),
        scale_range=(scale, scale),
        translate_range=(translate * h, translate * w),
        padding_mode="border",
    )
    t.set_random_state(seed=seed)
    out = [convert_to_tensor(t(img), track_meta=False) for _ in range(copies) for img in images]
    return torch.stack(out).to(images.dtype)
