"""PNG files synthmed writes: generated images (8- or 16-bit greyscale, or 8-bit RGB colour: the kinds the
catalogue checks for), preview grids and report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthmed.artifacts.files import atomic_write


def to_uint(image: np.ndarray | torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """Map a [0, 1] image (H, W), (1, H, W) or colour (3, H, W) or (H, W, 3) to uint8/uint16 (H, W) or
    (H, W, 3), clipping out-of-range values. Colour is 8 bits (what PNG viewers and PIL's RGB take)."""
    arr = _array(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"an image to write must be grey or RGB, got shape {tuple(arr.shape)}")
    if arr.ndim == 3 and bit_depth != 8:
        raise ValueError("colour images are written with 8 bits per channel")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * top).astype(dtype)


def save_png(image: np.ndarray | torch.Tensor, path: Path, bit_depth: int = 8) -> None:
    """Write atomically, so an interrupted run never leaves a half-written PNG behind."""
    with atomic_write(path) as tmp:
        Image.fromarray(to_uint(image, bit_depth)).save(tmp, format="PNG")


def _array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    return images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)


def grid(images: torch.Tensor | np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile (N, 1, H, W) or colour (N, 3, H, W) images in [0, 1] into one (rows*H, cols*W) array, or
    (rows*H, cols*W, 3) for colour, with a white gutter."""
    arr = _array(images)
    arr = arr.reshape(arr.shape[0], -1, arr.shape[-2], arr.shape[-1])  # (N, H, W) -> (N, 1, H, W)
    n, channels, h, w = arr.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    out = np.ones((channels, nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[:, top : top + h, left : left + w] = arr[i]
    return out[0] if channels == 1 else out.transpose(1, 2, 0)


def save_grid(images: torch.Tensor | np.ndarray, path: Path, ncols: int = 8) -> None:
    save_png(grid(images, ncols), path)
