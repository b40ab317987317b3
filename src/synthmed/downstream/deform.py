"""Seeded random deformations of images and masks (MONAI random affine, plus elastic in 2D).

Used twice: to draw new lesion masks from training masks for the mask ControlNet (segmentation with free
annotations), and by the ``augment`` control, which adds count-matched deformed copies of real pairs, so a
synthetic arm must beat the same geometric variety obtained without a generator. One seed gives one
deformation, so every drawn mask can be made again from its recorded seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.transforms import Compose, Rand2DElasticd, RandAffined
from monai.utils import convert_to_tensor

#: Deformation ranges: rotation, relative scale, shift as a fraction of the side, elastic grid and magnitude.
MAX_ROTATION_DEG = 15.0
MAX_SCALE = 0.15
MAX_SHIFT = 0.08
ELASTIC_MAGNITUDE = (1.0, 3.0)


def _transform(spatial: tuple[int, ...], keys: list[str], modes: list[str]) -> Compose:
    rotate = math.radians(MAX_ROTATION_DEG)
    common: dict[str, Any] = {"keys": keys, "mode": modes, "padding_mode": "zeros"}
    if len(spatial) == 2:
        return Compose(
            [
                RandAffined(
                    prob=1.0,
                    rotate_range=(rotate,),
                    scale_range=(MAX_SCALE, MAX_SCALE),
                    translate_range=tuple(MAX_SHIFT * s for s in spatial),
                    **common,
                ),
                Rand2DElasticd(
                    spacing=(max(2.0, spatial[0] / 4), max(2.0, spatial[1] / 4)),
                    magnitude_range=ELASTIC_MAGNITUDE,
                    prob=1.0,
                    **common,
                ),
            ]
        )
    return Compose(  # 3D: affine only (elastic 3D grids are slow and rarely needed at these sizes)
        [
            RandAffined(
                prob=1.0,
                rotate_range=(rotate, rotate, rotate),
                scale_range=(MAX_SCALE,) * 3,
                translate_range=tuple(MAX_SHIFT * s for s in spatial),
                **common,
            )
        ]
    )


def deform_mask(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """A (1, *spatial) {0, 1} mask deformed by the deformation of ``seed`` (nearest: stays binary)."""
    t = _transform(tuple(mask.shape[1:]), ["mask"], ["nearest"])
    t.set_random_state(seed=seed)
    out = t({"mask": mask.float()})["mask"]
    return convert_to_tensor(out, track_meta=False).round().to(mask.dtype)


def deform_pair(image: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (bilinear) and its mask (nearest) deformed alike by the deformation of ``seed``."""
    t = _transform(tuple(image.shape[1:]), ["image", "mask"], ["bilinear", "nearest"])
    t.set_random_state(seed=seed)
    out = t({"image": image.float(), "mask": mask.float()})
    x = convert_to_tensor(out["image"], track_meta=False).clamp(0, 1).to(image.dtype)
    return x, convert_to_tensor(out["mask"], track_meta=False).round().to(mask.dtype)
