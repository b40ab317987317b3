"""Three-view PNG previews of 3D volumes: axial, coronal and sagittal mid-slices side by side, with the
label map overlaid in a fixed colour per label and, below, a legend: each label's colour and value.

Slices are taken and oriented by `synthmed.evaluation.views` (RAS, anatomy upright, fitted into
``size`` x ``size``), so a preview shows exactly what the 2.5D evaluation compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synthmed.artifacts.images import save_png
from synthmed.errors import SynthmedError
from synthmed.evaluation.views import VIEW_AXIS, VIEWS, slice_indices, view_slices

#: Label l is drawn in PALETTE[(l - 1) % len(PALETTE)] (tab10): the same structure, the same colour.
PALETTE = (
    np.array(
        [
            (31, 119, 180),
            (255, 127, 14),
            (44, 160, 44),
            (214, 39, 40),
            (148, 103, 189),
            (140, 86, 75),
            (227, 119, 194),
            (127, 127, 127),
            (188, 189, 34),
            (23, 190, 207),
        ],
        dtype=np.float32,
    )
    / 255.0
)
ALPHA = 0.4
GUTTER = 2  # white pixels between the views
LEGEND_HEIGHT = 16  # the legend strip below the views: a swatch and "label N" per label present


def three_view_preview(
    image: torch.Tensor, label: torch.Tensor | None = None, *, size: int = 128
) -> np.ndarray:
    """(size, 3 * size + 2 * GUTTER, 3) RGB in [0, 1]: axial | coronal | sagittal mid-slices of a
    (1, X, Y, Z) image in [0, 1], with ``label`` (1, X, Y, Z) blended in at ``ALPHA`` where non-zero."""
    if image.ndim != 4 or image.shape[0] != 1 or (label is not None and label.shape != image.shape):
        got = tuple(image.shape), None if label is None else tuple(label.shape)
        raise SynthmedError(f"expected image and label map (1, X, Y, Z) of one shape, got {got}")
    panels = [_panel(image, label, view, size) for view in VIEWS]
    gutter = np.ones((size, GUTTER, 3), dtype=np.float32)
    return np.concatenate([panels[0], gutter, panels[1], gutter, panels[2]], axis=1)


def save_three_view_preview(
    image: torch.Tensor, label: torch.Tensor | None, path: Path, *, size: int = 128
) -> None:
    """Write `three_view_preview` as an RGB PNG (atomically), with the legend of the labels present below it;
    without a label map, the plain image. A (C, X, Y, Z) volume of several channels (contrasts) shows one
    row of views per channel, channel 0 on top."""
    rows = [three_view_preview(image[c : c + 1], label, size=size) for c in range(image.shape[0])]
    gap = np.ones((GUTTER, rows[0].shape[1], 3), dtype=np.float32)
    views = np.concatenate([part for row in rows for part in (gap, row)][1:], axis=0)
    if label is not None:
        present = [int(v) for v in torch.unique(label).tolist() if v > 0]
        views = np.concatenate([views, legend(present, views.shape[1])], axis=0)
    save_png(views, Path(path))


def legend(labels: list[int], width: int) -> np.ndarray:
    """(LEGEND_HEIGHT, width, 3) RGB in [0, 1]: on white, each label's overlay colour and its value."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, LEGEND_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    x, box = 4, LEGEND_HEIGHT - 6
    for value in labels:
        colour = tuple(np.round(swatch(value) * 255).astype(int).tolist())
        draw.rectangle((x, 3, x + box, 3 + box), fill=colour)
        text = f"label {value}"
        draw.text((x + box + 4, 2), text, fill="black")
        x += box + 12 + int(draw.textlength(text))
    return np.asarray(strip, dtype=np.float32) / 255.0


def swatch(value: int | np.ndarray) -> np.ndarray:
    """The RGB colour in [0, 1] label ``value`` (or each of an array of labels) is overlaid in."""
    return PALETTE[(value - 1) % len(PALETTE)]


def _panel(image: torch.Tensor, label: torch.Tensor | None, view: str, size: int) -> np.ndarray:
    grey = _fit(_middle(image.float(), view), view, size)[0].clamp(0.0, 1.0).numpy()
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label is None:
        return rgb
    classes = _label_plane(_middle(label, view), view, size)
    fg = classes > 0
    rgb[fg] = (1.0 - ALPHA) * rgb[fg] + ALPHA * swatch(classes[fg])
    return rgb


def _middle(volume: torch.Tensor, view: str) -> torch.Tensor:
    """(C, X, Y, Z) -> the middle slice of ``view``, keeping its axis (extent 1)."""
    dim = 1 + VIEW_AXIS[view]
    index = slice_indices(volume.shape[dim], fraction=1e-9, slices=1)[0]  # tiny fraction: middle only
    return volume.narrow(dim, index, 1)


def _fit(plane: torch.Tensor, view: str, size: int) -> torch.Tensor:
    """One slice from `_middle` -> (C, size, size), oriented and fitted by `view_slices`."""
    return view_slices(plane[None], view, size=size, fraction=1.0)[0]


def _label_plane(plane: torch.Tensor, view: str, size: int) -> np.ndarray:
    """(size, size) label values of a slice: fitted as one channel per label, then argmax, because
    `view_slices` interpolates and would blend label numbers into values no label has."""
    values = torch.unique(torch.cat([torch.zeros(1, dtype=plane.dtype), plane.flatten()]))  # 0 first
    onehot = (plane == values.view(-1, 1, 1, 1)).float()  # of one slice, so hundreds of labels fit
    return values[_fit(onehot, view, size).argmax(dim=0)].numpy()  # zero padding: argmax 0, background
