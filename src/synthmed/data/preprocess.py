"""Turn a decoded image into a model input: intensities windowed to [0, 1], then a square S x S (MONAI),
optionally contrast-enhanced (``data.enhance``)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    Resize,
    ScaleIntensityRangePercentiles,
    SpatialPad,
    Transform,
)

from synthmed.config import DataConfig, EnhanceConfig
from synthmed.data.enhance import build_enhancement
from synthmed.data.readers import LUMA, validate_array

Fit = Literal["longest", "shortest", "stretch"]
_FIT_FOR_MODE: dict[str, Fit] = {"pad": "longest", "crop": "shortest", "stretch": "stretch"}


class PercentileScale(ScaleIntensityRangePercentiles):
    """MONAI's ScaleIntensityRangePercentiles, computed in numpy with both percentiles in one pass.

    MONAI calls torch.quantile once per percentile, a full sort each time (~8 ms for 224 x 224), and its
    multi-threaded torch element-wise ops on small images slow down tenfold (30 ms) when another
    process keeps the cores busy, e.g. a training run. Same linear interpolation, so same results.
    A constant image maps to 0 instead of tripping a divide-by-zero warning.
    """

    def _normalize(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        arr = arr.astype(np.float64)  # extreme float32 inputs (+-3e38) would overflow in float32
        lo, hi = np.percentile(arr, [self.lower, self.upper])
        if not hi > lo:
            return torch.zeros(arr.shape, dtype=torch.float32)
        b_min, b_max = float(self.b_min or 0.0), float(self.b_max if self.b_max is not None else 1.0)
        out = (arr - lo) * ((b_max - b_min) / (hi - lo)) + b_min
        if self.clip:
            np.clip(out, b_min, b_max, out=out)
        return torch.from_numpy(out.astype(np.float32))


class FitResize(Transform):
    """Resize a (C, H, W) image: longest side to ``size`` ('longest'), centred square to ``size`` x
    ``size`` ('shortest', for crop mode) or both sides to ``size`` ('stretch').

    Shrinking uses area averaging (anti-aliased, no moire from detector grids); enlarging uses bilinear
    interpolation, because area resampling would only repeat pixels.
    """

    backend = Resize.backend

    def __init__(self, size: int, fit: Fit) -> None:
        self.size = size
        self.fit = fit

    def target_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.fit != "longest":
            return self.size, self.size
        ratio = self.size / max(height, width)
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.fit == "shortest":
            # Keep only the centred square that survives the later centre crop: same result as resizing
            # the whole image first, but memory stays bounded for extreme aspect ratios (1 x 10000).
            side = min(img.shape[-2:])
            top, left = (img.shape[-2] - side) // 2, (img.shape[-1] - side) // 2
            img = img[..., top : top + side, left : left + side]
        height, width = img.shape[-2:]
        target = self.target_shape(height, width)
        if target == (height, width):
            return img
        shrinking = target[0] < height or target[1] < width
        return Resize(target, mode="area" if shrinking else "bilinear")(img)


def build_transform(
    size: int,
    resize_mode: str,
    clip_percentiles: tuple[float, float],
    enhance: EnhanceConfig | None = None,
) -> Compose:
    """The preprocessing pipeline for one setting, built once and shared by every image.

    Order: percentile scaling, resize, ``enhance`` (if set), then pad or crop. Enhancing before padding
    lets CLAHE's tiles and the sharpening see image content only: the padding stays exactly 0.
    """
    # EnhanceConfig is a mutable pydantic model (unhashable): the cache is keyed by its field values.
    settings = None if enhance is None else tuple(enhance.model_dump().items())
    return _build_transform(size, resize_mode, tuple(clip_percentiles), settings)


@functools.lru_cache(maxsize=16)
def _build_transform(
    size: int,
    resize_mode: str,
    clip_percentiles: tuple[float, float],
    enhance: tuple[tuple[str, object], ...] | None,
) -> Compose:
    lo, hi = clip_percentiles
    steps: list[Transform] = [
        PercentileScale(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True),
        FitResize(size, _FIT_FOR_MODE[resize_mode]),
    ]
    if enhance is not None:
        steps += build_enhancement(EnhanceConfig.model_validate(dict(enhance))).transforms
    if resize_mode == "pad":
        steps.append(SpatialPad((size, size), mode="constant", value=0.0))  # centred; 0 = background
    elif resize_mode == "crop":
        steps.append(CenterSpatialCrop((size, size)))
    return Compose(steps)


_meta_lock = threading.Lock()
_meta_users = 0
_meta_saved = True


@contextmanager
def untracked_meta() -> Iterator[None]:
    """MONAI's MetaTensor tracking off inside the block. MONAI's switch is one process-wide flag: blocks open
    in several threads are counted, so it returns to its saved value only when the last one ends (saving and
    restoring per block lets two overlapping blocks leave it off for good)."""
    global _meta_users, _meta_saved
    with _meta_lock:
        if _meta_users == 0:
            _meta_saved = get_track_meta()
            set_track_meta(False)
        _meta_users += 1
    try:
        yield
    finally:
        with _meta_lock:
            _meta_users -= 1
            if _meta_users == 0:
                set_track_meta(_meta_saved)


def preprocess(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """One (H, W) image -> float32 (1, S, S) in [0, 1], or an (H, W, C) image's channels (``Pixels.channels``)
    -> (C, S, S), per ``cfg``'s size, resize mode, percentiles and enhancement. The percentiles are taken
    over all channels together, so colour balance is kept; enhancement works per channel."""
    if image.ndim == 3:
        channels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    else:
        channels = torch.from_numpy(validate_array(image, "image"))[None]
    transform = build_transform(cfg.image_size, cfg.resize_mode, cfg.clip_percentiles, cfg.enhance)
    with untracked_meta():  # MetaTensor bookkeeping costs more than the resize itself and is unused here
        out = transform(channels)
    result = np.asarray(torch.as_tensor(out), dtype=np.float32)
    return np.clip(result, 0.0, 1.0, out=result)  # interpolation rounding must not leave [0, 1]


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): the image itself for one channel, BT.601 luminance for RGB (the
    weights grey decoding uses), the channels' mean otherwise. What structure maps (edges) are taken from."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
        return (images * weights[None, :, None, None]).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)
