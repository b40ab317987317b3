"""PNG files synthmed writes: generated images (8- or 16-bit greyscale, the kind the catalogue checks for),
preview grids and report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthmed.artifacts.files import atomic_write


def to_uint(image: np.ndarray | torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """Map a [0, 1] image (H, W) or (1, H, W) to uint8/uint16, clipping out-of-range values."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = np.squeeze(arr)
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * top).astype(dtype)


def save_png(image: np.ndarray | torch.Tensor, path: Path, bit_depth: int = 8) -> None:
    """Write atomically, so an interrupted run never leaves a half-written PNG behind."""
    with atomic_write(path) as tmp:
        Image.fromarray(to_uint(image, bit_depth)).save(tmp, format="PNG")


def grid(images: torch.Tensor | np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile (N, 1, H, W) images in [0, 1] into one (rows*H, cols*W) array with a white gutter."""
    arr = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    arr = arr.reshape(arr.shape[0], arr.shape[-2], arr.shape[-1])
    n, h, w = arr.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    out = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            arr[i]
        )
    return out


def save_grid(images: torch.Tensor | np.ndarray, path: Path, ncols: int = 8) -> None:
    save_png(grid(images, ncols), path)
