"""preprocess: shapes, range, aspect ratio, percentile clipping, constant images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from synthmed.config import DataConfig
from synthmed.data import build_transform, preprocess
from synthmed.errors import SynthmedError


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_output_shape_and_range(wide_busi: np.ndarray, mode: str) -> None:
    out = preprocess(wide_busi, DataConfig(image_size=48, resize_mode=mode))
    assert out.shape == (1, 48, 48) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5


def test_pad_keeps_aspect_ratio_with_zero_borders(wide_busi: np.ndarray) -> None:
    size = 64
    out = preprocess(wide_busi, DataConfig(image_size=size, resize_mode="pad"))[0]
    h, w = wide_busi.shape
    content = round(h * size / w)
    top = (size - content) // 2
    assert content < size - 4
    assert np.all(out[:top] == 0) and np.all(out[top + content :] == 0)  # padding rows are background
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert top <= rows[0] and rows[-1] < top + content


def test_pad_aspect_ratio_exact() -> None:
    img = np.ones((30, 60), dtype=np.float32)
    img[:, 30:] = 2.0  # left half -> 0, right half -> 1 after intensity scaling
    out = preprocess(img, DataConfig(image_size=64, resize_mode="pad", clip_percentiles=(0.0, 100.0)))[0]
    bright = out > 0.5
    assert np.flatnonzero(bright.any(axis=1)).tolist() == list(range(16, 48))  # 64 * 30/60 rows, centred
    assert np.flatnonzero(bright.any(axis=0)).tolist() == list(range(32, 64))  # full width kept


def test_crop_fills_the_square(wide_busi: np.ndarray) -> None:
    out = preprocess(wide_busi, DataConfig(image_size=64, resize_mode="crop"))[0]
    # No padding: top and bottom rows carry image content (ultrasound sectors may have dark corners).
    assert out[0].max() > 0 and out[-1].max() > 0


def test_percentile_clipping_saturates_the_brightest_pixels() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (100, 100)).astype(np.float32)
    img[:2, :5] = 10_000  # ten hot pixels
    clipped = preprocess(img, DataConfig(image_size=100, resize_mode="stretch", clip_percentiles=(1.0, 99.0)))
    full = preprocess(img, DataConfig(image_size=100, resize_mode="stretch", clip_percentiles=(0.0, 100.0)))
    assert np.mean(clipped == 1.0) == pytest.approx(0.01, abs=0.002)
    assert np.mean(clipped == 0.0) == pytest.approx(0.01, abs=0.002)
    # Without clipping the outliers squeeze the tissue into a sliver of the range.
    assert np.median(full) < 0.02 < np.std(clipped) and 0.3 < np.median(clipped) < 0.7


def test_constant_image_gives_zeros_without_nan_or_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = preprocess(np.full((30, 50), 7.0, dtype=np.float32), DataConfig(image_size=32))
    assert np.isfinite(out).all() and out.max() == 0.0


def test_small_images_are_enlarged() -> None:
    img = np.arange(28 * 28, dtype=np.float32).reshape(28, 28)
    out = preprocess(img, DataConfig(image_size=64, clip_percentiles=(0.0, 100.0)))
    assert out.shape == (1, 64, 64)
    assert len(np.unique(out)) > 28 * 28  # interpolated, not pixel-repeated


def test_transform_built_once_per_setting() -> None:
    a = build_transform(64, "pad", (0.0, 99.0))
    assert a is build_transform(64, "pad", (0.0, 99.0))
    assert a is not build_transform(64, "crop", (0.0, 99.0))


def test_invalid_input_is_a_synthmed_error() -> None:
    with pytest.raises(SynthmedError, match="NaN"):
        preprocess(np.full((4, 4), np.nan), DataConfig())


def test_overlapping_untracked_blocks_in_threads_leave_meta_tracking_on() -> None:
    """Thread a turns MONAI's process-wide MetaTensor switch off, b enters while it is off, a leaves first:
    tracking must be back on once both have left (volume loading elsewhere needs it)."""
    import threading

    from monai.data import get_track_meta

    from synthmed.data.preprocess import untracked_meta

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with untracked_meta():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with untracked_meta():
            b_in.set()
            a_out.wait(5)
            assert not get_track_meta()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert get_track_meta()
