"""Three-view (2.5D) slicing of 3D volumes for MAISI-style FID: axial, coronal and sagittal 2D slices.

Volumes are (N, C, X, Y, Z) tensors in RAS orientation, as `synthmed.data.volumes` returns them: spatial
axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior (nibabel's and
MONAI's RAS+ convention). A view's slices are perpendicular to one axis:

- sagittal: perpendicular to x (axis 0); shown with Anterior to the right, Superior up;
- coronal: perpendicular to y (axis 1); shown with Right to the right, Superior up;
- axial: perpendicular to z (axis 2); shown with Right to the right, Anterior up.

That is one rule for all three: of the two remaining axes, the first runs left to right and the second
bottom to top (a 90 degree counter-clockwise turn of the array), so anatomy is upright in every view
(neurological convention: the patient's right on the image's right).

Each slice is then fitted into ``size`` x ``size`` exactly like the 2D pipeline's ``resize_mode: pad``
(longest side to ``size`` with `FitResize`, centred zero padding), so slices written as 2D images and
run through the 2D code give the same tensors. Slices come from the central ``fraction`` of the volume
along the view's axis; all of them are kept, including blank ones: dropping slices by content would let
real and synthetic sets differ in what is compared, and the central part avoids the padding anyway.
No randomness anywhere: the same volumes always give the same slices in the same order.
"""

from __future__ import annotations

import torch
from monai.transforms import SpatialPad
from monai.utils import convert_to_tensor

from synthmed.data.preprocess import FitResize
from synthmed.errors import SynthmedError

VIEWS = ("axial", "coronal", "sagittal")
#: Spatial axis (0 = x, 1 = y, 2 = z in RAS) each view's slices are perpendicular to.
VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def slice_indices(extent: int, *, fraction: float = 0.5, slices: int | None = None) -> list[int]:
    """Indices of the slices taken along an axis of ``extent`` voxels: every slice in the central
    ``fraction``, or ``slices`` evenly spaced ones within it."""
    if not 0.0 < fraction <= 1.0:
        raise SynthmedError(f"must be in (0, 1], got {fraction}", field="fraction")
    count = max(1, round(extent * fraction))
    start = (extent - count) // 2
    if slices is None:
        return list(range(start, start + count))
    if not 1 <= slices <= count:
        raise SynthmedError(
            f"asks for {slices} slices but the central {fraction:g} of {extent} holds {count}",
            field="slices",
        )
    return torch.linspace(start, start + count - 1, slices).round().long().tolist()


def view_slices(
    volumes: torch.Tensor, view: str, *, size: int, fraction: float = 0.5, slices: int | None = None
) -> torch.Tensor:
    """(N, C, X, Y, Z) RAS volumes -> (N * M, C, size, size) float32 slices of one view, volume by volume.

    M slices per volume (see `slice_indices`), oriented as the module docstring describes.
    """
    if view not in VIEW_AXIS:
        raise SynthmedError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}", field="view")
    if volumes.ndim != 5:
        raise SynthmedError(
            f"expected volumes (N, C, X, Y, Z), got shape {tuple(volumes.shape)}", field="volumes"
        )
    dim = 2 + VIEW_AXIS[view]
    index = slice_indices(volumes.shape[dim], fraction=fraction, slices=slices)
    picked = volumes.index_select(dim, torch.tensor(index, device=volumes.device)).movedim(dim, 1)
    planes = picked.reshape(-1, *picked.shape[-2:]).float()  # (N * M * C, P, Q)
    upright = torch.rot90(planes, 1, dims=(-2, -1))  # first remaining axis left -> right, second up
    fitted = SpatialPad((size, size), mode="constant", value=0.0)(FitResize(size, "longest")(upright))
    out = convert_to_tensor(fitted, track_meta=False)
    return out.reshape(-1, volumes.shape[1], size, size)


def channels_side_by_side(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) slices -> (N, 1, H, C * W): a multi-contrast slice's channels as one grey picture, left
    to right in channel order (for previews and report thumbnails); one channel as it is."""
    n, c, h, w = images.shape
    return images if c == 1 else images.permute(0, 2, 1, 3).reshape(n, 1, h, c * w)


def three_view_slices(
    volumes: torch.Tensor, *, size: int, fraction: float = 0.5, slices: int | None = None
) -> dict[str, torch.Tensor]:
    """`view_slices` for axial, coronal and sagittal, keyed by view name."""
    return {view: view_slices(volumes, view, size=size, fraction=fraction, slices=slices) for view in VIEWS}
