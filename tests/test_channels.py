"""Colour and multi-channel images (issue 22): what ``data.channels`` keeps from the data, and how."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import DataConfig
from synthmed.data import load_arrays, prepare
from synthmed.data.loading import load_real_split
from synthmed.data.readers import decode_pixels, read_bytes
from synthmed.errors import SynthmedError


def _fundus_folder(retinamnist: Path, root: Path, n: int = 6, grey: int = 0) -> Path:
    """RetinaMNIST train images as RGB PNGs in two grade folders, plus ``grey`` of them saved as grey."""
    with np.load(retinamnist) as z:
        images, labels = z["train_images"][: 2 * n], z["train_labels"][: 2 * n, 0]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / ("none" if label == 0 else "some")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        (picture.convert("L") if i < grey else picture).save(folder / f"f{i}.png")
    return root


def test_colour_is_kept_by_default_and_grey_only_when_asked(
    retinamnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prepared = prepare(DataConfig(source=retinamnist), 0, tmp_path / "split.json")
    assert {r.channels for r in prepared.records} == {3}
    assert json.loads((tmp_path / "split.json").read_text())["items"][0]["channels"] == 3
    records = prepared.records[:20]
    names = sorted({r.label for r in prepared.records})
    colour = load_arrays(records, DataConfig(source=retinamnist, image_size=32), names)
    assert colour.images.shape == (20, 3, 32, 32) and colour.colour == 0
    with np.load(retinamnist) as z:  # the channels are the photographs' own: red brightest in a fundus
        red, green, blue = colour.images.mean((0, 2, 3)).tolist()
        real = z["train_images"].reshape(-1, 3).mean(0)
    assert red > green > blue and real[0] > real[1] > real[2]
    with caplog.at_level(logging.WARNING):
        grey = load_real_split(retinamnist, "train", DataConfig(image_size=32, channels=1))
    assert grey.loaded.images.shape[1] == 1 and grey.loaded.colour == 1080
    assert any("1080 of 1080 images have colour" in r.getMessage() for r in caplog.records)
    luminance = (colour.images * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1)
    pair = torch.stack([grey.loaded.images[:20, 0].flatten(), luminance.flatten()])
    assert torch.corrcoef(pair)[0, 1] > 0.95  # grey is the luminance (clipped at its own percentiles)


def test_grey_images_in_a_colour_set_are_repeated_and_reported(
    retinamnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _fundus_folder(retinamnist, tmp_path / "fundus", grey=3)
    with caplog.at_level(logging.WARNING):
        prepared = prepare(DataConfig(source=root), 0, tmp_path / "split.json")
    assert sorted(r.channels for r in prepared.records) == [1] * 3 + [3] * 9
    assert any("3 of 12 images are grey, repeated" in r.getMessage() for r in caplog.records)
    loaded = load_arrays(prepared.records, DataConfig(source=root, image_size=16), ["none", "some"])
    assert loaded.images.shape == (12, 3, 16, 16) and loaded.repeated == 3
    repeated = [i for i, r in enumerate(loaded.records) if r.channels == 1]
    assert all(torch.equal(loaded.images[i, 0], loaded.images[i, 2]) for i in repeated)


def test_an_image_with_other_channels_is_named(retinamnist: Path, tmp_path: Path) -> None:
    root = _fundus_folder(retinamnist, tmp_path / "fundus")
    with np.load(retinamnist) as z:
        two = z["train_images"][:3, :, :, :2]  # a two-contrast stack in an RGB set
    np.savez(tmp_path / "two.npz", train_images=two, train_labels=np.zeros((3, 1), np.int64))
    pixels = decode_pixels(read_bytes(root / "none" / "f0.png"), root / "none" / "f0.png")
    assert pixels.channels is not None and pixels.channels.shape == (28, 28, 3)
    loaded = load_real_split(tmp_path / "two.npz", "train", DataConfig(image_size=16))
    assert loaded.loaded.images.shape == (3, 2, 16, 16)
    with pytest.raises(SynthmedError, match=r"two\.npz.*2 channels, the data set 3"):
        load_real_split(tmp_path / "two.npz", "train", DataConfig(image_size=16, channels=3))
