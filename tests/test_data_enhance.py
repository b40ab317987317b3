"""data.enhance: CLAHE and unsharp mask on real X-ray and ultrasound images, and their place in ingestion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import ndimage

from synthmed.config import DataConfig, EnhanceConfig
from synthmed.data import build_transform, preprocess, read_image
from synthmed.data.enhance import CLAHE, Enhancement, UnsharpMask, build_enhancement
from synthmed.data.loading import PREPROCESS_VERSION, cache_key
from synthmed.data.masks import build_mask_transform, geometry_steps, read_mask, resize_mask
from synthmed.data.sources import Record

METHODS = ["clahe", "sharpen", "double_clahe", "clahe_sharpen"]


@pytest.fixture(scope="module")
def xray(kermany: Path) -> np.ndarray:
    """A real chest X-ray as the pipeline sees it before enhancement: (1, 128, 128) float32 in [0, 1]."""
    path = sorted((kermany / "test" / "NORMAL").glob("*.jpeg"))[0]
    return preprocess(read_image(path), DataConfig(image_size=128, resize_mode="stretch"))


def _local_std(img: np.ndarray, patch: int = 8) -> float:
    """Mean standard deviation over non-overlapping patch x patch tiles: local contrast."""
    h, w = (s - s % patch for s in img.shape[-2:])
    tiles = img[..., :h, :w].reshape(-1, h // patch, patch, w // patch, patch)
    return float(tiles.std(axis=(2, 4)).mean())


def _laplacian_energy(img: np.ndarray) -> float:
    """Mean absolute Laplacian: high-frequency content (edges, fine texture)."""
    return float(np.mean([np.abs(ndimage.laplace(c.astype(np.float64))).mean() for c in img]))


def test_clahe_raises_local_contrast(xray: np.ndarray) -> None:
    out = CLAHE(clip_limit=0.01)(xray)
    assert _local_std(out) > 1.3 * _local_std(xray)
    # A higher clip limit allows more equalisation, so more local contrast: the parameter is passed on.
    assert _local_std(CLAHE(clip_limit=0.05)(xray)) > 1.1 * _local_std(out)


def test_clahe_kernel_size_changes_the_result(xray: np.ndarray) -> None:
    default = CLAHE()(xray)  # 1/8 of 128 = 16 px tiles
    assert np.array_equal(default, CLAHE(kernel_size=16)(xray))
    assert np.abs(CLAHE(kernel_size=64)(xray) - default).mean() > 0.01


def test_unsharp_mask_raises_high_frequencies_and_keeps_the_mean(xray: np.ndarray) -> None:
    out = UnsharpMask(radius=1.0, amount=1.0)(xray)
    assert _laplacian_energy(out) > 1.5 * _laplacian_energy(xray)
    assert abs(float(out.mean()) - float(xray.mean())) < 0.01
    stronger = UnsharpMask(radius=1.0, amount=3.0)(xray)
    assert _laplacian_energy(stronger) > 1.3 * _laplacian_energy(out)


def test_double_clahe_differs_from_single(xray: np.ndarray) -> None:
    single = build_enhancement(EnhanceConfig(method="clahe"))(xray)
    double = build_enhancement(EnhanceConfig(method="double_clahe"))(xray)
    assert np.abs(double - single).mean() > 0.01
    assert _local_std(double) > _local_std(single)


def test_clahe_sharpen_is_clahe_then_unsharp_mask(xray: np.ndarray) -> None:
    cfg = EnhanceConfig(method="clahe_sharpen", clip_limit=0.02, sharpen_radius=2.0, sharpen_amount=1.5)
    expected = UnsharpMask(2.0, 1.5)(CLAHE(clip_limit=0.02)(xray))
    np.testing.assert_array_equal(build_enhancement(cfg)(xray), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_output_type_shape_range(xray: np.ndarray, method: str, kind: str) -> None:
    two = np.concatenate([xray, xray[:, ::-1]]).astype(np.float64)  # (2, H, W), channels differ
    img = torch.from_numpy(two) if kind == "torch" else two
    out = build_enhancement(EnhanceConfig(method=method))(img)
    assert isinstance(out, torch.Tensor if kind == "torch" else np.ndarray)
    out = np.asarray(out)
    assert out.shape == two.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, two.astype(np.float32))
    # Per channel: each channel is enhanced on its own, as if it were the only one.
    alone = build_enhancement(EnhanceConfig(method=method))(two[1:])
    np.testing.assert_array_equal(out[1:], alone)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.0, 0.4, 1.0])
def test_constant_image_is_finite_and_unchanged(method: str, value: float) -> None:
    img = torch.full((1, 20, 30), value)
    out = build_enhancement(EnhanceConfig(method=method))(img)
    assert torch.isfinite(out).all()
    # skimage's CLAHE alone would turn any constant image into all ones.
    torch.testing.assert_close(out, img)


def test_rejects_images_that_are_not_channel_first_2d() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        CLAHE()(np.zeros((8, 8), dtype=np.float32))


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_preprocess_applies_enhancement(wide_busi: np.ndarray, mode: str) -> None:
    plain = preprocess(wide_busi, DataConfig(image_size=64, resize_mode=mode))
    enhanced = preprocess(wide_busi, DataConfig(image_size=64, resize_mode=mode, enhance=EnhanceConfig()))
    assert enhanced.shape == plain.shape == (1, 64, 64) and enhanced.dtype == np.float32
    assert enhanced.min() >= 0.0 and enhanced.max() <= 1.0
    assert np.abs(enhanced - plain).mean() > 0.01
    assert _local_std(enhanced) > _local_std(plain)


@pytest.mark.parametrize("method", METHODS)
def test_padding_stays_exactly_zero(wide_busi: np.ndarray, method: str) -> None:
    size = 64
    out = preprocess(wide_busi, DataConfig(image_size=size, enhance=EnhanceConfig(method=method)))[0]
    h, w = wide_busi.shape
    content = round(h * size / w)
    top = (size - content) // 2
    assert content < size - 4
    assert np.all(out[:top] == 0.0) and np.all(out[top + content :] == 0.0)
    # The enhancement saw only the content: same result as enhancing the unpadded resized image.
    stretched = preprocess(wide_busi, DataConfig(image_size=size, resize_mode="pad"))[0, top : top + content]
    alone = build_enhancement(EnhanceConfig(method=method))(stretched[None])[0]
    np.testing.assert_allclose(out[top : top + content], alone, atol=1e-6)


def test_transform_cached_per_enhancement_setting() -> None:
    a = build_transform(64, "pad", (0.0, 99.0), EnhanceConfig(method="clahe"))
    assert a is build_transform(64, "pad", (0.0, 99.0), EnhanceConfig(method="clahe"))
    assert a is not build_transform(64, "pad", (0.0, 99.0), EnhanceConfig(method="clahe", clip_limit=0.02))
    assert a is not build_transform(64, "pad", (0.0, 99.0))
    assert sum(isinstance(s, Enhancement) for s in a.transforms) == 1
    assert not any(isinstance(s, Enhancement) for s in build_transform(64, "pad", (0.0, 99.0)).transforms)


def test_cache_key_follows_the_enhancement() -> None:
    records = [Record("a.png", "x", "0" * 64), Record("b.png", "y", "1" * 64)]
    plain = DataConfig()
    key = cache_key(records, plain, "train", ["x", "y"])
    # Without enhancement the key is the one from before the option existed: old caches stay valid.
    doc = {
        "v": PREPROCESS_VERSION,
        "split": "train",
        "classes": ["x", "y"],
        "size": plain.image_size,
        "resize": plain.resize_mode,
        "clip": list(plain.clip_percentiles),
        "items": [[r.sha256, r.label] for r in records],
    }
    assert key == hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    keys = {key}
    for enhance in (
        EnhanceConfig(),
        EnhanceConfig(method="double_clahe"),
        EnhanceConfig(clip_limit=0.02),
        EnhanceConfig(method="sharpen", sharpen_amount=2.0),
    ):
        keys.add(cache_key(records, DataConfig(enhance=enhance), "train", ["x", "y"]))
    assert len(keys) == 5
    assert cache_key(records, DataConfig(enhance=EnhanceConfig()), "train", ["x", "y"]) in keys


def test_masks_stay_binary_and_aligned(busi: Path) -> None:
    image = busi / "benign" / "images" / "benign (2).png"
    mask = read_mask([busi / "benign" / "mask" / "benign (2)_mask.png"], read_image(image).shape)
    cfg = DataConfig(image_size=64, enhance=EnhanceConfig(method="clahe_sharpen"))
    resized = resize_mask(mask, cfg)
    assert resized.dtype == np.uint8 and set(np.unique(resized)) == {0, 1}
    assert np.array_equal(resized, resize_mask(mask, cfg.model_copy(update={"enhance": None})))
    assert not any(isinstance(s, Enhancement) for s in build_mask_transform(64, "pad").transforms)


@pytest.mark.parametrize("method", METHODS)
def test_mask_geometry_drops_enhancement_steps(method: str) -> None:
    enhanced = build_transform(48, "pad", (0.0, 100.0), EnhanceConfig(method=method))
    steps = geometry_steps(enhanced)
    assert not any(isinstance(s, Enhancement) for s in steps)
    assert [type(s) for s in steps] == [type(s) for s in build_mask_transform(48, "pad").transforms]
    mask = np.zeros((1, 30, 60), dtype=np.float32)
    mask[0, 10:20, 20:45] = 1.0
    for step in steps:
        mask = step(torch.from_numpy(np.asarray(mask)))
    assert set(np.unique(np.asarray(mask))) == {0.0, 1.0}


@pytest.mark.parametrize(
    "enhance",
    [
        {"clip_limit": 0},
        {"clip_limit": 1.5},
        {"method": "gamma"},
        {"kernel_size": 1},
        {"nbins": 8},
        {"sharpen_radius": 0},
        {"sharpen_amount": -1},
        {"strength": 2},
    ],
)
def test_invalid_settings_are_rejected(enhance: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="enhance"):
        DataConfig.model_validate({"enhance": enhance})


def test_enhance_from_yaml_like_dict() -> None:
    cfg = DataConfig.model_validate({"enhance": {"method": "clahe_sharpen", "clip_limit": 0.02}})
    assert cfg.enhance == EnhanceConfig(method="clahe_sharpen", clip_limit=0.02)
    assert DataConfig().enhance is None
