"""Colour and multi-channel images (issue 22): what ``data.channels`` keeps from the data, and how."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import AutoencoderArch, DataConfig
from synthmed.data import load_arrays, prepare
from synthmed.data.loading import load_real_split
from synthmed.data.readers import decode_pixels, read_bytes
from synthmed.errors import SynthmedError

SUBSET = {"train": 360, "val": 40, "test": 80}  # RetinaMNIST images per split in the end-to-end test


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
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    values = {
        "preset": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(tmp_path / "two.npz")},
    }
    with pytest.raises(SynthmedError, match=r"2 channels; generated 2D images are grey or RGB"):
        train(
            build_train_config(values | {"data": values["data"] | {"allow_single_class": True}}),
            progress=False,
        )


def test_the_foundation_autoencoder_encodes_each_channel_as_a_grey_image(retinamnist: Path) -> None:
    from synthmed.models import foundation
    from synthmed.models.channelwise import ChannelWiseAutoencoder

    arch = AutoencoderArch.model_validate(foundation.shipped_card()["arch"])
    grey = foundation.load_foundation_autoencoder(arch)
    colour = load_real_split(retinamnist, "val", DataConfig(image_size=32)).loaded.images[:4]
    wise = ChannelWiseAutoencoder(grey, 3)
    with torch.no_grad():
        mu, sigma = wise.encode(colour)
        green, _ = grey.encode(colour[:, 1:2])
        decoded = wise.decode(mu)
    assert mu.shape == sigma.shape == (4, 12, 8, 8)
    assert torch.allclose(mu[:, 4:8], green, atol=1e-5)  # channel-major: red, green, blue latents
    assert decoded.shape == colour.shape
    psnr = 10 * torch.log10(1 / ((decoded.clamp(0, 1) - colour) ** 2).mean())
    assert psnr > 20  # the grey network reconstructs each colour channel


def test_retinamnist_in_colour_end_to_end(retinamnist: Path, tmp_path: Path) -> None:
    """Train a tiny UNet on the shipped autoencoder (channel-wise: 4 latents per colour channel), generate RGB
    PNGs, distil with a lightweight decoder (it decodes every channel's latents together), evaluate per
    channel, run the augmentation benchmark and import into the catalogue."""
    from synthmed.config import DistillConfig, EvaluateConfig, GenerateConfig, build_train_config
    from synthmed.evaluation.run import evaluate
    from synthmed.sampling.generate import generate_to_folder
    from synthmed.training.distill import distill
    from synthmed.training.run import train

    run, npz = tmp_path / "run", tmp_path / "retina.npz"
    with np.load(retinamnist) as z:  # part of RetinaMNIST: enough to learn its colours, quick to load
        arrays = {f"{s}_{k}": z[f"{s}_{k}"][:n] for s, n in SUBSET.items() for k in ("images", "labels")}
    np.savez(npz, **arrays)
    unet = {"channels": [16, 32], "attention_levels": [False, True], "num_head_channels": 8}
    values = {"run_dir": str(run), "data": {"source": str(npz), "image_size": 32}}
    diffusion = {"arch": unet | {"norm_num_groups": 8}, "steps": 100, "batch_size": 16}
    cfg = build_train_config(values | {"diffusion": diffusion})
    train(cfg, progress=False)
    assert build_train_config(values).data.channels is None and cfg.data.channels == 3
    assert "channels: 3" in (run / "config.yaml").read_text()
    assert cfg.channelwise and cfg.latent_channels == 12
    out = generate_to_folder(GenerateConfig(run_dir=run, out=tmp_path / "syn", label="2", count=16, seed=0))
    pixels = np.stack([np.asarray(Image.open(f)) for f in sorted(out.glob("2/*.png"))]) / 255.0
    assert pixels.shape == (16, 32, 32, 3)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 0.05  # colour, not grey in three channels
    real = load_real_split(npz, "train", DataConfig(image_size=32)).loaded.images.mean((0, 2, 3))
    mean = pixels.reshape(-1, 3).mean(0)
    assert np.abs(mean - real.numpy()).max() < 0.15 and mean[0] > mean[1] > mean[2]  # a fundus's colours
    settings = {"extractor_steps": 10, "segmenter_steps": 5, "c2st_steps": 5, "bootstrap": 10}
    settings |= {"msssim_pairs": 10, "c2st_permutations": 10, "image_size": 32}
    evaluate(EvaluateConfig(synthetic=out, out=tmp_path / "eval", **settings))
    doc = json.loads((tmp_path / "eval" / "report.json").read_text())
    channels = doc["sharpness"]["all"]["per_channel"]
    assert [c["channel"] for c in channels] == [0, 1, 2]
    means = [c["mean_intensity"]["synthetic"]["value"] for c in channels]
    assert means[0] > means[1] > means[2]  # the report sees the colours (after evaluate's own windowing)

    rounds = {"steps": 2, "decoder_steps": 2, "batch_size": 4, "checkpoint_every": 2, "teacher_steps": 4}
    assert distill(DistillConfig(run_dir=run, **rounds), progress=False) == [1, 2, 4]
    fast = GenerateConfig(
        run_dir=run, out=tmp_path / "fast", label="2", count=2, sampler="distilled", steps=1
    )
    lite = generate_to_folder(fast.model_copy(update={"decoder": "lite"}))
    assert all(Image.open(f).mode == "RGB" for f in lite.glob("2/*.png"))

    # the augmentation benchmark trains colour classifiers on real (the npz) + these synthetic images
    from synthmed.config import AugmentationConfig
    from synthmed.downstream.run import benchmark

    arms = {"arms": ["real", "real+synthetic"], "ratios": [0.5], "seeds": [0], "steps": 6, "eval_every": 3}
    bench = AugmentationConfig(
        real_train=npz,
        real_test=npz,
        synthetic=out,
        out=tmp_path / "bench",
        image_size=32,
        **arms,
    )
    assert {r["arm"] for r in benchmark(bench)["runs"]} == {"real", "real+synthetic"}

    # the catalogue takes them as generated: RGB PNGs of the row's kind, regenerated bit for bit
    from typer.testing import CliRunner

    from synthmed.catalogue.migrate import upgrade
    from synthmed.cli import app

    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    result = CliRunner().invoke(app, ["catalogue", "import", str(out), "--database", url, "--verify-all"])
    assert result.exit_code == 0, result.output
    assert "16 synthetic samples" in result.output


def _fundus_with_discs(retinamnist: Path, root: Path, n: int = 12) -> Path:
    """RetinaMNIST photographs as RGB PNGs with a mask of the brightest (optic-disc) region each, in the
    images/ + mask/ layout of a mask ControlNet's data."""
    with np.load(retinamnist) as z:
        images = z["train_images"][:n]
    for i, image in enumerate(images):
        cls = root / ("a" if i % 2 else "b")
        (cls / "images").mkdir(parents=True, exist_ok=True)
        (cls / "mask").mkdir(exist_ok=True)
        Image.fromarray(image).save(cls / "images" / f"f{i}.png")
        bright = image.astype(float).mean(-1)
        Image.fromarray(((bright >= np.percentile(bright, 90)) * 255).astype(np.uint8)).save(
            cls / "mask" / f"f{i}_mask.png"
        )
    return root


def test_a_colour_controlnet_edit_keeps_every_pixel_outside_the_region(
    retinamnist: Path, tmp_path: Path
) -> None:
    import synthmed
    from synthmed.config import build_train_config
    from synthmed.sampling.editing import edit_image, save_edit
    from synthmed.training.run import train

    root = _fundus_with_discs(retinamnist, tmp_path / "fundus")
    values = {
        "preset": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(root), "image_size": 32},
    }
    steps = {"autoencoder": {"steps": 10}, "diffusion": {"steps": 10}, "controlnet": {"steps": 6}}
    train(build_train_config(values | steps), ["autoencoder", "diffusion", "controlnet"], progress=False)
    image = root / "b" / "images" / "f0.png"
    pixels = np.asarray(Image.open(image))
    region = np.zeros(pixels.shape[:2], np.uint8)
    region[8:16, 10:20] = 255
    result = edit_image(synthmed.load(tmp_path / "run"), "insert", image, region, label="a", steps=3)
    assert result.row["controlnet_sha256"] and result.image.shape == pixels.shape == (28, 28, 3)
    inside = region > 0
    assert np.array_equal(result.image[~inside], pixels[~inside].astype(np.float32))  # bit for bit
    assert np.abs(result.image[inside] - pixels[inside]).mean() > 1.0
    out = save_edit(result, tmp_path / "edited.png")[0]
    written = np.asarray(Image.open(out))
    assert written.shape == (28, 28, 3) and np.array_equal(written[~inside], pixels[~inside])


def test_a_colour_study_is_rendered_alike_for_real_and_synthetic(retinamnist: Path, tmp_path: Path) -> None:
    """Blinding with colour: every item of a study holding colour is served as the same kind of RGB PNG
    (same byte length, no metadata), colour as stored, whatever the source's format, size or channels."""
    from synthmed.review import render

    with np.load(retinamnist) as z:
        photos = z["test_images"][:4]
    items = []
    for i, photo in enumerate(photos):  # real: JPEG at 3x the size; synthetic-like: 8-bit RGB PNG at 32 px
        real, syn = tmp_path / f"real{i}.jpg", tmp_path / f"syn{i}.png"
        Image.fromarray(photo).resize((84, 84)).save(real, quality=95)
        Image.fromarray(photo).resize((32, 32)).save(syn)
        items += [(2 * i, real), (2 * i + 1, syn)]
    grey = tmp_path / "grey.png"
    Image.fromarray(photos[0]).convert("L").save(grey)
    items.append((99, grey))
    render.render_study(tmp_path / "cache", 1, items, 2, size=64, native=32)
    served = {i: render.slice_path(tmp_path / "cache", 1, i, 0).read_bytes() for i, _ in items}
    assert len({len(b) for b in served.values()}) == 1  # same kind, same length: RGB for all
    planes = {i: np.asarray(Image.open(io.BytesIO(b))) for i, b in served.items()}
    assert all(p.shape == (64, 64, 3) for p in planes.values())
    assert np.array_equal(planes[99][..., 0], planes[99][..., 2])  # grey stays grey
    real, syn = planes[0].reshape(-1, 3).mean(0), planes[1].reshape(-1, 3).mean(0)
    assert real[0] > real[1] > real[2] and np.abs(real - syn).max() < 6  # colour as stored, window off
    assert render.study_info(tmp_path / "cache", 1)["colour"] is True
