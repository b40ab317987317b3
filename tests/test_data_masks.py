"""Mask pairing, reading and resizing on the real BUSI files, and mask/image alignment after preprocessing."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from synthmed.config import DataConfig
from synthmed.data import preprocess, read_image
from synthmed.data.masks import find_mask_files, load_image_mask_pairs, read_mask, resize_mask
from synthmed.errors import SynthmedError


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def multi_lesion(busi: Path) -> Path:
    """A real BUSI image with three mask files (_mask, _mask_1, _mask_2)."""
    for extra in sorted(busi.glob("*/mask/*_mask_2.png")):
        image = extra.parent.parent / "images" / (extra.name.removesuffix("_mask_2.png") + ".png")
        if image.is_file():
            return image
    pytest.skip("no BUSI image with a _mask_2 file")


def test_finds_every_mask_of_a_multi_lesion_image(multi_lesion: Path) -> None:
    found = find_mask_files(multi_lesion)
    stem = multi_lesion.stem
    assert " " in stem and "(" in stem  # e.g. 'benign (195)': glob-special characters in real names
    assert [p.name for p in found] == [f"{stem}_mask.png", f"{stem}_mask_1.png", f"{stem}_mask_2.png"]
    assert all(p.parent.name == "mask" for p in found)


def test_prefix_of_another_stem_is_not_matched(busi: Path) -> None:
    # 'benign (1)' must not pick up 'benign (10)_mask.png' or 'benign (100)_mask_1.png'.
    found = find_mask_files(busi / "benign" / "images" / "benign (1).png")
    assert [p.name for p in found] == ["benign (1)_mask.png"]


def test_union_of_several_masks(multi_lesion: Path) -> None:
    files = find_mask_files(multi_lesion)
    parts = [read_image(p) > 0 for p in files]
    union = read_mask(files, read_image(multi_lesion).shape)
    assert union.dtype == np.uint8 and set(np.unique(union)) <= {0, 1}
    assert np.array_equal(union.astype(bool), np.logical_or.reduce(parts))
    assert union.sum() > max(p.sum() for p in parts)  # the extra lesions add pixels


def test_layouts_and_glob_characters(busi: Path, tmp_path: Path) -> None:
    mask = read_image(busi / "benign" / "mask" / "benign (2)_mask.png")
    beside = tmp_path / "flat"
    beside.mkdir()
    _save(mask, beside / "scan [a] (1)_mask.png")
    _save(mask, beside / "scan [a] (1)0_mask.png")  # another image's mask sharing the prefix
    (beside / "scan [a] (1)_mask.txt").write_text("not an image")
    assert [p.name for p in find_mask_files(beside / "scan [a] (1).png")] == ["scan [a] (1)_mask.png"]

    nested = tmp_path / "set"
    (nested / "image").mkdir(parents=True)
    (nested / "masks").mkdir()
    _save(mask, nested / "masks" / "case*1_mask_3.png")
    assert [p.name for p in find_mask_files(nested / "image" / "case*1.png")] == ["case*1_mask_3.png"]
    assert find_mask_files(nested / "image" / "other.png") == []


def test_size_mismatch_names_the_mask(busi: Path, tmp_path: Path) -> None:
    image = read_image(busi / "benign" / "images" / "benign (2).png")
    mask = Image.open(busi / "benign" / "mask" / "benign (2)_mask.png").resize((50, 40))
    path = tmp_path / "benign (2)_mask.png"
    mask.save(path)
    with pytest.raises(SynthmedError) as err:
        read_mask([path], image.shape)
    message = str(err.value)
    assert str(path) in message and "40 x 50" in message and f"{image.shape[0]} x {image.shape[1]}" in message


def test_three_valued_mask_is_rejected(tmp_path: Path) -> None:
    values = np.zeros((20, 30), dtype=np.uint8)
    values[5:10, 5:10], values[12:15, 12:20] = 255, 128
    path = _save(values, tmp_path / "x_mask.png")
    with pytest.raises(SynthmedError, match=r"x_mask\.png: not a binary mask: 3 distinct values"):
        read_mask([path], (20, 30))


def test_zero_one_and_zero_255_masks_agree(busi: Path, tmp_path: Path) -> None:
    source = busi / "benign" / "mask" / "benign (2)_mask.png"
    as_01 = _save((read_image(source) > 0).astype(np.uint8), tmp_path / "a_mask.png")
    shape = read_image(source).shape
    assert np.array_equal(read_mask([as_01], shape), read_mask([source], shape))


def test_normal_image_has_an_empty_mask(busi: Path) -> None:
    image = sorted((busi / "normal" / "images").glob("*.png"))[0]
    pairs = load_image_mask_pairs([image], DataConfig(image_size=32))
    assert pairs.masks.shape == (1, 1, 32, 32) and pairs.masks.dtype == torch.uint8
    assert int(pairs.masks.sum()) == 0 and not pairs.skipped


def test_load_pairs_skips_missing_and_corrupt_masks(busi: Path, tmp_path: Path) -> None:
    good = busi / "malignant" / "images" / "malignant (1).png"
    lonely = shutil.copy(good, tmp_path / "lonely (1).png")
    corrupt = shutil.copy(good, tmp_path / "corrupt.png")
    (tmp_path / "corrupt_mask.png").write_bytes(b"\x89PNG broken")
    pairs = load_image_mask_pairs([good, lonely, corrupt], DataConfig(image_size=48))
    assert pairs.sources == [str(good)]
    assert pairs.images.shape == (1, 1, 48, 48) and pairs.masks.shape == (1, 1, 48, 48)
    assert float(pairs.images.min()) >= 0.0 and float(pairs.images.max()) <= 1.0 and pairs.masks.sum() > 0
    reasons = {s.source: s.reason for s in pairs.skipped}
    assert "no mask file lonely (1)_mask.<ext> (PNG, GIF, TIFF, BMP or JPEG)" in reasons[str(lonely)]
    assert "corrupt_mask.png" in reasons[str(corrupt)]  # the reason names the bad mask file
    with pytest.raises(SynthmedError, match=r"corrupt_mask\.png"):
        load_image_mask_pairs([corrupt], DataConfig(image_size=48, on_error="raise"))


def _bright_where(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, 200.0, 20.0).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize(
    ("shape", "size", "mode"),
    [((32, 64), 64, "pad"), ((61, 100), 61, "crop"), ((40, 40), 40, "stretch")],
)
def test_pure_pad_or_crop_keeps_masks_pixel_exact(shape: tuple[int, int], size: int, mode: str) -> None:
    # No resampling: any offset between the mask and image geometry shows as mismatched pixels. The
    # odd 100 - 61 difference checks the mask uses the image's centre-crop rounding.
    mask = (np.random.default_rng(0).random(shape) > 0.5).astype(np.uint8)
    cfg = DataConfig(image_size=size, resize_mode=mode, clip_percentiles=(0.0, 100.0))
    assert np.array_equal(resize_mask(mask, cfg), preprocess(_bright_where(mask), cfg)[0] > 0.5)


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_resized_mask_stays_aligned_with_its_image(mode: str) -> None:
    mask = np.zeros((90, 150), dtype=np.uint8)
    mask[20:50, 60:100] = 1
    mask[60:80, 30:45] = 1
    cfg = DataConfig(image_size=64, resize_mode=mode, clip_percentiles=(0.0, 100.0))
    resized = resize_mask(mask, cfg)
    assert resized.shape == (64, 64) and resized.dtype == np.uint8 and set(np.unique(resized)) == {0, 1}
    image = preprocess(_bright_where(mask), cfg)[0] > 0.5
    assert _dice(resized, image) > 0.95
    other = {"pad": "stretch", "crop": "pad", "stretch": "crop"}[mode]
    misaligned = resize_mask(mask, DataConfig(image_size=64, resize_mode=other))
    assert _dice(misaligned, image) < 0.85  # the check above can tell a wrong geometry apart


def test_real_mask_follows_its_image(busi: Path) -> None:
    image = busi / "benign" / "images" / "benign (2).png"
    cfg = DataConfig(image_size=64, resize_mode="pad")
    pairs = load_image_mask_pairs([image], cfg)
    pixels, mask = pairs.images[0, 0].numpy(), pairs.masks[0, 0].numpy()
    content = np.flatnonzero(pixels.max(axis=1) > 0)  # rows holding the image, not the zero padding
    rows = np.flatnonzero(mask.any(axis=1))
    assert content[0] <= rows[0] and rows[-1] <= content[-1]
    original = read_mask(find_mask_files(image), read_image(image).shape)
    h, w = original.shape
    scale = 64 / max(h, w)
    assert mask.sum() == pytest.approx(original.sum() * scale * scale, rel=0.1)


# --- issue 20: masks in any image format, lossy masks, thin structures --------------------------------

MALIGNANT = ("malignant", "malignant (1)")


def _pair_in(busi: Path, folder: Path, ext: str, **save: object) -> Path:
    """The first malignant BUSI image with its mask saved as ``ext`` beside it."""
    cls, stem = MALIGNANT
    image = Path(shutil.copy(busi / cls / "images" / f"{stem}.png", folder / "x.png"))
    Image.open(busi / cls / "mask" / f"{stem}_mask.png").save(folder / f"x_mask.{ext}", **save)
    return image


@pytest.mark.parametrize("ext", ["gif", "tif", "bmp"])
def test_masks_in_other_lossless_formats(busi: Path, tmp_path: Path, ext: str) -> None:
    cfg = DataConfig(image_size=48)
    pairs = load_image_mask_pairs([_pair_in(busi, tmp_path, ext)], cfg)
    reference = load_image_mask_pairs([busi / MALIGNANT[0] / "images" / f"{MALIGNANT[1]}.png"], cfg)
    assert not pairs.skipped and torch.equal(pairs.masks, reference.masks)


def test_jpeg_mask_is_read_with_a_warning(
    busi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DataConfig(image_size=64)
    with caplog.at_level(logging.WARNING):
        pairs = load_image_mask_pairs([_pair_in(busi, tmp_path, "jpg", quality=75)], cfg)
    assert not pairs.skipped and "mask file(s) are JPEG" in caplog.text and "save masks as PNG" in caplog.text
    reference = load_image_mask_pairs([busi / MALIGNANT[0] / "images" / f"{MALIGNANT[1]}.png"], cfg).masks
    overlap = 2 * int((pairs.masks & reference).sum()) / int(pairs.masks.sum() + reference.sum())
    assert overlap > 0.97


def test_resizing_that_fragments_a_thin_mask_is_reported(
    busi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cls, stem = MALIGNANT
    image = Path(shutil.copy(busi / cls / "images" / f"{stem}.png", tmp_path / "x.png"))
    lesion = read_image(busi / cls / "mask" / f"{stem}_mask.png") > 0
    outline = lesion & ~ndimage.binary_erosion(lesion)  # a one-pixel line in one piece, like a vessel
    _save(outline * 255, tmp_path / "x_mask.png")
    with caplog.at_level(logging.WARNING):
        small = load_image_mask_pairs([image], DataConfig(image_size=32))
    ((source, before, after),) = small.fragmented
    assert (source, before) == (str(image), 1) and after > 2
    assert "use a larger data.image_size" in caplog.text and f"{before} -> {after} pieces" in caplog.text
    assert not load_image_mask_pairs([image], DataConfig(image_size=256)).fragmented  # no resizing
