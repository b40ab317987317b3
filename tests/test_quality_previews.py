"""MAISI-style intensity quality check and three-view previews, on real hippocampus volumes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.data.volumes import LoadedVolumes, VolumeConfig, load_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.previews import (
    ALPHA,
    GUTTER,
    LEGEND_HEIGHT,
    PALETTE,
    save_three_view_preview,
    three_view_preview,
)
from synthmed.evaluation.quality import check_volume, intensity_bounds
from synthmed.evaluation.views import VIEWS, view_slices

N_TRAIN = 12  # the first 12 complete pairs; the 13th (hippocampus_023) is held out
CFG = VolumeConfig(size=(32, 48, 32))
SIZE = 64


@pytest.fixture(scope="module")
def volumes(hippocampus: Path, msd_pairs: Callable[[Sequence[str]], Path]) -> LoadedVolumes:
    names = sorted(p.name for p in (hippocampus / "labels").glob("*.nii.gz"))
    names = [n for n in names if (hippocampus / "images" / n).exists()][: N_TRAIN + 1]
    return load_volumes(msd_pairs(names), CFG, require_labels=True)


@pytest.fixture(scope="module")
def bounds(volumes: LoadedVolumes) -> dict[int, tuple[float, float]]:
    assert volumes.labels is not None
    return intensity_bounds(volumes.images[:N_TRAIN], volumes.labels[:N_TRAIN], num_labels=3)


def _held_out(volumes: LoadedVolumes) -> tuple[torch.Tensor, torch.Tensor]:
    assert volumes.labels is not None and volumes.keys[N_TRAIN] == "hippocampus_023"
    return volumes.images[N_TRAIN], volumes.labels[N_TRAIN]


# --- intensity bounds and the check ------------------------------------------------------------


def _medians(volumes: LoadedVolumes, value: int) -> list[float]:
    assert volumes.labels is not None
    return [
        float(np.median(image[label == value].numpy()))
        for image, label in zip(volumes.images[:N_TRAIN], volumes.labels[:N_TRAIN], strict=True)
        if (label == value).any()
    ]


def test_bounds_are_percentiles_of_per_volume_medians(volumes: LoadedVolumes, bounds: dict) -> None:
    assert volumes.labels is not None
    assert set(bounds) == {1, 2}
    full = intensity_bounds(volumes.images[:N_TRAIN], volumes.labels[:N_TRAIN], 3, lower=0, upper=100)
    for value in (1, 2):
        medians = _medians(volumes, value)
        assert full[value] == pytest.approx((min(medians), max(medians)))
        lo, hi = bounds[value]
        assert min(medians) <= lo < hi <= max(medians) and 0.2 < lo < hi < 0.6


def test_absent_labels_do_not_vote_and_unused_labels_are_omitted(volumes: LoadedVolumes) -> None:
    assert volumes.labels is not None
    images, labels = volumes.images[:4], volumes.labels[:4].clone()
    labels[0][labels[0] == 2] = 0  # the first volume loses its label 2
    got = intensity_bounds(images, labels, num_labels=5, lower=0, upper=100)
    assert set(got) == {1, 2}  # labels 3 and 4 occur nowhere
    assert got[2] == intensity_bounds(images[1:], labels[1:], 5, lower=0, upper=100)[2]


def test_bounds_refuse_labels_beyond_num_labels(volumes: LoadedVolumes) -> None:
    assert volumes.labels is not None
    with pytest.raises(SynthmedError, match=r"label value 2 is outside 0\.\.1"):
        intensity_bounds(volumes.images[:2], volumes.labels[:2], num_labels=2)


def test_real_held_out_volume_passes(volumes: LoadedVolumes, bounds: dict) -> None:
    image, label = _held_out(volumes)
    result = check_volume(image, label, bounds)
    assert result["passed"], result
    assert {k: r["status"] for k, r in result["labels"].items()} == {"1": "pass", "2": "pass"}
    one = result["labels"]["1"]
    assert one["lower"] <= one["median"] <= one["upper"]
    assert json.loads(json.dumps(result)) == result


def test_intensity_shifted_volume_fails(volumes: LoadedVolumes, bounds: dict) -> None:
    image, label = _held_out(volumes)
    result = check_volume(image * 0.1, label, bounds)
    assert not result["passed"]
    assert all(
        r["status"] == "fail" and "outside the training range" in r["reason"]
        for r in result["labels"].values()
    )


def test_missing_label_is_reported_and_unknown_label_fails(volumes: LoadedVolumes, bounds: dict) -> None:
    image, label = _held_out(volumes)
    no_two = torch.where(label == 2, 0, label)
    result = check_volume(image, no_two, bounds)
    assert result["passed"] and result["labels"]["2"]["status"] == "absent"
    assert result["labels"]["2"]["median"] is None
    extra = torch.where(label == 2, 7, label)
    result = check_volume(image, extra, {str(k): list(v) for k, v in bounds.items()})  # as read from JSON
    assert not result["passed"]
    assert (
        result["labels"]["7"]["status"] == "fail" and "no intensity bounds" in result["labels"]["7"]["reason"]
    )


# --- previews ----------------------------------------------------------------------------------


def _panels(rgb: np.ndarray) -> list[np.ndarray]:
    return [rgb[:, i * (SIZE + GUTTER) : i * (SIZE + GUTTER) + SIZE] for i in range(3)]


def test_preview_png_shape_and_plain_views_match_the_evaluation_slices(
    volumes: LoadedVolumes, tmp_path: Path
) -> None:
    image, label = _held_out(volumes)
    path = tmp_path / "previews" / "case.png"
    save_three_view_preview(image, label, path, size=SIZE)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size == (3 * SIZE + 2 * GUTTER, SIZE + LEGEND_HEIGHT)
        written, strip = np.asarray(png)[:SIZE], np.asarray(png)[SIZE:]
    overlay = three_view_preview(image, label, size=SIZE)
    np.testing.assert_array_equal(written, np.round(overlay * 255).astype(np.uint8))
    # The legend below: a swatch of each label's overlay colour (labels 1 and 2 here), and text
    for value in (1, 2):
        colour = np.round(PALETTE[value - 1] * 255).astype(np.uint8)
        assert (np.abs(strip.astype(int) - colour).max(axis=-1) == 0).sum() >= 25, value
    assert (np.abs(strip.astype(int) - np.round(PALETTE[2] * 255)).max(axis=-1) == 0).sum() == 0
    assert (strip.max(axis=-1) < 60).sum() > 20  # dark text pixels
    assert (np.ptp(written, axis=-1) > 0).sum() > 100  # the label colours survive 8 bits
    plain = three_view_preview(image, None, size=SIZE)
    assert plain.shape == (SIZE, 3 * SIZE + 2 * GUTTER, 3)
    for view, panel in zip(VIEWS, _panels(plain), strict=True):
        expected = view_slices(image[None], view, size=SIZE, fraction=1e-9, slices=1)[0, 0].numpy()
        np.testing.assert_allclose(panel, np.repeat(expected[..., None], 3, axis=-1), atol=1e-6)


def test_overlay_colours_lie_where_the_labels_are(volumes: LoadedVolumes) -> None:
    image, label = _held_out(volumes)
    overlay, plain = three_view_preview(image, label, size=SIZE), three_view_preview(image, None, size=SIZE)
    coloured = np.ptp(overlay, axis=-1) > 1e-6  # grey pixels have R = G = B
    for view, mask in zip(VIEWS, _panels(coloured), strict=True):
        fg = view_slices((label[None] > 0).float(), view, size=SIZE, fraction=1e-9, slices=1)[0, 0].numpy()
        assert mask[fg > 0.99].all() and not mask[fg < 0.01].any()
    # Off the labels the preview is the plain image; on them, the palette colours of labels 1 and 2.
    np.testing.assert_allclose(overlay[~coloured], plain[~coloured], atol=1e-6)
    colours = (overlay[coloured] - (1 - ALPHA) * plain[coloured]) / ALPHA
    distance = np.abs(colours[:, None, :] - PALETTE[None, :2, :]).max(axis=-1)
    assert distance.min(axis=1).max() < 1e-4
    assert set(distance.argmin(axis=1).tolist()) == {0, 1}
