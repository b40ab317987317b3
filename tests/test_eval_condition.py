"""Condition fidelity on real BUSI pairs: a segmenter trained on real pairs tells matching masks from wrong
ones; Dice/HD95 edge cases; per-label intensity statistics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmed.config import DataConfig
from synthmed.data.masks import MaskPairs, load_image_mask_pairs
from synthmed.errors import SynthmedError
from synthmed.evaluation.condition import (
    compare_intensity,
    condition_fidelity,
    dice_hd95,
    intensity_stats,
    segment,
    segmenter_channels,
    summarise,
    train_segmenter,
)

# Crop mode: no zero padding, which would otherwise count as background in the intensity statistics.
CFG = DataConfig(image_size=32, resize_mode="crop")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """32 px convolutions gain nothing from a second thread, and when another process busies the same two
    cores torch's thread pool stalls: 100 training steps took 120 s with 2 threads, 1.8 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pairs(busi: Path, start: int, stop: int) -> MaskPairs:
    files = [
        f for c in ("benign", "malignant") for f in sorted((busi / c / "images").glob("*.png"))[start:stop]
    ]
    pairs = load_image_mask_pairs(files, CFG)
    assert not pairs.skipped
    return pairs


@pytest.fixture(scope="module")
def train_pairs(busi: Path) -> MaskPairs:
    return _pairs(busi, 0, 20)  # 40 real pairs


@pytest.fixture(scope="module")
def holdout(busi: Path) -> MaskPairs:
    return _pairs(busi, 20, 30)  # 20 other real pairs


@pytest.fixture(scope="module")
def segmenter(train_pairs: MaskPairs) -> torch.nn.Module:
    return train_segmenter(train_pairs.images, train_pairs.masks, steps=300, batch_size=16, seed=0)


def test_segmenter_tells_matching_masks_from_wrong_ones(
    segmenter: torch.nn.Module, holdout: MaskPairs
) -> None:
    shuffled = holdout.masks.roll(1, dims=0)  # every image gets another image's lesion
    result = condition_fidelity(segmenter, holdout.images, shuffled, holdout.images, holdout.masks, seed=0)
    json.dumps(result, allow_nan=False)
    ceiling, wrong = result["holdout_ceiling"], result["synthetic"]
    assert ceiling["n_images"] == wrong["n_images"] == 20 and result["image_size"] == 32
    assert ceiling["dice"]["mean"] > 0.35
    assert result["dice_gap"] == pytest.approx(ceiling["dice"]["mean"] - wrong["dice"]["mean"])
    assert result["dice_gap"] > 0.15
    lo, hi = ceiling["dice"]["ci95"]
    assert lo <= ceiling["dice"]["mean"] <= hi and hi < 1.0
    assert ceiling["hd95"]["mean"] < wrong["hd95"]["mean"]


def test_matching_synthetic_set_reaches_the_ceiling(segmenter: torch.nn.Module, holdout: MaskPairs) -> None:
    result = condition_fidelity(
        segmenter, holdout.images, holdout.masks, holdout.images, holdout.masks, seed=3
    )
    assert result["synthetic"] == result["holdout_ceiling"] and result["dice_gap"] == 0.0


def test_segment_returns_binary_masks(segmenter: torch.nn.Module, holdout: MaskPairs) -> None:
    pred = segment(segmenter, holdout.images, batch_size=7)
    assert pred.shape == holdout.masks.shape and pred.dtype == torch.uint8
    assert set(pred.unique().tolist()) <= {0, 1}


def test_training_is_seeded(train_pairs: MaskPairs) -> None:
    def weights(seed: int) -> torch.Tensor:
        model = train_segmenter(train_pairs.images, train_pairs.masks, steps=3, batch_size=4, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights(1)
    assert torch.equal(first, weights(1)) and not torch.equal(first, weights(2))


def test_bad_inputs_raise_synthmed_error(train_pairs: MaskPairs) -> None:
    with pytest.raises(SynthmedError, match="not divisible by 8"):
        images, masks = train_pairs.images[..., :30, :30], train_pairs.masks[..., :30, :30]
        train_segmenter(images, masks, steps=1, batch_size=2, seed=0, channels=(8, 8, 8, 8))
    with pytest.raises(SynthmedError, match="one mask per image"):
        train_segmenter(train_pairs.images, train_pairs.masks[:5], steps=1, batch_size=2, seed=0)


def test_identical_masks_score_perfectly(holdout: MaskPairs) -> None:
    scores = dice_hd95(holdout.masks, holdout.masks)
    assert scores["dice"]["mean"] == pytest.approx(1.0) and scores["dice"]["ci95"] == pytest.approx([1, 1])
    assert scores["hd95"]["mean"] == 0.0 and scores["hd95"]["n"] == 20 and scores["hd95"]["excluded"] == 0


def test_empty_masks_are_explicit() -> None:
    empty = torch.zeros(3, 1, 16, 16, dtype=torch.uint8)
    lesion = empty.clone()
    lesion[1, 0, 4:8, 4:8] = 1
    lesion[2, 0, 2:6, 2:6] = 1
    both_empty = dice_hd95(empty, empty)
    assert both_empty["dice"] == {"mean": 1.0, "ci95": [1.0, 1.0], "n": 3, "reason": None, "both_empty": 3}
    assert both_empty["hd95"]["mean"] is None and both_empty["hd95"]["excluded"] == 3
    assert "undefined" in both_empty["hd95"]["reason"]
    # Image 0 agrees (both empty), 1 and 2 miss the lesion: Dice 1, 0, 0; no HD95 anywhere.
    missed = dice_hd95(empty, lesion)
    assert missed["dice"]["mean"] == pytest.approx(1 / 3) and missed["dice"]["both_empty"] == 1
    assert missed["hd95"]["n"] == 0 and missed["hd95"]["excluded"] == 3
    # Found one lesion exactly: HD95 over that image only.
    found = lesion.clone()
    found[2] = 0
    partial = dice_hd95(found, lesion)
    assert partial["hd95"] == {
        "mean": 0.0,
        "ci95": None,
        "n": 1,
        "reason": "one image: no confidence interval",
        "excluded": 2,
    }
    json.dumps([both_empty, missed, partial], allow_nan=False)


def test_bootstrap_interval_is_seeded() -> None:
    values = np.random.default_rng(0).random(50)
    first = summarise(values, seed=4)
    assert first == summarise(values, seed=4) and first["ci95"] != summarise(values, seed=5)["ci95"]
    lo, hi = first["ci95"]
    assert lo < first["mean"] < hi and hi - lo < 0.25
    assert summarise(np.array([]), seed=0) == {
        "mean": None,
        "ci95": None,
        "n": 0,
        "reason": "no image to score",
    }


def test_lesions_are_darker_than_background(train_pairs: MaskPairs, holdout: MaskPairs) -> None:
    images = torch.cat([train_pairs.images, holdout.images])
    stats = intensity_stats(images, torch.cat([train_pairs.masks, holdout.masks]))
    background, lesion = stats["background"], stats["foreground"]
    assert background["n"] == lesion["n"] == 60 and (background["label"], lesion["label"]) == (0, 1)
    assert 0.0 <= lesion["p5"] <= lesion["p50"] <= lesion["p95"] <= 1.0
    assert lesion["p50"] < background["p50"] and lesion["mean"] < background["mean"]
    json.dumps(stats, allow_nan=False)


def test_compare_intensity(train_pairs: MaskPairs, holdout: MaskPairs) -> None:
    real = intensity_stats(train_pairs.images, train_pairs.masks)
    same = compare_intensity(real, real)
    assert same["foreground"]["ks_statistic"] == 0.0 and same["foreground"]["p_value"] == 1.0
    inverted = compare_intensity(real, intensity_stats(1.0 - train_pairs.images, train_pairs.masks))
    assert inverted["foreground"]["p_value"] < 0.01 and inverted["background"]["median_shift"] > 0.1
    no_lesion = intensity_stats(holdout.images, torch.zeros_like(holdout.masks))
    assert no_lesion["foreground"]["n"] == 0 and no_lesion["foreground"]["mean"] is None
    assert "no image has pixels of label 1" in no_lesion["foreground"]["reason"]
    compared = compare_intensity(real, no_lesion)
    assert (
        compared["foreground"]["p_value"] is None
        and "no foreground pixels" in compared["foreground"]["reason"]
    )
    assert compared["background"]["reason"] is None and compared["background"]["n_synthetic"] == 20


def test_default_depth_follows_image_size() -> None:
    assert segmenter_channels(32) == (16, 32, 64) and segmenter_channels(64) == (16, 32, 64, 128)
    assert 100 % 2 ** (len(segmenter_channels(100)) - 1) == 0  # 100 px: fewer levels, each size even


def test_edge_f1_tolerates_small_shifts_and_tells_other_images_apart(holdout: MaskPairs) -> None:
    from synthmed.data.structure import structure_maps
    from synthmed.evaluation.condition import edge_f1

    edges = structure_maps(holdout.images[:6], "edges", 1.0)
    shifted = torch.roll(edges, shifts=(1, 1), dims=(-2, -1))  # 1 px down and right: sqrt(2) px away
    assert np.allclose(edge_f1(edges, edges), 1.0)
    assert np.allclose(edge_f1(shifted, edges, tolerance=1.5), 1.0, atol=0.05)  # wrap-around rows aside
    assert edge_f1(shifted, edges, tolerance=0.0).mean() < 0.5  # without tolerance the shift misses
    other = edge_f1(torch.roll(edges, 1, dims=0), edges)  # each image scored against another's edges
    assert other.mean() < edge_f1(shifted, edges).mean() - 0.2
    empty = torch.zeros_like(edges[:2])
    assert edge_f1(empty, empty).tolist() == [1.0, 1.0]
    assert edge_f1(empty, edges[:2]).tolist() == [0.0, 0.0]
    with pytest.raises(SynthmedError, match="edge maps"):
        edge_f1(edges[:2], edges[:3])
