"""Structure maps that a 2D ControlNet follows, computed from images on the fly (scikit-image), and the
condition files users give at generation time.

- ``mask``: the image's lesion/structure mask (read from ``<stem>_mask*.png``, see ``data.masks``);
- ``edges``: Canny edges of the preprocessed image, binary;
- ``sobel``: Sobel gradient magnitude, divided by its 99th percentile and clipped to [0, 1] (soft edges that
  keep contrast strength, robust to a few very bright edges).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.feature import canny
from skimage.filters import sobel

from synthmed.config import Condition, DataConfig
from synthmed.data.masks import check_binary_mask, fragmentation, resize_mask, warn_fragmented
from synthmed.data.preprocess import luminance, preprocess
from synthmed.data.readers import read_image
from synthmed.errors import SynthmedError

#: Canny hysteresis thresholds as quantiles of the gradient magnitude: the same share of edge pixels on a
#: dim ultrasound as on a high-contrast radiograph, where absolute thresholds would need tuning per data set.
CANNY_QUANTILES = (0.8, 0.9)


def structure_map(image: np.ndarray, condition: Condition, sigma: float) -> np.ndarray:
    """(H, W) image in [0, 1] -> (H, W) float32 edge map in [0, 1] (``edges`` or ``sobel``)."""
    image = np.asarray(image, dtype=np.float64)
    if condition == "edges":
        lo, hi = CANNY_QUANTILES
        return canny(image, sigma=sigma, low_threshold=lo, high_threshold=hi, use_quantiles=True).astype(
            np.float32
        )
    if condition == "sobel":
        grad = sobel(image)
        top = float(np.percentile(grad, 99))
        if top < 1e-6:  # a flat image: its rounding noise is not an edge
            return np.zeros_like(grad, np.float32)
        return np.clip(grad / top, 0.0, 1.0).astype(np.float32)
    raise SynthmedError(
        f"'{condition}' is not computed from images; choose edges or sobel", field="condition"
    )


def structure_maps(images: torch.Tensor, condition: Condition, sigma: float) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, 1, H, W) float32 structure maps (of the luminance of colour)."""
    maps = [structure_map(img[0].float().cpu().numpy(), condition, sigma) for img in luminance(images)]
    return torch.from_numpy(np.stack(maps)[:, None]) if maps else images.new_zeros(images.shape)


def read_condition_file(path: Path, condition: Condition, cfg: DataConfig, sigma: float) -> torch.Tensor:
    """A user's condition file as the (1, S, S) float32 map the ControlNet was trained on.

    Any size is accepted: it is resized with the geometry training images get (``cfg.resize_mode``), nearest
    neighbour for binary maps. ``mask``: the file must be two-valued (0/255, 0/1); an empty mask is valid
    (an image without lesion). ``edges``: a two-valued file is the edge map itself, anything else an image
    whose edges are computed. ``sobel``: always an image.
    """
    pixels = read_image(path)
    binary = np.unique(pixels).size <= 2
    if condition == "mask" or (condition == "edges" and binary):
        check_binary_mask(pixels, path)
        small = resize_mask(pixels > 0, cfg)
        broken = fragmentation(pixels > 0, small)
        warn_fragmented([(str(path), *broken)] if broken else [], cfg.image_size)
        return torch.from_numpy(small[None].astype(np.float32))
    return torch.from_numpy(structure_map(preprocess(pixels, cfg)[0], condition, sigma)[None])
