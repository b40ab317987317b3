"""The evaluation's judging measures on real chest X-rays: the machine Turing test (C2ST), sharpness, FRD,
same-distribution floors, intervals that contain their estimates, and the warnings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from synthmed.config import EvaluateConfig
from synthmed.data.splits import read_split_file
from synthmed.evaluation.intervals import bias_corrected_interval
from synthmed.evaluation.run import evaluate, load_sets

pytestmark = pytest.mark.slow
SIZE = 64
FAST = {
    "image_size": SIZE,
    "extractor_steps": 120,
    "bootstrap": 30,
    "msssim_pairs": 40,
    "c2st_folds": 2,
    "c2st_permutations": 20,
}
PLANTED = 6  # training images copied into the holdout


def _save64(src: Path, dest: Path, blur: float = 0.0) -> None:
    """The image at 64 px (area resampling), optionally Gaussian-blurred at that size, as a PNG."""
    img = Image.open(src).convert("L").resize((SIZE, SIZE), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    if blur:
        arr = gaussian_filter(arr, blur)
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).save(dest)


@pytest.fixture(scope="module")
def same_distribution(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Disjoint samples of Kermany *train* at 64 px: train (90/class), holdout (45/class, plus training
    images planted in it), unseen (45/class), the unseen ones blurred (sigma 1 px), and training copies."""
    root = tmp_path_factory.mktemp("same_distribution")
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((kermany / "train" / cls).glob("*.jpeg"))
        files = [files[i] for i in rng.permutation(len(files))[:180]]
        for name, part in (("train", files[:90]), ("holdout", files[90:135]), ("unseen", files[135:])):
            for f in part:
                _save64(f, root / name / cls / f"{f.stem}.png")
        for f in files[135:]:
            _save64(f, root / "blurred" / cls / f"{f.stem}.png", blur=1.0)
        for f in files[:PLANTED]:
            shutil.copy(root / "train" / cls / f"{f.stem}.png", root / "holdout" / cls / f"copy_{f.stem}.png")
        (root / "copies" / cls).mkdir(parents=True)
        for f in files[:45]:
            shutil.copy(root / "train" / cls / f"{f.stem}.png", root / "copies" / cls / f"{f.stem}.png")
    return root


@pytest.fixture(scope="module")
def measured(same_distribution: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out, cache = tmp_path_factory.mktemp("measured"), tmp_path_factory.mktemp("cache")
    reports = {}
    for name in ("unseen", "blurred", "copies"):
        cfg = EvaluateConfig(
            real=same_distribution / "train",
            holdout=same_distribution / "holdout",
            synthetic=same_distribution / name,
            out=out / name,
            cache_dir=cache,
            c2st_steps=100 if name != "copies" else 1,
            **FAST,
        )
        reports[name] = json.loads((evaluate(cfg) / "report.json").read_text())
    return reports


def test_real_unseen_images_pass(measured: dict[str, dict]) -> None:
    head = measured["unseen"]["headline"]
    lo, hi = head["c2st_ci95"]
    assert lo <= 0.5 <= hi, head
    assert 0.9 <= head["sharpness_ratio"] <= 1.1, head
    assert list(measured["unseen"])[:2] == ["headline", "summary"]


def test_blurred_images_are_caught(measured: dict[str, dict]) -> None:
    head = measured["blurred"]["headline"]
    assert head["c2st_accuracy"] >= 0.9, head
    assert head["sharpness_ratio"] < 0.7, head
    assert any("sharpness" in w for w in head["warnings"]), head["warnings"]
    assert head["frd"] > head["frd_floor"]
    unseen = measured["unseen"]["sharpness"]["all"]["high_frequency_share"]["synthetic"]["value"]
    blurred = measured["blurred"]["sharpness"]["all"]["high_frequency_share"]["synthetic"]["value"]
    assert blurred < 0.5 * unseen


def test_training_copies_are_flagged_and_planted_duplicates_warned(measured: dict[str, dict]) -> None:
    assert measured["copies"]["privacy"]["flagged_fraction"] >= 0.9
    dup = measured["unseen"]["privacy"]["real_duplicates"]
    assert dup["count"] == 2 * PLANTED
    assert dup["threshold_with_duplicates"] < dup["threshold_without"]
    assert any("near-copies of training images" in w for w in measured["unseen"]["headline"]["warnings"])


def _intervals(node: object, path: str = "") -> Iterator[tuple[str, float, list[float]]]:
    if isinstance(node, dict):
        point = node.get("value", node.get("accuracy"))
        if isinstance(node.get("ci95"), list) and isinstance(point, float | int):
            yield path, float(point), node["ci95"]
        for key, child in node.items():
            yield from _intervals(child, f"{path}.{key}")


def test_every_interval_contains_its_estimate(measured: dict[str, dict]) -> None:
    checked = 0
    for name, report in measured.items():
        for path, point, (lo, hi) in _intervals(report):
            assert lo <= point <= hi, f"{name}{path}: {point} outside [{lo}, {hi}]"
            checked += 1
    assert checked > 50


def test_bias_corrected_interval_recentres_a_biased_bootstrap() -> None:
    draws = np.random.default_rng(0).normal(10.0, 1.0, 500)  # resampling biased the statistic up from 5
    lo, hi = bias_corrected_interval(5.0, draws)
    assert lo < 5.0 < hi and hi - lo < 5.0


def test_run_split_gives_the_same_distribution_floor(
    generate_tiny, tiny_run: Path, tmp_path: Path, busi: Path
) -> None:
    synthetic = generate_tiny()
    given = tmp_path / "given"
    for f in sorted((busi / "benign" / "images").glob("*.png"))[:4]:
        _save64(f, given / "NORMAL" / f.name)
    cfg = EvaluateConfig(synthetic=synthetic, holdout=given, out=tmp_path / "r", cache_dir=tmp_path, **FAST)
    report = json.loads((evaluate(cfg) / "report.json").read_text())
    assert report["reference"]["kind"] == "run split"
    split = read_split_file(tiny_run / "split.json")
    for name in ("train", "holdout"):
        assert report["sets"][name]["n"] == sum(r.split == name for r in split.records)
    assert "fid" in report["reference"]["given_holdout"]


def test_val_split_can_stand_in_for_the_holdout_while_choosing_settings(
    generate_tiny, tiny_run: Path, tmp_path: Path
) -> None:
    cfg = EvaluateConfig(
        synthetic=generate_tiny(), out=tmp_path / "r", cache_dir=tmp_path, reference_split="val", **FAST
    )
    sets, reference = load_sets(cfg)
    split = read_split_file(tiny_run / "split.json")
    assert reference["reference_split"] == "val"
    assert sorted(sets["holdout"].sources) == sorted(r.source for r in split.records if r.split == "val")


def test_an_npz_gives_the_real_sets(data_root: Path, tmp_path: Path) -> None:
    """RetinaMNIST's own splits: train is the reference, test the holdout, its val images 'synthetic'."""
    npz = data_root / "retinamnist" / "retinamnist.npz"
    arrays = np.load(npz)
    for i, (image, label) in enumerate(zip(arrays["val_images"], arrays["val_labels"][:, 0], strict=True)):
        dest = tmp_path / "val" / str(label) / f"val_{i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(dest)
    cfg = EvaluateConfig(
        real=npz,
        holdout=npz,
        synthetic=tmp_path / "val",
        out=tmp_path / "r",
        cache_dir=tmp_path,
        **(FAST | {"image_size": 32, "c2st_steps": 5}),
    )
    report = json.loads((evaluate(cfg) / "report.json").read_text())
    assert report["sets"]["train"]["n"] == len(arrays["train_images"])
    assert report["sets"]["holdout"]["n"] == len(arrays["test_images"])
    assert report["headline"]["fid"] is not None
