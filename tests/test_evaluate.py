"""synthmed evaluate: metric definitions, and behaviour on real images (copies, other modality, 3D)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric
from PIL import Image

from synthmed.config import EvaluateConfig
from synthmed.errors import SynthmedError
from synthmed.evaluation.diversity import ms_ssim_settings, pairwise_ms_ssim
from synthmed.evaluation.fidelity import fid, fidelity, kid, prdc
from synthmed.evaluation.privacy import CopyGuard
from synthmed.evaluation.run import evaluate

FAST = {"image_size": 32, "extractor_steps": 120, "bootstrap": 20, "msssim_pairs": 40}


def _copy(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)


@pytest.fixture(scope="session")
def cxr_sets(kermany: Path, busi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train (60/class), holdout and 'synthetic' stand-ins (30/class each) from real Kermany and BUSI."""
    root = tmp_path_factory.mktemp("eval_sets")
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        train = sorted((kermany / "train" / cls).glob("*.jpeg"))[:60]
        test = sorted((kermany / "test" / cls).glob("*.jpeg"))
        _copy(train, root / "train" / cls)
        _copy(test[:30], root / "holdout" / cls)
        _copy(test[30:60], root / "unseen" / cls)
        # Near-copies of training images: light Gaussian noise, saved as new PNGs.
        (root / "copies" / cls).mkdir(parents=True)
        for f in train[:30]:
            arr = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
            noisy = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "copies" / cls / f"{f.stem}.png")
    busi_files = sorted((busi / "benign" / "images").glob("*.png"))
    _copy(busi_files[:30], root / "busi" / "NORMAL")
    _copy(busi_files[30:60], root / "busi" / "PNEUMONIA")
    return root


def _run(root: Path, synthetic: str, tmp_path: Path, cache: Path, **extra: object) -> dict:
    cfg = EvaluateConfig(
        real=root / "train",
        holdout=root / "holdout",
        synthetic=root / synthetic,
        out=tmp_path / synthetic,
        cache_dir=cache,
        **(FAST | extra),
    )
    out = evaluate(cfg)
    assert (out / "report.html").is_file()
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture(scope="session")
def reports(cxr_sets: Path, eval_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("reports")
    return {name: _run(cxr_sets, name, out, eval_cache) for name in ("unseen", "copies", "busi")}


# --- metric definitions ---------------------------------------------------------------------------


def test_fid_matches_monai() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 32, generator=g).relu()
    b = (torch.randn(200, 32, generator=g) * 1.3 + 0.2).relu()
    assert fid(a, b) == pytest.approx(float(FIDMetric()(b.double(), a.double())), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_prdc_and_kid_on_known_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same = prdc(a, a, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0)
    far = prdc(a, b + 20, k=5)
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0
    near, shifted = kid(a, b, subsets=20), kid(a, b + 1, subsets=20)
    assert abs(near["value"]) < 0.05 * shifted["value"]
    assert shifted["value"] > 10 * shifted["se"] and near["se"] > 0


def test_too_few_images_is_marked_not_computed() -> None:
    result = fidelity(torch.randn(4, 8), torch.randn(3, 8), k=5, n_boot=0, seed=0)
    assert "not_computed" in result and "more than 5 images" in result["not_computed"]


def test_ms_ssim_scales_fit_small_images_and_volumes() -> None:
    assert ms_ssim_settings((64, 64))["scales"] >= 3
    assert ms_ssim_settings((35, 50, 35))["scales"] >= 2
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 32, 32, generator=g)
    same = images[:1].repeat(6, 1, 1, 1)
    assert pairwise_ms_ssim(same, 20, seed=0)["value"] == pytest.approx(1.0, abs=1e-4)
    assert pairwise_ms_ssim(images, 20, seed=0)["value"] < 0.5


def test_copy_guard_flags_training_images_not_new_ones(kermany: Path) -> None:
    from synthmed.evaluation.sets import load_set

    train = load_set("train", kermany / "train", image_size=32, max_images=200)
    holdout = load_set("holdout", kermany / "test", image_size=32, max_images=100)
    guard = CopyGuard(train.images[:150], holdout.images[:60], train.sources[:150], percentile=99)
    copies = guard.check(train.images[:20] + 0.01 * torch.randn(20, 1, 32, 32))
    assert all(v["flagged"] for v in copies)
    assert [v["nearest_train"] for v in copies] == train.sources[:20]
    new = guard.check(holdout.images[60:100])
    assert sum(v["flagged"] for v in new) <= 3


# --- behaviour on real images ---------------------------------------------------------------------


def test_unseen_real_images_sit_at_the_floor(reports: dict[str, dict]) -> None:
    r = reports["unseen"]["fidelity"]["all"]
    assert r["synthetic"]["fid"]["value"] < 2 * r["real_floor"]["fid"]["value"]
    assert reports["unseen"]["privacy"]["flagged_fraction"] <= 0.1
    assert set(reports["unseen"]["fidelity"]) == {"all", "NORMAL", "PNEUMONIA"}
    assert reports["unseen"]["label_fidelity"]["synthetic"]["PNEUMONIA"]["n"] == 30


def test_noised_copies_of_training_images_are_flagged(reports: dict[str, dict]) -> None:
    privacy = reports["copies"]["privacy"]
    assert privacy["flagged_fraction"] >= 0.95
    assert privacy["distinct_train_images_copied"] >= 55
    assert privacy["spaces"]["pixel"]["holdout_flagged_fraction"] <= 0.05
    pair = privacy["top_pairs"][0]
    assert Path(pair["synthetic_file"]).stem == Path(pair["train_file"]).stem


def test_another_modality_is_far_above_the_floor(reports: dict[str, dict]) -> None:
    r = reports["busi"]["fidelity"]["all"]
    assert r["synthetic"]["fid"]["value"] > 5 * r["real_floor"]["fid"]["value"]
    assert r["synthetic"]["precision"]["value"] < r["real_floor"]["precision"]["value"]
    unseen = reports["unseen"]["fidelity"]["all"]["synthetic"]["fid"]["value"]
    assert r["synthetic"]["fid"]["value"] > 5 * unseen


def test_report_settings_and_ci_are_recorded(reports: dict[str, dict]) -> None:
    r = reports["unseen"]
    assert r["settings"]["bootstrap"] == FAST["bootstrap"]
    lo, hi = r["fidelity"]["all"]["real_floor"]["precision"]["ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    assert r["extractor"]["cached"] in (True, False)


def test_extractor_is_cached_by_data(cxr_sets: Path, eval_cache: Path, tmp_path: Path, reports: dict) -> None:
    again = _run(cxr_sets, "unseen", tmp_path, eval_cache)
    assert again["extractor"]["cached"] is True
    assert again["fidelity"]["all"]["synthetic"]["fid"]["value"] == pytest.approx(
        reports["unseen"]["fidelity"]["all"]["synthetic"]["fid"]["value"]
    )


def test_unlabelled_synthetic_folder_has_no_per_class_figures(
    cxr_sets: Path, eval_cache: Path, tmp_path: Path
) -> None:
    flat = cxr_sets / "flat"
    if not flat.exists():
        _copy(sorted((cxr_sets / "unseen" / "NORMAL").iterdir())[:20], flat)
    r = _run(cxr_sets, "flat", tmp_path, eval_cache)
    assert "unlabelled" in r["fidelity"]["NORMAL"]["not_computed"]
    assert "not_computed" in r["label_fidelity"]


def test_unknown_synthetic_class_is_an_error(cxr_sets: Path, eval_cache: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    _copy(sorted((cxr_sets / "unseen" / "NORMAL").iterdir())[:5], odd / "COVID")
    _copy(sorted((cxr_sets / "unseen" / "NORMAL").iterdir())[5:10], odd / "NORMAL")
    cfg = EvaluateConfig(
        real=cxr_sets / "train", holdout=cxr_sets / "holdout", synthetic=odd, out=tmp_path / "r", **FAST
    )
    with pytest.raises(SynthmedError, match="COVID"):
        evaluate(cfg)


def _busi_pairs(busi: Path, dest: Path, cls: str, start: int, stop: int, shift_masks: bool = False) -> None:
    """Copy BUSI images with their masks; ``shift_masks`` pairs each image with the next image's masks."""
    images = sorted((busi / cls / "images").glob("*.png"))[start:stop]
    (dest / cls / "images").mkdir(parents=True, exist_ok=True)
    (dest / cls / "mask").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        shutil.copy(image, dest / cls / "images" / image.name)
        donor = images[(i + 1) % len(images)] if shift_masks else image
        mask = Image.open(busi / cls / "mask" / f"{donor.stem}_mask.png").convert("L")
        size = Image.open(image).size
        mask.resize(size, Image.NEAREST).save(dest / cls / "mask" / f"{image.stem}_mask.png")


def test_condition_fidelity_separates_right_from_wrong_masks(
    busi: Path, tmp_path: Path, eval_cache: Path
) -> None:
    for cls, n in (("benign", 40), ("malignant", 20)):
        _busi_pairs(busi, tmp_path / "train", cls, 0, n)
        _busi_pairs(busi, tmp_path / "holdout", cls, n, n + 10)
        _busi_pairs(busi, tmp_path / "right", cls, n + 10, n + 20)
        _busi_pairs(busi, tmp_path / "wrong", cls, n + 10, n + 20, shift_masks=True)
    results = {}
    for name in ("right", "wrong"):
        cfg = EvaluateConfig(
            real=tmp_path / "train",
            holdout=tmp_path / "holdout",
            synthetic=tmp_path / name,
            out=tmp_path / f"report_{name}",
            masks=True,
            resize_mode="crop",
            segmenter_steps=300,
            cache_dir=eval_cache,
            **FAST,
        )
        results[name] = json.loads((evaluate(cfg) / "report.json").read_text())["condition_fidelity"]
    right, wrong = results["right"], results["wrong"]
    assert right["holdout_ceiling"]["dice"]["mean"] > 0.3
    assert right["synthetic"]["dice"]["mean"] > wrong["synthetic"]["dice"]["mean"] + 0.1
    assert right["synthetic"]["n_images"] == 20
    assert right["intensity"]["real"]["foreground"]["p50"] < right["intensity"]["real"]["background"]["p50"]
    assert "ks_test" in right["intensity"]


@pytest.fixture(scope="session")
def hippocampus_sets(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = hippocampus
    root = tmp_path_factory.mktemp("hippo_sets")
    paired = [p for p in sorted((src / "images").glob("*.nii.gz")) if (src / "labels" / p.name).exists()]
    for name, chosen in (("train", paired[:12]), ("holdout", paired[12:18]), ("synthetic", paired[18:24])):
        _copy(chosen, root / name / "images")
        _copy([src / "labels" / p.name for p in chosen], root / name / "labels")
    return root


def test_three_view_fid_on_volumes_matches_the_2d_path(
    hippocampus_sets: Path, tmp_path: Path, eval_cache: Path
) -> None:
    from synthmed.evaluation.sections import fidelity_section
    from synthmed.evaluation.views import VIEWS, three_view_slices
    from synthmed.evaluation.volumetric import load_volume_sets, view_extractor

    cfg = EvaluateConfig(
        real=hippocampus_sets / "train",
        holdout=hippocampus_sets / "holdout",
        synthetic=hippocampus_sets / "synthetic",
        out=tmp_path / "report",
        volume_size=(32, 48, 32),
        cache_dir=eval_cache,
        **(FAST | {"msssim_pairs": 10}),
    )
    phases: list[str] = []  # the CLI's progress lines
    report = json.loads((evaluate(cfg, on_phase=phases.append) / "report.json").read_text())
    assert phases == ["load", "extractor", "fidelity", "privacy", "views", "diversity", "condition_fidelity"]
    assert set(report["timings_s"]) == set(phases)
    assert report["grid"] == {  # no manifest in these folders: the option, and each file's own spacing
        "size": [32, 48, 32],
        "spacing": None,
        "size_from": "option",
        "spacing_from": "default",
    }
    assert set(report["fidelity"]) == set(VIEWS)
    assert report["fid_25d"]["synthetic"] == pytest.approx(
        np.mean([report["fidelity"][v]["synthetic"]["fid"]["value"] for v in VIEWS])
    )
    assert report["sets"]["train"]["n"] == 12 and report["privacy"]["n_synthetic"] == 6
    assert report["diversity"]["all"]["synthetic"]["scales"] >= 2
    # The 2D path on the same slices, with the same (cached) extractor, gives the same per-view figures.
    sets, _ = load_volume_sets(cfg)
    slices = {
        n: three_view_slices(s.images, size=cfg.image_size, fraction=cfg.slice_fraction)
        for n, s in sets.items()
    }
    extractor, info = view_extractor(slices["train"], cfg)
    assert info["cached"] is True
    view = "coronal"
    feats = {n: extractor.features(slices[n][view]) for n in sets}
    groups = {view: {n: torch.arange(len(f)) for n, f in feats.items()}}
    again = fidelity_section(groups, feats, cfg)[view]
    assert again["synthetic"]["fid"]["value"] == pytest.approx(
        report["fidelity"][view]["synthetic"]["fid"]["value"]
    )


def test_a_local_extractor_file_replaces_the_in_house_features(
    cxr_sets: Path, eval_cache: Path, tmp_path: Path
) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3))
    path = tmp_path / "features.pt"
    torch.jit.trace(net.eval(), torch.rand(2, 3, 48, 48)).save(str(path))
    r = _run(cxr_sets, "unseen", tmp_path, eval_cache, extractor=path, extractor_size=48)
    assert r["extractor"]["kind"].startswith("local file") and r["extractor"]["feature_dim"] == 16
    assert r["fidelity"]["all"]["synthetic"]["fid"]["value"] >= 0


def test_cli_reports_bad_input_in_one_line(
    cxr_sets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from synthmed.cli import app

    monkeypatch.setenv("SYNTHMED_CACHE", str(tmp_path / "cache"))
    args = ["evaluate", "--real", str(cxr_sets / "train"), "--holdout", str(tmp_path / "missing")]
    result = CliRunner().invoke(app, [*args, "--synthetic", str(cxr_sets / "unseen"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "missing" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    args = ["evaluate", "--real", str(cxr_sets / "train"), "--holdout", str(cxr_sets / "holdout")]
    result = CliRunner().invoke(
        app, [*args, "--synthetic", str(cxr_sets / "unseen"), "--out", str(tmp_path), "--extractor", str(bad)]
    )
    assert result.exit_code == 2 and "bad.pt" in result.output


def test_label_map_fidelity_separates_right_from_flipped_label_maps(
    hippocampus_sets: Path, tmp_path: Path, eval_cache: Path
) -> None:
    import nibabel as nib

    wrong = tmp_path / "wrong"
    shutil.copytree(hippocampus_sets / "synthetic", wrong)
    for path in (wrong / "labels").glob("*.nii.gz"):
        img = nib.load(path)
        flipped = np.ascontiguousarray(np.flip(np.asarray(img.dataobj), axis=1))  # anterior <-> posterior
        nib.save(nib.Nifti1Image(flipped, img.affine, img.header), path)
    results = {}
    for name, synthetic in (("right", hippocampus_sets / "synthetic"), ("wrong", wrong)):
        cfg = EvaluateConfig(
            real=hippocampus_sets / "train",
            holdout=hippocampus_sets / "holdout",
            synthetic=synthetic,
            out=tmp_path / name,
            masks=True,
            volume_size=(32, 48, 32),
            segmenter_steps=150,
            cache_dir=eval_cache,
            **(FAST | {"msssim_pairs": 10}),
        )
        results[name] = json.loads((evaluate(cfg) / "report.json").read_text())["condition_fidelity"]
    right, wrong_result = results["right"]["labels"], results["wrong"]["labels"]
    assert set(right) == {"label_1", "label_2"}
    for label in right:
        assert (
            right[label]["synthetic"]["dice"]["mean"] > wrong_result[label]["synthetic"]["dice"]["mean"] + 0.1
        )
        assert right[label]["holdout_ceiling"]["dice"]["mean"] > 0.3
    assert set(results["right"]["intensity"]["ks_test"]) == {"background", "label_1", "label_2"}
