"""Three-view (2.5D) slicing: shapes, which slices, orientation of the anatomy, and the 2D resize path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import SpatialPad

from synthmed.data.preprocess import FitResize
from synthmed.data.volumes import VolumeConfig, discover_volumes, load_volume_pair
from synthmed.errors import SynthmedError
from synthmed.evaluation.views import VIEW_AXIS, VIEWS, slice_indices, three_view_slices, view_slices

SHAPE = (20, 24, 28)  # X (towards Right), Y (Anterior), Z (Superior): all different, to catch axis mix-ups


def _half(axis: int) -> torch.Tensor:
    """(1, 1, X, Y, Z) volume, 1 in the upper half of one spatial axis (Right, Anterior or Superior)."""
    vol = torch.zeros(1, 1, *SHAPE)
    index = [slice(None)] * 5
    index[2 + axis] = slice(SHAPE[axis] // 2, None)
    vol[tuple(index)] = 1.0
    return vol


def _halves(img: torch.Tensor) -> dict[str, float]:
    """Mean brightness of the top, bottom, left and right halves of (M, C, S, S) slices."""
    s = img.shape[-1] // 2
    return {
        "top": float(img[..., :s, :].mean()),
        "bottom": float(img[..., s:, :].mean()),
        "left": float(img[..., :, :s].mean()),
        "right": float(img[..., :, s:].mean()),
    }


def test_shapes_per_view() -> None:
    volumes = torch.rand(2, 1, *SHAPE)
    out = three_view_slices(volumes, size=32, fraction=0.5)
    assert list(out) == list(VIEWS)
    for view, slices in out.items():
        per_volume = round(SHAPE[VIEW_AXIS[view]] * 0.5)
        assert slices.shape == (2 * per_volume, 1, 32, 32) and slices.dtype == torch.float32
    fixed = three_view_slices(volumes, size=16, slices=3)
    assert all(s.shape == (6, 1, 16, 16) for s in fixed.values())


@pytest.mark.parametrize(
    ("view", "right", "up"),
    [("axial", 0, 1), ("coronal", 0, 2), ("sagittal", 1, 2)],
)
def test_anatomy_is_upright_in_the_documented_orientation(view: str, right: int, up: int) -> None:
    """axial: Right to the right, Anterior up; coronal: Right right, Superior up; sagittal: Anterior
    right, Superior up."""
    horizontal = _halves(view_slices(_half(right), view, size=32, fraction=1.0))
    assert horizontal["right"] > 0.4 and horizontal["left"] < 0.05, horizontal
    assert abs(horizontal["top"] - horizontal["bottom"]) < 0.05  # odd padding is one pixel off-centre
    vertical = _halves(view_slices(_half(up), view, size=32, fraction=1.0))
    assert vertical["top"] > 0.4 and vertical["bottom"] < 0.05, vertical
    assert abs(vertical["left"] - vertical["right"]) < 0.05


def test_slices_come_from_the_centre_in_order() -> None:
    assert slice_indices(28) == list(range(7, 21))
    assert slice_indices(28, fraction=0.25, slices=3) == [10, 13, 16]
    assert slice_indices(5, fraction=0.1) == [2]  # at least the middle slice
    # Each axial slice of a volume whose value is its z index comes out in slice_indices order.
    z = torch.arange(SHAPE[2], dtype=torch.float32).expand(2, 1, *SHAPE)
    axial = view_slices(z, "axial", size=24, fraction=0.5)
    assert axial.amax(dim=(1, 2, 3)).tolist() == slice_indices(SHAPE[2]) * 2


def _upright(volume: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """One raw (C, P, Q) slice of a (C, X, Y, Z) volume, turned as the module documents."""
    return torch.rot90(volume.select(1 + axis, index), 1, dims=(-2, -1))


def test_slices_equal_the_2d_resize_and_pad_of_the_raw_slices() -> None:
    """Each output is the upright raw slice run through the 2D pipeline's pad-mode steps."""
    volumes = torch.rand(2, 1, *SHAPE)
    for view, axis in VIEW_AXIS.items():
        index = slice_indices(SHAPE[axis], slices=2)
        fit = [
            SpatialPad((40, 40))(FitResize(40, "longest")(_upright(v, axis, k)))
            for v in volumes
            for k in index
        ]
        expected = torch.stack([torch.as_tensor(f) for f in fit])
        torch.testing.assert_close(view_slices(volumes, view, size=40, slices=2), expected, atol=1e-6, rtol=0)
        # At the slice's own longest side nothing is resampled: exactly the raw slice, zero padded.
        native = max(s for i, s in enumerate(SHAPE) if i != axis)
        padded = SpatialPad((native, native))(_upright(volumes[0], axis, index[0]))
        assert torch.equal(view_slices(volumes, view, size=native, slices=2)[0], torch.as_tensor(padded))


def test_real_volumes_slice_deterministically(hippocampus: Path) -> None:
    pairs = discover_volumes(hippocampus).pairs[:3]
    cfg = VolumeConfig(size=(40, 56, 40))
    volumes = torch.stack([load_volume_pair(p, cfg)[0] for p in pairs])
    first = three_view_slices(volumes, size=64, fraction=0.5)
    second = three_view_slices(volumes.clone(), size=64, fraction=0.5)
    assert first.keys() == second.keys()
    for view in VIEWS:
        assert torch.equal(first[view], second[view])
        assert first[view].shape == (3 * round(cfg.size[VIEW_AXIS[view]] * 0.5), 1, 64, 64)
        assert float(first[view].min()) >= 0.0 and float(first[view].max()) <= 1.0
        assert float(first[view].amax(dim=(1, 2, 3)).min()) > 0.0  # central slices hold anatomy


def test_bad_arguments_raise_synthmed_errors() -> None:
    volumes = torch.rand(1, 1, *SHAPE)
    with pytest.raises(SynthmedError, match="unknown view 'transverse'"):
        view_slices(volumes, "transverse", size=16)
    with pytest.raises(SynthmedError, match=r"expected volumes \(N, C, X, Y, Z\)"):
        view_slices(volumes[0], "axial", size=16)
    with pytest.raises(SynthmedError, match=r"fraction: must be in \(0, 1\]"):
        view_slices(volumes, "axial", size=16, fraction=0.0)
    with pytest.raises(
        SynthmedError, match=r"slices: asks for 20 slices but the central 0\.5 of 28 holds 14"
    ):
        view_slices(volumes, "axial", size=16, slices=20)
