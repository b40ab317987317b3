"""2D ControlNets trained on real BUSI ultrasound (masks and Canny edges): training, condition files,
generation with annotations, resume and replay, and the errors users meet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthmed
from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.manifest import read_manifest
from synthmed.cli import app
from synthmed.config import DataConfig, GenerateConfig, build_train_config
from synthmed.data.masks import resize_mask
from synthmed.data.readers import read_image
from synthmed.data.sources import discover
from synthmed.data.structure import read_condition_file, structure_map
from synthmed.errors import SynthmedError
from synthmed.models.builders import build_controlnet, build_unet, init_controlnet_from_unet
from synthmed.sampling.generate import generate_to_folder
from synthmed.sampling.pipeline import ImageCondition
from synthmed.training.run import train

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def pipe(busi_run: Path):
    return synthmed.load(busi_run)


@pytest.fixture(scope="module")
def mask_file(busi_small: Path) -> Path:
    return sorted((busi_small / "malignant" / "mask").glob("*_mask.png"))[0]


def test_mask_and_edges_controlnets_train_into_their_own_folders(busi_run: Path, pipe) -> None:
    for folder, condition in (("controlnet", "mask"), ("controlnet-edges", "edges")):
        state = ckpt.load(busi_run / folder / "model.pt")
        assert state["extra"]["condition"] == condition
        assert state["extra"]["class_names"] == ["benign", "malignant", "normal"]
        rows = [json.loads(line) for line in (busi_run / folder / "log.jsonl").read_text().splitlines()]
        losses = [r["loss_controlnet"] for r in rows if "loss_controlnet" in r]
        assert losses and all(np.isfinite(losses))
        assert list((busi_run / folder / "previews").glob("*.png"))
    assert set(pipe.controlnets) == {"mask", "edges"}


def test_controlnet_starts_as_a_copy_of_the_unet_encoder(pipe) -> None:
    cfg = pipe.cfg
    unet = build_unet(cfg.diffusion.arch, 3, 3)
    controlnet = build_controlnet(cfg.diffusion.arch, cfg.controlnet, 3, 3, 1, spatial_dims=2)
    copied = init_controlnet_from_unet(controlnet, unet)
    shared = [k for k in controlnet.state_dict() if k in unet.state_dict()]
    assert copied == len(shared) > 20
    for key in shared:
        assert torch.equal(controlnet.state_dict()[key], unet.state_dict()[key])


def test_generate_with_mask_writes_the_mask_as_annotation(pipe, busi_run: Path, mask_file: Path, tmp_path):
    out = tmp_path / "syn"
    args = ["generate", "--run", str(busi_run), "--out", str(out), "--label", "malignant", "--count", "3"]
    args += ["--steps", "3", "--condition-file", str(mask_file), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = resize_mask(read_image(mask_file) > 0, pipe.cfg.data) * 255
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 3
    for row in rows:
        image = np.asarray(Image.open(out / row["file"]))
        annotation = np.asarray(Image.open(out / row["annotation"]))
        assert image.shape == annotation.shape == (32, 32)
        assert row["annotation"] == row["file"].replace(".png", "_mask.png")
        assert np.array_equal(annotation, expected)
        assert row["condition"] == "mask" and row["conditioning_scale"] == 1.0
        assert row["controlnet_sha256"] == pipe.controlnet.sha256
        assert row["condition_area"] == pytest.approx((expected > 0).mean())
    # Read back as a data set: the masks pair with their images and are not images themselves.
    found = discover(DataConfig(source=out, allow_single_class=True))
    assert len(found.records) == 3
    # Same command: nothing new; other conditioning strength for the same seeds: refused.
    assert runner.invoke(app, args).exit_code == 0
    assert len(read_manifest(out / "manifest.jsonl")) == 3
    refused = runner.invoke(app, [*args, "--conditioning-scale", "0.5"])
    assert refused.exit_code == 2 and "conditioning_scale" in refused.output
    # A manifest row replays bit for bit.
    replayed = pipe.regenerate(rows[1])
    assert np.array_equal(np.round(replayed[0].numpy() * 255), np.asarray(Image.open(out / rows[1]["file"])))


def test_the_mask_steers_the_image_and_scale_zero_ignores_it(pipe, mask_file: Path) -> None:
    mask = read_condition_file(mask_file, "mask", pipe.cfg.data, 1.5)
    other = torch.flip(mask, dims=[-1])

    def sample(maps: torch.Tensor, scale: float) -> torch.Tensor:
        control = ImageCondition(maps[None], "mask", scale)
        return pipe.sample_batch([4, 5], "malignant", steps=4, control=control)

    plain = pipe.sample_batch([4, 5], "malignant", steps=4)
    assert torch.equal(sample(mask, 0.0), plain)
    # The map reaches the network (20 training steps only start to open the ControlNet's zero-initialised
    # convolutions, so the effect is small here; benchmarks/controlnet64.py measures how well it steers).
    assert not torch.equal(sample(mask, 1.0), sample(other, 1.0))
    assert not torch.equal(sample(mask, 1.0), plain)


def test_condition_files_any_size_binary_empty(pipe, mask_file: Path, tmp_path: Path) -> None:
    big = tmp_path / "big_mask.png"
    Image.open(mask_file).resize((600, 450), Image.NEAREST).save(big)
    maps = read_condition_file(big, "mask", pipe.cfg.data, 1.5)
    assert maps.shape == (1, 32, 32) and set(maps.unique().tolist()) <= {0.0, 1.0} and maps.any()
    grey = tmp_path / "grey_mask.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 7 * 30).astype(np.uint8)).save(grey)
    with pytest.raises(SynthmedError, match=r"grey_mask\.png.*not a binary mask"):
        read_condition_file(grey, "mask", pipe.cfg.data, 1.5)
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(empty)
    cfg = GenerateConfig(run_dir=pipe.run_dir, out=tmp_path / "e", label="normal", count=1, steps=2)
    with pytest.warns(UserWarning, match="empty.*without a lesion"):
        generate_to_folder(cfg.model_copy(update={"condition_file": empty}), progress=False)
    row = read_manifest(tmp_path / "e" / "manifest.jsonl")[0]
    assert row["condition_area"] == 0.0
    assert not np.asarray(Image.open(tmp_path / "e" / row["annotation"])).any()


def test_edges_from_an_image_or_a_binary_edge_map(pipe, busi_small: Path, tmp_path: Path) -> None:
    image = sorted((busi_small / "benign" / "images").glob("*.png"))[0]
    edges = read_condition_file(image, "edges", pipe.cfg.data, 1.5)
    assert edges.shape == (1, 32, 32) and set(edges.unique().tolist()) == {0.0, 1.0}
    drawn = tmp_path / "drawn.png"
    Image.fromarray((edges[0].numpy() * 255).astype(np.uint8)).save(drawn)
    assert torch.equal(read_condition_file(drawn, "edges", pipe.cfg.data, 1.5), edges)
    cfg = GenerateConfig(
        run_dir=pipe.run_dir, out=tmp_path / "g", label="benign", count=2, steps=2, condition_file=image
    )
    generate_to_folder(cfg.model_copy(update={"condition": "edges"}), progress=False)
    row = read_manifest(tmp_path / "g" / "manifest.jsonl")[0]
    assert row["annotation"] == "benign/conditions/syn_00000000_edges.png"
    assert len(discover(DataConfig(source=tmp_path / "g", allow_single_class=True)).records) == 2
    with pytest.raises(SynthmedError, match=r"no trained sobel ControlNet.*--condition sobel"):
        generate_to_folder(
            cfg.model_copy(update={"condition": "sobel", "out": tmp_path / "s"}), progress=False
        )


def test_structure_maps_follow_the_image() -> None:
    image = np.zeros((32, 32))
    image[8:24, 8:24] = 1.0
    edges = structure_map(image, "edges", 1.0)
    assert edges[8:24, 8:24][4:-4, 4:-4].sum() == 0 and edges.sum() > 20  # the square's outline only
    sobel = structure_map(image, "sobel", 1.0)
    assert sobel.max() == 1.0 and sobel[0, 0] == 0.0
    assert not structure_map(np.full((16, 16), 0.3), "sobel", 1.0).any()


def test_mask_controlnet_needs_masks_and_keeps_its_settings(tiny_run: Path, busi_run: Path, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    cfg = build_train_config({**_saved(run_dir), "run_dir": str(run_dir), "controlnet": {"steps": 2}})
    with pytest.raises(SynthmedError, match="no training image has a mask file"):
        train(cfg, ["controlnet"], progress=False)
    cfg.controlnet = cfg.controlnet.model_copy(update={"empty_mask_classes": ["healthy"]})
    with pytest.raises(SynthmedError, match="healthy"):
        train(cfg, ["controlnet"], progress=False)
    # A started ControlNet continues only with the settings it was started with.
    other = tmp_path / "busi"
    shutil.copytree(busi_run, other)
    cfg = build_train_config({**_saved(other), "run_dir": str(other)})
    cfg.controlnet = cfg.controlnet.model_copy(update={"lr": 1e-5, "steps": 30})
    with pytest.raises(SynthmedError, match=r"controlnet\.lr"):
        train(cfg, ["controlnet"], resume=True, progress=False)


def _saved(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_condition_options_are_checked(pipe, tiny_run: Path, mask_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="--condition needs --condition-file"):
        generate_to_folder(
            GenerateConfig(run_dir=pipe.run_dir, out=tmp_path / "a", count=1, condition="edges"),
            progress=False,
        )
    plain = GenerateConfig(run_dir=tiny_run, out=tmp_path / "b", count=1, steps=2, condition_file=mask_file)
    with pytest.raises(SynthmedError, match="no trained mask ControlNet"):
        generate_to_folder(plain, progress=False)
    with pytest.raises(SynthmedError, match="3D ControlNets follow the label maps"):
        build_train_config({"preset": "tiny3d", "controlnet": {"condition": "edges"}})


def test_python_api(pipe, mask_file: Path, busi_small: Path) -> None:
    control = pipe.condition(mask_file)
    out = pipe.generate(label="benign", n=2, steps=2, control=control)
    assert out.images.shape == (2, 1, 32, 32)
    assert torch.equal(out.images, pipe.sample_batch([0, 1], "benign", steps=2, control=control))
    image = sorted((busi_small / "normal" / "images").glob("*.png"))[0]
    region = np.zeros(read_image(image).shape, np.uint8)
    region[40:80, 60:120] = 1
    edit = pipe.edit("insert", str(image), region, label="malignant", steps=2)
    assert edit.row["operation"] == "insert" and edit.image.shape == region.shape


def test_lesion_free_images_pair_with_an_empty_mask(busi_small: Path, tmp_path: Path) -> None:
    from synthmed.data.masks import load_image_mask_pairs

    normal = []  # BUSI ships empty masks for 'normal'; a data set without them relies on lesion_free
    for src in sorted((busi_small / "normal" / "images").glob("*.png"))[:2]:
        normal.append(tmp_path / src.name)
        shutil.copy(src, normal[-1])
    malignant = sorted((busi_small / "malignant" / "images").glob("*.png"))[:2]
    cfg = DataConfig(image_size=32)
    plain = load_image_mask_pairs([*normal, *malignant], cfg)
    assert plain.sources == [str(p) for p in malignant] and len(plain.skipped) == 2
    pairs = load_image_mask_pairs([*normal, *malignant], cfg, lesion_free=normal)
    assert pairs.sources == [str(p) for p in (*normal, *malignant)] and not pairs.skipped
    assert not pairs.masks[:2].any() and pairs.masks[2:].flatten(1).any(1).all()


def test_gif_masks_train_and_a_class_losing_every_mask_stops(
    busi_run: Path, busi_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    data = Path(shutil.copytree(busi_small, tmp_path / "data"))
    for png in (data / "malignant" / "mask").glob("*.png"):
        Image.open(png).save(png.with_suffix(".gif"))
        png.unlink()

    def run_controlnet(name: str, **data_fields: object) -> None:
        run = Path(shutil.copytree(busi_run, tmp_path / name, ignore=shutil.ignore_patterns("controlnet*")))
        values = _saved(run) | {"run_dir": str(run), "controlnet": {"steps": 2}}
        values["data"] |= {"source": str(data), **data_fields}
        (run / "config.yaml").write_text(yaml.safe_dump(values))
        train(build_train_config(values), ["controlnet"], progress=False)

    run_controlnet("gif")  # every malignant image pairs with its GIF mask
    assert "controlnet train: skipped" not in capsys.readouterr().err
    for gif in (data / "malignant" / "mask").glob("*.gif"):
        gif.unlink()
    with pytest.raises(SynthmedError, match=r"\['malignant'\] lost every image"):
        run_controlnet("lost")
    assert "malignant 0 kept, 8 skipped" in capsys.readouterr().err
    run_controlnet("skip", skip_empty_classes=True)  # asked for: trained without it
    assert (tmp_path / "skip" / "controlnet" / "model.pt").is_file()
