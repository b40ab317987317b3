"""The proof-of-utility protocol (issue 19) on real data at tiny sizes: controls count-matched to the
synthetic images, selection with every drop recorded, arm choice on validation, Holm across arms, deformed
masks, and the BUSI benchmark script end to end in its smoke configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from synthmed.cli import app
from synthmed.config import AugmentationConfig
from synthmed.data import Record, read_image, write_split
from synthmed.data.integrity import pixel_hash
from synthmed.data.sources import hash_file
from synthmed.downstream.arms import Arm, training_set
from synthmed.downstream.data import load_sets, real_subset
from synthmed.downstream.deform import deform_mask, deform_pair
from synthmed.downstream.run import benchmark
from synthmed.downstream.selection import interleave, k_center_order
from synthmed.downstream.store import fingerprint
from synthmed.errors import SynthmedError

REPO = Path(__file__).resolve().parents[1]
HEADLINE_KEYS = {
    "metric",
    "best_arm",
    "diff_vs_real",
    "diff_vs_real_ci95",
    "diff_vs_best_control",
    "diff_vs_best_control_ci95",
    "seeds",
}


def _copy(files: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, dest / f.name)) for f in files]


@pytest.fixture(scope="module")
def cxr(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real train (40/class), test (25/class) and a 'synthetic' stand-in: 20 other real images per class
    plus 3 copies of real training NORMAL images (which the privacy filter must drop); its manifest
    names a run whose split holds the training images."""
    root = tmp_path_factory.mktemp("cxr_utility")
    records = []
    for cls in ("NORMAL", "PNEUMONIA"):
        train = sorted((kermany / "train" / cls).glob("*.jpeg"))[100:140]
        records += [
            Record(f"{cls}/{f.name}", cls, hash_file(f), "train", pixel_hash(read_image(f)))
            for f in _copy(train, root / "train" / cls)
        ]
        _copy(sorted((kermany / "train" / cls).glob("*.jpeg"))[200:220], root / "synthetic" / cls)
        _copy(sorted((kermany / "test" / cls).glob("*.jpeg"))[50:75], root / "test" / cls)
    for f in sorted((root / "train" / "NORMAL").iterdir())[:3]:
        shutil.copy(f, root / "synthetic" / "NORMAL" / f"copy_{f.name}")
    write_split(root / "run" / "split.json", records, ["NORMAL", "PNEUMONIA"], [], {})
    (root / "synthetic" / "manifest.jsonl").write_text(json.dumps({"run_dir": str(root / "run")}) + "\n")
    return {k: root / k for k in ("train", "test", "synthetic")}


def _cfg(paths: dict[str, Path], out: Path, **kw: object) -> AugmentationConfig:
    values = {
        "real_train": paths["train"],
        "real_test": paths["test"],
        "synthetic": paths["synthetic"],
        "out": out,
        "image_size": 32,
        "seeds": [0, 1],
        "steps": 6,
        "eval_every": 3,
        "batch_size": 16,
        "bootstrap": 60,
    }
    return AugmentationConfig.model_validate(values | kw)


def test_rarity_protocol_controls_selection_and_statistics(cxr: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(
        cxr,
        tmp_path / "out",
        minority_class="NORMAL",
        minority_fraction=0.25,
        fill_class="NORMAL",
        ratios=[0.5, 1.0],
        synthetic_weights=[1.0, 0.5],
        primary_metric="f1[NORMAL]",
        selection={"extractor_steps": 3, "min_confidence": 0.2},
    )
    results = benchmark(cfg)
    assert set(results["headline"]) == HEADLINE_KEYS and results["headline"]["seeds"] == [0, 1]
    runs = {(r["label"], r["seed"]): r for r in results["runs"]}
    for seed in (0, 1):
        n_normal = int((real_subset(load_sets(cfg), cfg, 1.0, seed).labels == 0).sum())
        for ratio in ("0.5", "1"):  # controls add exactly as many images as the synthetic arm at that ratio
            added = runs[f"real+synthetic x{ratio} w1", seed]["n_synthetic"]
            assert added == round(float(ratio) * n_normal) == runs[f"oversample x{ratio}", seed]["n_copies"]
        assert runs["weighted", seed]["n_copies"] == 0 and runs["pretrain", seed]["n_pretrain"] == 43

    # selection: every dropped image with its reason; the copies of training images fail the privacy filter
    selection = json.loads((cfg.out / "selection.json").read_text())
    for record in selection:
        assert record["kept"] + len(record["dropped"]) == record["pool"] == 23  # NORMAL images only
        privacy = {d["file"] for d in record["dropped"] if any(r.startswith("privacy") for r in d["reasons"])}
        assert {f"NORMAL/copy_{f.name}" for f in sorted((cxr["train"] / "NORMAL").iterdir())[:3]} <= privacy
        selected = runs["real+selected x1 w1", record["seed"]]
        assert selected["n_synthetic"] <= record["kept"]

    # the strongest control and best arm come from the validation scores, never the test
    pooled = {p["label"]: p for p in results["pooled"]}
    controls = [p for p in results["pooled"] if p["kind"] in ("baseline", "control")]
    synthetic = [p for p in results["pooled"] if p["kind"] == "synthetic"]
    assert results["choice"]["1.0"]["best_control"] == max(controls, key=lambda p: p["val"]["mean"])["label"]
    assert results["choice"]["1.0"]["best_arm"] == max(synthetic, key=lambda p: p["val"]["mean"])["label"]
    best = pooled[results["headline"]["best_arm"]]
    assert best["vs_best_control"]["reference"] == results["choice"]["1.0"]["best_control"]

    # Holm over every synthetic arm, one family per reference; paired differences pooled over seeds
    for key in ("vs_real", "vs_best_control"):
        tests = [p["tests"][key] for p in synthetic]
        assert {t["family_size"] for t in tests} == {len(synthetic)} == {10}
        expected = multipletests([t["p"] for t in tests], method="holm")[1]
        assert [t["p_holm"] for t in tests] == pytest.approx(expected)
    per_seed = [runs[best["label"], s]["vs_real"]["f1[NORMAL]"]["value"] for s in (0, 1)]
    assert best["vs_real"]["f1[NORMAL]"]["value"] == pytest.approx(np.mean(per_seed))
    assert results["warnings"] and "bootstrap >= 399" in results["warnings"][0]  # 60 resamples, 10 arms
    assert "Holm" in results["protocol"]["multiplicity"]
    assert "gain_vs_ratio.png" in (cfg.out / "report.html").read_text()

    # a stopped benchmark resumes: finished runs are reused, a missing one is trained again
    assert results["reused_runs"] == 0
    stored = sorted((cfg.out / "runs").glob("*/*.npz"))
    assert len(stored) == len(results["runs"])
    next(p for p in stored if p.name.startswith("real_f1.0_s0")).unlink()
    again = benchmark(cfg)
    assert again["reused_runs"] == len(results["runs"]) - 1
    assert again["pooled"] == results["pooled"] and again["selection"] == results["selection"]
    sets = load_sets(cfg)
    assert fingerprint(cfg.model_copy(update={"seeds": [5]}), sets) == fingerprint(cfg, sets)
    assert fingerprint(cfg.model_copy(update={"steps": 7}), sets) != fingerprint(cfg, sets)


def test_oversample_repeats_real_minority_images_and_augment_deforms_them(
    cxr: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _cfg(cxr, tmp_path / "o", fill_class="NORMAL", ratios=[2.0])
    sets = load_sets(cfg)
    real = real_subset(sets, cfg, 1.0, 0)

    def no_selection(fraction: float, seed: int) -> None:
        raise AssertionError("only real+selected asks for the selection")

    over = training_set(Arm("oversample", 2.0, 1.0), sets, cfg, 0, no_selection)  # type: ignore[arg-type]
    added = over.data.take(torch.arange(len(real), len(over.data)))
    # as many as the synthetic arm adds: 2 x the real NORMAL count, capped by the 23 synthetic NORMAL images
    assert over.n_copies == min(2 * int((real.labels == 0).sum()), 23) == 23 and (added.labels == 0).all()
    flat = real.images.flatten(1)
    assert all((flat == x.flatten()).all(1).any() for x in added.images)  # exact copies of real images
    aug = training_set(Arm("augment", 2.0, 1.0), sets, cfg, 0, no_selection)  # type: ignore[arg-type]
    deformed = aug.data.images[len(real) :]
    assert aug.n_copies == over.n_copies and not any((flat == x.flatten()).all(1).any() for x in deformed)
    with pytest.raises(SynthmedError, match="primary_metric"):
        benchmark(cfg.model_copy(update={"primary_metric": "hd95", "arms": ["real"]}))


def test_deformed_masks_are_seeded_binary_and_keep_the_lesion(busi: Path) -> None:
    path = sorted((busi / "benign" / "mask").glob("*_mask.png"))[0]
    raw = read_image(path) > 0
    mask = torch.nn.functional.interpolate(torch.from_numpy(raw[None, None]).float(), size=(64, 64))[0]
    mask = (mask > 0.5).to(torch.uint8)
    a, b, c = deform_mask(mask, 7), deform_mask(mask, 7), deform_mask(mask, 8)
    assert torch.equal(a, b) and not torch.equal(a, c) and set(a.unique().tolist()) <= {0, 1}
    assert 0.5 < a.sum().item() / mask.sum().item() < 2.0
    image = torch.from_numpy(read_image(busi / "benign" / "images" / path.name.replace("_mask", ""))).float()
    image = torch.nn.functional.interpolate(image[None, None] / 255, size=(64, 64))[0]
    x, m = deform_pair(image, mask, 7)
    assert torch.equal(m, a) and x.min() >= 0 and x.max() <= 1  # the image moves with its mask


def test_k_center_takes_both_data_sets_before_repeating_one(kermany: Path, busi: Path) -> None:
    """Pixel features of 10 chest X-rays and 2 ultrasound images: k-center reaches the ultrasound
    cluster within its first picks, and the interleaved order keeps class shares in every prefix."""
    files = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[:10]
    files += sorted((busi / "benign" / "images").glob("*.png"))[:2]
    pixels = [torch.from_numpy(read_image(f)).float()[None, None] for f in files]
    feats = torch.cat([torch.nn.functional.interpolate(p, size=(16, 16)).flatten(1) for p in pixels])
    order = k_center_order(feats, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(12))
    assert {10, 11} & set(order[:3].tolist())
    merged = interleave({0: torch.arange(6), 1: torch.arange(6, 9)}, {0: 6, 1: 3})
    assert merged[:3].tolist() == [0, 6, 1] and sorted(merged.tolist()) == list(range(9))


def test_utility_busi_seg_smoke_run_end_to_end(data_root: Path, tmp_path: Path) -> None:
    """The benchmark script: a generator with a mask ControlNet per regime, pairs for drawn and deformed
    training masks, every arm, and the issue's headline keys."""
    env = os.environ | {"SYNTHMED_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.run", "utility_busi_seg", "--smoke", "--regimes", "pairs25"]
    done = subprocess.run(
        [*cmd, "--work-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "utility_busi_seg_smoke.json").read_text())
    assert set(result["headline"]) == HEADLINE_KEYS and result["headline"]["metric"] == "dice"
    regime = result["regimes"]["pairs25"]
    assert regime["leak_check"]["checked"]  # test images the generator never saw, by decoded pixels
    assert {r["label"] for r in regime["table"]} >= {"real", "oversample x1", "augment x1", "pretrain"}
    rows = [
        json.loads(x)
        for x in (tmp_path / "pairs25" / "synthetic" / "manifest.jsonl").read_text().splitlines()
    ]
    assert len(rows) == regime["generator"]["pairs"]["count"] and all(r["mask_source"] for r in rows)
    mask = read_image(tmp_path / "pairs25" / "synthetic" / rows[0]["annotation"])
    assert set(np.unique(mask).tolist()) <= {0, 255} and mask.any()
    assert result["targets"]["pairs25_dice"]["met"] in (True, False)
    quality = regime["generator"]["quality"]  # what may limit the generator, from `synthmed evaluate`
    assert {"fid", "fid_floor", "recall", "sharpness_ratio", "c2st_accuracy", "msssim"} <= quality.keys()
    assert set(quality["label_fidelity"]["synthetic"]) == {"benign", "malignant"}
    assert quality["condition_fidelity"]["synthetic"]["n_images"] == len(rows)

    # started again with --reuse-generators: the finished generator, pairs and runs are reused
    done = subprocess.run(
        [*cmd, "--work-dir", str(tmp_path), "--reuse-generators"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "utility_busi_seg_smoke.json").read_text())["regimes"]["pairs25"]
    assert again["generator"] == regime["generator"] and again["reused_runs"] == len(regime["table"]) * 2
    assert again["table"] == regime["table"]
    assert all(Path(f).is_file() for f in result["figures"])


def test_cli_options_set_the_protocol(cxr: dict[str, Path], tmp_path: Path) -> None:
    args = ["--real-train", cxr["train"], "--real-test", cxr["test"], "--synthetic", cxr["synthetic"]]
    args += ["--out", tmp_path / "o", "--image-size", 32, "--steps", 3, "--bootstrap", 20]
    args += ["--arm", "real", "--arm", "oversample", "--arm", "real+selected", "--ratio", 0.5, "--seed", 0]
    args += ["--fill-class", "NORMAL", "--synthetic-weight", 0.5, "--min-confidence", 0.0]
    args += ["--minority-class", "NORMAL", "--minority-fraction", 0.2, "--primary-metric", "f1[NORMAL]"]
    result = CliRunner().invoke(app, ["benchmark-augmentation", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert "headline:" in result.output and "best_arm" in result.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["settings"]["selection"]["min_confidence"] == 0.0
    assert [p["label"] for p in saved["pooled"]] == ["real", "oversample x0.5", "real+selected x0.5 w0.5"]
    assert saved["data"]["val"]["NORMAL"] / sum(saved["data"]["val"].values()) == pytest.approx(0.2, abs=0.05)
    # min_confidence 0: only the privacy filter drops, and it drops exactly the three training copies
    assert [s["dropped_counts"] for s in saved["selection"]] == [{"label_confidence": 0, "privacy": 3}]


def test_a_real_data_reference_runs_without_a_synthetic_set(cxr: dict[str, Path], tmp_path: Path) -> None:
    args = ["--real-train", cxr["train"], "--real-test", cxr["test"], "--out", tmp_path / "o"]
    args += ["--image-size", 32, "--steps", 3, "--bootstrap", 20, "--seed", 0]
    refused = CliRunner().invoke(app, ["benchmark-augmentation", *map(str, [*args, "--arm", "oversample"])])
    assert refused.exit_code != 0 and "['oversample'] need a synthetic set" in refused.output
    result = CliRunner().invoke(
        app, ["benchmark-augmentation", *map(str, [*args, "--arm", "real", "--arm", "weighted"])]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [p["label"] for p in saved["pooled"]] == ["real", "weighted"]
    assert saved["headline"]["best_arm"] is None and not any(saved["data"]["synthetic"].values())
    assert not saved["leak_check"]["checked"] and "no synthetic set" in saved["leak_check"]["reason"]


def test_utility_kermany_merges_a_real_reference_with_a_later_regime(data_root: Path, tmp_path: Path) -> None:
    """--arms real trains no generator; --merge keeps the earlier run's regime beside the new one, dated,
    and the scarcity gap is computed across the two."""
    env = os.environ | {"SYNTHMED_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.run", "utility_kermany", "--smoke", "--work-dir", str(tmp_path)]
    for extra in (
        ["--regimes", "full", "--arms", "real"],
        ["--regimes", "scarcity10", "--arms", "real", "--merge"],
    ):
        done = subprocess.run([*cmd, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "utility_kermany_smoke.json").read_text())
    assert list(result["regimes"]) == ["scarcity10", "full"]
    assert all(r["generator"] is None and r["measured"]["utc"] for r in result["regimes"].values())
    assert not (tmp_path / "full" / "generator").exists()
    gap = result["targets"]["scarcity10_gap_closed"]
    assert gap["best_arm_at_10pct"] is None and gap["met"] is False
    assert set(result["headline"]) == HEADLINE_KEYS and result["figures"] == []
