"""The augmentation benchmark on real data: tiny classify (Kermany) and segment (BUSI) runs, leak check."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthmed.cli import app
from synthmed.config import AugmentationConfig, DataConfig
from synthmed.data import Record, prepare, read_image, write_split
from synthmed.data.integrity import pixel_hash
from synthmed.data.sources import hash_file
from synthmed.downstream.data import subsample_minority
from synthmed.downstream.run import benchmark
from synthmed.errors import SynthmedError

CLASSES = ("NORMAL", "PNEUMONIA")


def _copy(files: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, dest / f.name)) for f in files]


@pytest.fixture(scope="module")
def cxr(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real train (40/class), real test (30/class) and a stand-in 'synthetic' folder of other real images
    (30/class) whose manifest points at a run whose split.json holds the real training images."""
    root = tmp_path_factory.mktemp("cxr")
    records = []
    for cls in CLASSES:
        train = sorted((kermany / "train" / cls).glob("*.jpeg"))
        records += [
            Record(f"{cls}/{f.name}", cls, hash_file(f), "train", pixel_hash(read_image(f)))
            for f in _copy(train[:40], root / "train" / cls)
        ]
        _copy(train[40:70], root / "synthetic" / cls)
        _copy(sorted((kermany / "test" / cls).glob("*.jpeg"))[:30], root / "test" / cls)
    write_split(root / "run" / "split.json", records, list(CLASSES), [], {})
    (root / "synthetic" / "manifest.jsonl").write_text(json.dumps({"run_dir": str(root / "run")}) + "\n")
    return {k: root / k for k in ("train", "test", "synthetic", "run")}


def _cfg(paths: dict[str, Path], out: Path, **kw: object) -> AugmentationConfig:
    values = {
        "real_train": paths["train"],
        "real_test": paths["test"],
        "synthetic": paths["synthetic"],
        "out": out,
        "image_size": 32,
        "seeds": [0],
        "steps": 30,
        "eval_every": 10,
        "batch_size": 16,
        "bootstrap": 50,
    }
    return AugmentationConfig.model_validate(values | kw)


def test_classify_real_vs_real_plus_synthetic(cxr: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(cxr, tmp_path / "out", arms=["real", "real+synthetic"], ratios=[0.5, 2.0])
    results = benchmark(cfg)
    assert results["leak_check"]["checked"] and results["leak_check"]["runs"] == [str(cxr["run"])]
    assert results["data"]["test"] == {"NORMAL": 30, "PNEUMONIA": 30}
    assert sum(results["data"]["val"].values()) == 12  # 15% of 80, stratified
    real, mixed, capped = results["runs"]
    assert (real["arm"], real["n_synthetic"], mixed["n_synthetic"]) == ("real", 0, mixed["n_real"] // 2)
    assert capped["n_synthetic"] == 60 and capped["ratio_achieved"] == pytest.approx(60 / 68, abs=1e-3)
    assert 1 <= real["training"]["best_step"] <= 30
    for metric in ("macro_f1", "balanced_accuracy", "auroc", "f1[NORMAL]", "f1[PNEUMONIA]"):
        entry = mixed["metrics"][metric]
        assert 0.0 <= entry["ci95"][0] <= entry["ci95"][1] <= 1.0
        diff = mixed["vs_real"][metric]["value"]
        assert diff == pytest.approx(entry["value"] - real["metrics"][metric]["value"])
    assert real["vs_real"] is None and results["pooled"][1]["vs_real"]["macro_f1"]["ci95"] is not None
    rows = list(csv.DictReader((cfg.out / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["real", "real+synthetic", "real+synthetic"] and rows[1][
        "macro_f1_vs_real"
    ]
    page = (cfg.out / "report.html").read_text()
    assert "gain_vs_ratio.png" in page and (cfg.out / "gain_vs_fraction.png").stat().st_size > 0
    assert json.loads((cfg.out / "results.json").read_text())["settings"]["steps"] == 30


def test_fill_class_adds_only_minority_synthetic_images(cxr: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(cxr, tmp_path / "out", arms=["real+synthetic"], ratios=[0.25], fill_class="NORMAL", steps=5)
    results = benchmark(cfg)
    run = results["runs"][0]  # the ratio counts the fill class's real images (rarity)
    assert run["n_synthetic"] == round(0.25 * results["data"]["train"]["NORMAL"])
    with pytest.raises(SynthmedError, match="fill_class"):
        benchmark(cfg.model_copy(update={"fill_class": "COVID"}))


def test_leak_check_refuses_a_test_image_from_the_generator_training_split(
    cxr: dict[str, Path], tmp_path: Path
) -> None:
    leaked = sorted((cxr["test"] / "NORMAL").iterdir())[3]
    run = tmp_path / "run"
    write_split(
        run / "split.json",
        [Record("NORMAL/x.jpeg", "NORMAL", hash_file(leaked), "train")],
        ["NORMAL"],
        [],
        {},
    )
    synthetic = tmp_path / "synthetic"
    shutil.copytree(cxr["synthetic"], synthetic)
    (synthetic / "manifest.jsonl").write_text(json.dumps({"run_dir": str(run)}) + "\n")
    args = ["--real-train", cxr["train"], "--real-test", cxr["test"], "--synthetic", synthetic]
    result = CliRunner().invoke(
        app, ["benchmark-augmentation", *map(str, args), "--out", str(tmp_path / "o"), "--image-size", "32"]
    )
    assert result.exit_code == 2
    assert (
        "generator's train split" in result.output
        and leaked.name in result.output
        and str(run) in result.output
    )


def test_segment_on_busi(busi: Path, tmp_path: Path) -> None:
    for cls in ("benign", "malignant"):
        images = sorted((busi / cls / "images").glob("*.png"))
        for part, chosen in (("train", images[:20]), ("test", images[20:30])):
            _copy(chosen, tmp_path / part / cls / "images")
            _copy(
                [busi / cls / "mask" / f"{f.stem}_mask.png" for f in chosen], tmp_path / part / cls / "mask"
            )
        for f in images[30:40]:  # synthetic layout: <stem>_mask.png beside the image
            _copy([f, busi / cls / "mask" / f"{f.stem}_mask.png"], tmp_path / "synthetic" / cls)
    paths = {k: tmp_path / k for k in ("train", "test", "synthetic")}
    cfg = _cfg(paths, tmp_path / "out", task="segment", arms=["real", "synthetic"], steps=20)
    results = benchmark(cfg)
    assert not results["leak_check"]["checked"]
    assert results["leak_check"]["reason"].startswith(
        "not checked: the synthetic folder has no manifest.jsonl"
    )
    real, syn = results["runs"]
    assert syn["n_real"] == 0 and syn["n_synthetic"] == 20 and real["n_real"] == 34
    assert 0.0 <= real["metrics"]["dice"]["value"] <= 1.0
    assert 1 <= real["training"]["step"] <= 20 and 0.0 <= real["training"]["val_dice"] <= 1.0
    assert "mean Dice" in results["protocol"]["early_stopping"]
    assert syn["vs_real"]["dice"]["value"] == pytest.approx(
        syn["metrics"]["dice"]["value"] - real["metrics"]["dice"]["value"]
    )
    with pytest.raises(SynthmedError, match="weighted"):  # a class-weighted loss is for classification
        benchmark(cfg.model_copy(update={"arms": ["weighted"]}))


def test_minority_subsampling_gives_the_requested_prevalence() -> None:
    labels = torch.tensor([1] * 1000 + [0] * 300 + [1] * 900)
    keep = subsample_minority(labels, 0, 0.05, seed=1)
    kept = labels[keep]
    assert (kept == 1).sum() == 1900 and (kept == 0).float().mean().item() == pytest.approx(0.05)
    assert not torch.equal(keep, subsample_minority(labels, 0, 0.05, seed=2))
    with pytest.raises(SynthmedError, match="minority_fraction"):
        subsample_minority(labels, 0, 0.5, seed=1)


def test_segment_on_hippocampus_volumes(hippocampus: Path, tmp_path: Path) -> None:
    paired = [
        p
        for p in sorted((hippocampus / "images").glob("*.nii.gz"))
        if (hippocampus / "labels" / p.name).exists()
    ]
    for part, chosen in (("train", paired[:10]), ("test", paired[10:14]), ("synthetic", paired[14:20])):
        _copy(chosen, tmp_path / part / "images")
        _copy([hippocampus / "labels" / p.name for p in chosen], tmp_path / part / "labels")
    paths = {k: tmp_path / k for k in ("train", "test", "synthetic")}
    cfg = _cfg(
        paths,
        tmp_path / "out",
        task="segment",
        arms=["real", "real+synthetic"],
        ratios=[0.5],
        steps=6,
        eval_every=3,
        batch_size=2,
        volume_size=(32, 48, 32),
    )
    results = benchmark(cfg)
    real, mixed = results["runs"]
    assert (
        results["data"]["test"] == {"volume": 4} and real["n_real"] + results["data"]["val"]["volume"] == 10
    )
    assert mixed["n_synthetic"] == round(0.5 * mixed["n_real"])
    assert 0.0 <= mixed["metrics"]["dice"]["value"] <= 1.0 and mixed["vs_real"]["dice"]["ci95"] is not None
    with pytest.raises(SynthmedError, match="segment"):
        benchmark(cfg.model_copy(update={"task": "classify", "arms": ["real"]}))


# --- issue 20: the leak check compares pixels, and an .npz is a real set ---------------------------------


@pytest.fixture(scope="module")
def cxr_npz(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MedMNIST-style .npz of real 32 px chest X-rays (train 24, val 4, test 8 per class), its classes
    named in <stem>.json as MedMNIST's INFO does."""
    root = tmp_path_factory.mktemp("npz")
    arrays: dict[str, list] = {}
    for i, cls in enumerate(CLASSES):
        train = sorted((kermany / "train" / cls).glob("*.jpeg"))[70:98]
        test = sorted((kermany / "test" / cls).glob("*.jpeg"))[30:38]
        for key, files in (("train", train[:24]), ("val", train[24:]), ("test", test)):
            pixels = [np.asarray(Image.open(f).convert("L").resize((32, 32))) for f in files]
            arrays.setdefault(f"{key}_images", []).extend(pixels)
            arrays.setdefault(f"{key}_labels", []).extend([[i]] * len(files))
    np.savez(root / "cxrmnist.npz", **{k: np.array(v, dtype=np.uint8) for k, v in arrays.items()})
    (root / "cxrmnist.json").write_text(json.dumps({"label": {"0": "NORMAL", "1": "PNEUMONIA"}}))
    return root / "cxrmnist.npz"


def _synthetic_of(run: Path, cxr: dict[str, Path], dest: Path) -> Path:
    synthetic = Path(shutil.copytree(cxr["synthetic"], dest))
    (synthetic / "manifest.jsonl").write_text(json.dumps({"run_dir": str(run)}) + "\n")
    return synthetic


def test_leak_check_catches_training_images_exported_from_an_npz(
    cxr: dict[str, Path], cxr_npz: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    prepared = prepare(
        DataConfig(source=cxr_npz, val_fraction=0.0, holdout_fraction=0.0), 0, run / "split.json"
    )
    test = Path(shutil.copytree(cxr["test"], tmp_path / "test"))
    with np.load(cxr_npz) as z:
        trained = z["train_images"][[3, 30]]  # one of each class, as the generator saw them
    Image.fromarray(trained[0]).save(test / "NORMAL" / "exported.png")
    Image.fromarray(trained[1]).convert("RGB").save(test / "PNEUMONIA" / "exported.jpg", quality=90)
    assert {r.split for r in prepared.records} == {"train", "val", "holdout"}  # the npz's own split
    synthetic = _synthetic_of(run, cxr, tmp_path / "synthetic")
    args = ["--real-train", cxr["train"], "--real-test", test, "--synthetic", synthetic, "--image-size", 32]
    result = CliRunner().invoke(
        app, ["benchmark-augmentation", *map(str, args), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "2 test images were in the generator's train split" in result.output
    assert "exported" in result.output and "cxrmnist.npz#train/" in result.output


def test_leak_check_says_not_checked_when_it_cannot_compare_pixels(
    cxr: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"  # a split file of file hashes only, and no data source to compute pixels from
    records = [Record(f"NORMAL/{i}.png", "NORMAL", f"{i:064x}", "train") for i in range(3)]
    write_split(run / "split.json", records, ["NORMAL"], [], {})
    synthetic = _synthetic_of(run, cxr, tmp_path / "synthetic")
    cfg = _cfg(cxr | {"synthetic": synthetic}, tmp_path / "out", arms=["real"], steps=2)
    leak = benchmark(cfg)["leak_check"]
    assert not leak["checked"] and leak["reason"].startswith(
        f"not checked: run {run}: its split.json predates"
    )
    page = (cfg.out / "report.html").read_text()
    assert "Leak check: not checked" in page and "passed" not in page


def test_benchmark_takes_an_npz_as_the_real_sets(cxr: dict[str, Path], cxr_npz: Path, tmp_path: Path) -> None:
    cfg = _cfg(cxr | {"train": cxr_npz, "test": cxr_npz}, tmp_path / "out", arms=["real"], steps=4)
    results = benchmark(cfg)
    assert results["data"]["class_names"] == list(CLASSES)
    assert results["data"]["test"] == {"NORMAL": 8, "PNEUMONIA": 8}  # the npz's test split
    assert sum(results["data"]["train"].values()) + sum(results["data"]["val"].values()) == 48
    assert results["leak_check"]["checked"]
