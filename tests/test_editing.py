"""Editing real BUSI ultrasound images: lesion insertion and removal (inpainting), harmonisation (SDEdit),
the mapping back onto the input's grid, output files and bad regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthmed
from synthmed.cli import app
from synthmed.config import DataConfig
from synthmed.data.preprocess import preprocess
from synthmed.data.readers import read_image
from synthmed.errors import SynthmedError
from synthmed.sampling.editing import edit_image, placement, save_edit, to_input_grid

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def pipe(busi_run: Path):
    return synthmed.load(busi_run)


@pytest.fixture(scope="module")
def normal_image(busi_small: Path) -> Path:
    return sorted((busi_small / "normal" / "images").glob("*.png"))[0]


def _region(shape: tuple[int, int]) -> np.ndarray:
    region = np.zeros(shape, np.uint8)
    h, w = shape
    region[h // 3 : h // 2, w // 3 : w // 2] = 255
    return region


@pytest.mark.parametrize("operation", ["insert", "remove"])
def test_inpainting_changes_only_the_region(pipe, normal_image: Path, operation: str) -> None:
    pixels = read_image(normal_image)
    region = _region(pixels.shape)
    result = edit_image(pipe, operation, normal_image, region, label="malignant", steps=6, resample=2)
    inside = region > 0
    assert result.image.shape == pixels.shape
    assert np.array_equal(result.image[~inside], pixels[~inside])  # stated tolerance: 0 outside
    assert np.abs(result.image[inside] - pixels[inside]).mean() > 2.0  # intensity levels of the 8-bit input
    assert result.row["max_abs_change_outside_region"] == 0.0
    assert np.array_equal(result.region, inside.astype(np.uint8))
    # At model resolution too, outside the (one-pixel grown) model region nothing moves.
    changed = (result.model_image - result.model_input).abs()[0] > 0
    assert changed.any() and changed.float().mean() < 0.5


def test_resampling_and_seed_change_the_new_content_reproducibly(pipe, normal_image: Path) -> None:
    region = _region(read_image(normal_image).shape)

    def run(**kw):
        return edit_image(pipe, "insert", normal_image, region, label="benign", steps=4, **kw).image

    assert np.array_equal(run(seed=1), run(seed=1))
    assert not np.array_equal(run(seed=1), run(seed=2))
    assert not np.array_equal(run(seed=1, resample=1), run(seed=1, resample=3))


def test_sdedit_strength_zero_keeps_the_input_and_one_ignores_it(
    pipe, normal_image: Path, busi_small
) -> None:
    other = sorted((busi_small / "benign" / "images").glob("*.png"))[0]
    zero = edit_image(pipe, "harmonize", normal_image, label="benign", strength=0.0, steps=5)
    with torch.inference_mode():  # strength 0: only the autoencoder round trip remains
        z = pipe.autoencoder.encode(zero.model_input[None])[0]
        recon = pipe.autoencoder.decode(z).clamp(0, 1)[0]
    assert torch.allclose(zero.model_image, recon, atol=1e-5)
    weak = edit_image(pipe, "harmonize", normal_image, label="benign", strength=0.3, steps=10)
    full = edit_image(pipe, "harmonize", normal_image, label="benign", strength=1.0, steps=10)
    full_other = edit_image(pipe, "harmonize", other, label="benign", strength=1.0, steps=10)
    assert torch.equal(full.model_image, full_other.model_image)  # the input is ignored
    assert torch.equal(full.model_image, pipe.sample_batch([0], "benign", steps=10)[0])
    distance = [(r.model_image - zero.model_input).abs().mean() for r in (zero, weak, full)]
    assert distance[0] < distance[1] < distance[2]
    assert full.image.shape == read_image(normal_image).shape


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_placement_inverts_preprocessing(normal_image: Path, mode: str) -> None:
    pixels = read_image(normal_image)
    cfg = DataConfig(image_size=64, resize_mode=mode, clip_percentiles=(0.0, 100.0))
    place = placement(pixels.shape, 64, mode)
    if mode == "pad":  # the content box is exactly where preprocessing put the image
        ones = preprocess(np.pad(np.ones((pixels.shape[0] - 2, pixels.shape[1] - 2)), 1), cfg)[0] > 0
        rows, cols = np.nonzero(ones)
        assert (rows.min(), cols.min()) >= (place.target[0].start, place.target[1].start)
        assert (rows.max(), cols.max()) < (place.target[0].stop, place.target[1].stop)
    back = to_input_grid(torch.from_numpy(preprocess(pixels, cfg)), pixels, np.ones(pixels.shape), cfg)
    box = back[place.source]
    assert np.corrcoef(box.ravel(), pixels[place.source].ravel())[0, 1] > 0.9  # same image, blurred


def test_edit_files_and_cli(busi_run: Path, normal_image: Path, tmp_path: Path) -> None:
    region_file = tmp_path / "region.png"
    Image.fromarray(_region(read_image(normal_image).shape)).save(region_file)
    out = tmp_path / "edited" / "lesion.png"
    args = [
        "edit",
        "insert",
        "--run",
        str(busi_run),
        "--image",
        str(normal_image),
        "--region",
        str(region_file),
    ]
    result = runner.invoke(app, [*args, "--label", "malignant", "--out", str(out), "--steps", "4"])
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(normal_image).convert("L"))
    edited = np.asarray(Image.open(out))
    mask = np.asarray(Image.open(out.with_name("lesion_mask.png")))
    assert edited.dtype == np.uint8 and edited.shape == original.shape
    assert np.array_equal(edited[mask == 0], original[mask == 0])
    assert np.array_equal(mask > 0, np.asarray(Image.open(region_file)) > 0)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["operation"] == "insert" and meta["label"] == "malignant" and meta["controlnet_sha256"]
    tif = tmp_path / "harmonised.tif"
    args = ["edit", "harmonize", "--run", str(busi_run), "--image", str(normal_image), "--label", "benign"]
    assert runner.invoke(app, [*args, "--strength", "0.4", "--out", str(tif), "--steps", "4"]).exit_code == 0
    assert np.asarray(Image.open(tif)).dtype == np.float32


def test_bad_regions_are_refused_naming_the_problem(pipe, normal_image: Path, tmp_path: Path) -> None:
    shape = read_image(normal_image).shape
    with pytest.raises(SynthmedError, match="region is 10 x 10"):
        edit_image(pipe, "insert", normal_image, np.ones((10, 10)), label="benign")
    grey = _region(shape).astype(np.float32)
    grey[0, 0] = 7
    with pytest.raises(SynthmedError, match="not a binary mask"):
        edit_image(pipe, "remove", normal_image, grey)
    with pytest.raises(SynthmedError, match="empty"):
        edit_image(pipe, "remove", normal_image, np.zeros(shape))
    dot = np.zeros(shape)
    dot[5, 5] = 1
    with pytest.raises(SynthmedError, match="vanishes"):
        edit_image(pipe, "remove", normal_image, dot)
    with pytest.raises(SynthmedError, match="needs the lesion's --label"):
        edit_image(pipe, "insert", normal_image, _region(shape))
    with pytest.raises(SynthmedError, match="one-step sampler"):
        edit_image(pipe, "remove", normal_image, _region(shape), sampler="pndm", resample=2)
    with pytest.raises(SynthmedError, match="needs a region"):
        edit_image(pipe, "remove", normal_image)
    with pytest.raises(SynthmedError, match="unknown label 'cyst'"):
        edit_image(pipe, "insert", normal_image, _region(shape), label="cyst")
    out = tmp_path / "x.jpg"
    result = edit_image(pipe, "harmonize", normal_image, label="benign", strength=0.2, steps=2)
    with pytest.raises(SynthmedError, match=r"\.png or \.tif"):
        save_edit(result, out)
    result.image = result.image * 1000.0
    with pytest.raises(SynthmedError, match="16-bit PNG"):
        save_edit(result, tmp_path / "big.png")
