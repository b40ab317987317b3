"""3D end to end on real hippocampus MRI: train the VAE, the spacing-conditioned UNet and the label-map
ControlNet for a few steps (tiny3d), then generate with and without a label map."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from synthmed.artifacts.manifest import read_manifest
from synthmed.cli import app
from synthmed.config import GenerateConfig, build_train_config
from synthmed.data.volumes import VolumeConfig, discover_volumes, load_label_map
from synthmed.errors import SynthmedError
from synthmed.sampling.generate import generate_to_folder
from synthmed.sampling.pipeline import Pipeline, VolumeCondition
from synthmed.training.run import train

KEYS = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8, 11, 14, 15, 17)]


@pytest.fixture(scope="module")
def volumes(hippocampus: Path, msd_pairs: Callable[[Sequence[str]], Path]) -> Path:
    """Ten real pairs plus the data set's quirks: an image without a label map and a label map alone."""
    root = msd_pairs(KEYS)
    shutil.copy(hippocampus / "images" / "hippocampus_118.nii.gz", root / "images")
    shutil.copy(hippocampus / "labels" / "hippocampus_010.nii.gz", root / "labels")
    (root / "images" / "hippocampus_999.nii.gz").write_bytes(b"not a nifti file")
    (root / "labels" / "hippocampus_999.nii.gz").write_bytes(b"not a nifti file")
    return root


@pytest.fixture(scope="module")
def run3d(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = {"steps": 6, "batch_size": 4, "preview_every": 6}
    cfg = build_train_config(
        {
            "preset": "tiny3d",
            "run_dir": str(tmp_path_factory.mktemp("run3d")),
            "data": {
                "source": str(volumes),
                "val_fraction": 0.2,
                "volume": {"train_spacings": [[1.25, 1.25, 1.25]]},
            },
            "autoencoder": stage,
            "diffusion": stage,
            "controlnet": stage,
        }
    )
    return train(cfg, progress=False)


def test_training_writes_every_stage_and_reports_skipped_files(run3d: Path) -> None:
    for stage in ("autoencoder", "diffusion", "controlnet"):
        assert (run3d / stage / "model.pt").is_file()
        assert (run3d / stage / "previews" / "step_0000006.png").is_file()
        rows = [json.loads(r) for r in (run3d / stage / "log.jsonl").read_text().splitlines()]
        assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss_"))
    split = json.loads((run3d / "split.json").read_text())
    skipped = {s["source"]: s["reason"] for s in split["skipped"]}
    assert "image without a label map" in skipped["images/hippocampus_118.nii.gz"]
    assert "label map without an image" in skipped["labels/hippocampus_010.nii.gz"]
    assert "cannot read this NIfTI file" in skipped["images/hippocampus_999.nii.gz"]
    assert len(split["items"]) == len(KEYS)
    candidates = torch.load(run3d / "controlnet" / "candidates.pt", weights_only=True)
    assert candidates["label_maps"].shape[1:] == (1, 16, 24, 16)
    assert set(candidates["label_maps"].unique().tolist()) == {0, 1, 2}


def test_generate_without_label_map_samples_training_maps(run3d: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    cfg = GenerateConfig(run_dir=run3d, out=out, count=2, steps=3, batch_size=2, qc_retries=1)
    generate_to_folder(cfg, progress=False)
    rows = read_manifest(out / "manifest.jsonl")
    assert [r["seed"] for r in rows] == [0, 1] and all(r["sampler"] == "rflow" for r in rows)
    assert all(r["label"] == "mri" and r["guidance"] == 1.0 for r in rows)  # the one class; no CFG
    for row in rows:
        image, label = nib.load(out / row["file"]), nib.load(out / row["label_file"])
        assert image.shape == label.shape == (16, 24, 16)
        assert np.allclose(image.header.get_zooms(), (1.0, 1.0, 1.0))
        assert np.allclose(image.affine, label.affine)
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}
        data = image.get_fdata()
        assert data.min() >= 0.0 and data.max() <= 1.0 and data.std() > 0
        assert row["label_map"]["candidate"]["key"] in KEYS
        assert 1 <= len(row["attempts"]) <= 2 and row["quality"] == row["attempts"][-1]["quality"]
        if not row["quality"]["passed"]:  # a failure is only kept after every retry was spent
            assert len(row["attempts"]) == 2
        assert (out / row["preview"]).is_file()
    row = rows[1]  # replayed bit for bit from the manifest, through the CLI
    again = tmp_path / "again.nii.gz"
    args = ["regenerate", str(out / "manifest.jsonl"), "--file", row["file"], "--out", str(again)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.array_equal(nib.load(again).get_fdata(), nib.load(out / row["file"]).get_fdata())
    assert np.allclose(nib.load(again).affine, nib.load(out / row["file"]).affine)
    again_label = tmp_path / "again_label.nii.gz"  # the label map it was generated for, beside it, and said
    written = nib.load(out / row["label_file"])
    assert np.array_equal(np.asarray(nib.load(again_label).dataobj), np.asarray(written.dataobj))
    assert np.allclose(nib.load(again_label).affine, written.affine)
    assert "again_label.nii.gz" in result.output and "the label map" in result.output
    found = discover_volumes(out, require_labels=True)  # the output is a 3D data set again
    assert [p.key for p in found.pairs] == ["syn_00000000", "syn_00000001"] and not found.skipped
    # Same command again: nothing regenerated; other settings for the same seeds: refused.
    generate_to_folder(cfg, progress=False)
    assert len(read_manifest(out / "manifest.jsonl")) == 2
    with pytest.raises(SynthmedError, match="other settings"):
        generate_to_folder(cfg.model_copy(update={"steps": 4}), progress=False)


def test_generate_for_a_given_label_map_and_spacing(run3d: Path, hippocampus: Path, tmp_path: Path) -> None:
    source = hippocampus / "labels" / "hippocampus_023.nii.gz"
    result = CliRunner().invoke(
        app,
        [
            "generate", "--run", str(run3d), "--out", str(tmp_path / "g"), "--count", "1", "--steps", "3",
            "--label-map", str(source), "--spacing", "1.25", "1.25", "1.25", "--size", "32", "40", "24",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = read_manifest(tmp_path / "g" / "manifest.jsonl")
    image, label = nib.load(tmp_path / "g" / row["file"]), nib.load(tmp_path / "g" / row["label_file"])
    assert image.shape == (32, 40, 24) and np.allclose(image.header.get_zooms(), (1.25, 1.25, 1.25))
    expected, affine = load_label_map(source, VolumeConfig(size=(32, 40, 24), spacing=(1.25, 1.25, 1.25)))
    assert np.array_equal(np.asarray(label.dataobj), expected[0].numpy())  # the condition is the annotation
    assert np.allclose(label.affine, affine) and np.allclose(image.affine, affine)
    assert row["label_map"]["file"] == str(source) and row["spacing"] == [1.25, 1.25, 1.25]


def test_spacing_and_label_map_reach_the_network(run3d: Path) -> None:
    pipe = Pipeline.load(run3d)
    base = VolumeCondition((1.0, 1.0, 1.0), (16, 24, 16))
    wide = VolumeCondition((2.0, 2.0, 2.0), (16, 24, 16))
    a = pipe.sample_batch([0], None, steps=2, sampler="rflow", volume=base)
    b = pipe.sample_batch([0], None, steps=2, sampler="rflow", volume=wide)
    assert a.shape == (1, 1, 16, 24, 16) and not torch.equal(a, b)
    labels = torch.zeros(1, 1, 16, 24, 16, dtype=torch.long)
    labels[..., 4:12, 6:18, 4:12] = 1
    c = pipe.sample_batch([0], None, steps=2, sampler="rflow", volume=base)
    d = pipe.sample_batch(
        [0], None, steps=2, sampler="rflow", volume=VolumeCondition((1.0, 1.0, 1.0), (16, 24, 16), labels)
    )
    assert torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"size": (16, 20, 16)}, "multiple of 8"),
        ({"privacy_filter": True}, "2D images only"),
        ({"sampler": "ddim"}, "unknown sampler 'ddim'"),
        ({"condition_file": Path("mask.png")}, "3D runs follow label maps"),
        ({"decoder": "lite"}, "3D runs have no lightweight decoder"),
    ],
)
def test_bad_3d_requests_are_refused(run3d: Path, tmp_path: Path, update: dict, message: str) -> None:
    cfg = GenerateConfig(run_dir=run3d, out=tmp_path / "g", count=1, steps=2, **update)
    with pytest.raises(SynthmedError, match=message):
        generate_to_folder(cfg, progress=False)


def test_label_map_with_unknown_label_is_refused(run3d: Path, hippocampus: Path, tmp_path: Path) -> None:
    src = nib.load(hippocampus / "labels" / "hippocampus_023.nii.gz")
    data = np.asarray(src.dataobj).copy()
    data[data == 2] = 7
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine), bad)
    cfg = GenerateConfig(run_dir=run3d, out=tmp_path / "g", count=1, steps=2, label_map=bad)
    with pytest.raises(SynthmedError, match="label value 7") as err:
        generate_to_folder(cfg, progress=False)
    assert "bad_label.nii.gz" in str(err.value) and "remap the label map" in str(err.value)
    assert "raise num_labels" not in str(err.value)  # training's fix does not apply to a trained model


def test_split_command_checks_3d_data(volumes: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny3d\n")
    out = tmp_path / "split.json"
    result = CliRunner().invoke(app, ["split", "--data", str(volumes), "--out", str(out), "-c", str(config)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["items"]) == len(KEYS) and {s["source"] for s in doc["skipped"]} == {
        "images/hippocampus_118.nii.gz",
        "labels/hippocampus_010.nii.gz",
        "images/hippocampus_999.nii.gz",  # unreadable: its label map goes with it
    }
    config.write_text(f"preset: tiny3d\ndata: {{source: {volumes}}}\n")  # data.source from the config
    again = CliRunner().invoke(app, ["split", "--out", str(out), "-c", str(config)])
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["items"] == doc["items"]
    config.write_text("preset: tiny3d\n")
    missing = CliRunner().invoke(app, ["split", "--out", str(tmp_path / "s2.json"), "-c", str(config)])
    assert missing.exit_code == 2 and "give --data, or a --config that sets data.source" in missing.output


def test_class_folders_condition_the_model_and_the_label_maps(
    volumes: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Sub-folders of volumes are classes (e.g. sites or diagnoses); a class draws its own label maps."""
    root = tmp_path_factory.mktemp("sites")
    sites = {"siteA": KEYS[:4], "siteB": KEYS[4:8]}
    for site, keys in sites.items():
        for sub in ("images", "labels"):
            (root / site / sub).mkdir(parents=True)
            for key in keys:
                shutil.copy(volumes / sub / f"{key}.nii.gz", root / site / sub)
    stage = {"steps": 3, "batch_size": 4, "preview_every": 3}
    run = tmp_path_factory.mktemp("run_sites")
    values = {"preset": "tiny3d", "run_dir": str(run), "data": {"source": str(root), "val_fraction": 0.25}}
    values |= {"autoencoder": stage, "diffusion": stage | {"label_dropout": 0.2}, "controlnet": stage}
    train(build_train_config(values), progress=False)
    split = json.loads((run / "split.json").read_text())
    assert split["class_names"] == ["siteA", "siteB"]
    assert {i["source"].split("/")[0] for i in split["items"] if i["label"] == "siteB"} == {"siteB"}
    out = run / "gen"
    generate_to_folder(GenerateConfig(run_dir=run, out=out, label="siteB", count=3, steps=2), progress=False)
    rows = read_manifest(out / "manifest.jsonl")
    assert {r["label"] for r in rows} == {"siteB"} and rows[0]["guidance"] == 3.0
    assert {r["label_map"]["candidate"]["key"] for r in rows} <= set(sites["siteB"])
    with pytest.raises(SynthmedError, match="unknown label 'siteC'"):
        generate_to_folder(GenerateConfig(run_dir=run, out=out, label="siteC", count=1), progress=False)


def test_3d_options_are_refused_for_a_2d_run(tiny_run: Path, tmp_path: Path) -> None:
    cfg = GenerateConfig(run_dir=tiny_run, out=tmp_path / "g", count=1, steps=2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(SynthmedError, match=r"\['spacing'\] apply to 3D runs only"):
        generate_to_folder(cfg, progress=False)


def test_quality_failures_are_reported_and_refused_under_qc_strict(run3d: Path, tmp_path: Path) -> None:
    """Bounds no volume can meet (intensities lie in [0, 1]) make every attempt fail: the console names the
    seeds; --qc-strict keeps no file and ends with an error."""
    run = tmp_path / "run"
    shutil.copytree(run3d, run)
    meta = json.loads((run / "metadata.json").read_text())
    for cn in meta["controlnets"].values():
        cn["quality_bounds"] = {k: [2.0, 3.0] for k in cn["quality_bounds"]}
    (run / "metadata.json").write_text(json.dumps(meta))
    args = ["generate", "--run", str(run), "--count", "2", "--steps", "2", "--qc-retries", "1"]
    args.append("--no-progress")
    kept = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "kept")])
    assert kept.exit_code == 0, kept.output
    assert "2 of 2 volumes failed the intensity quality check after 1 retries" in kept.output
    assert "seeds [0, 1]" in kept.output
    rows = read_manifest(tmp_path / "kept" / "manifest.jsonl")
    assert [len(r["attempts"]) for r in rows] == [2, 2]
    assert all((tmp_path / "kept" / r["file"]).is_file() for r in rows)
    strict = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "strict"), "--qc-strict"])
    assert strict.exit_code == 2 and "were not kept (--qc-strict; seeds [0, 1])" in strict.output
    rows = read_manifest(tmp_path / "strict" / "manifest.jsonl")
    assert all(r["file"] is None and r["dropped"].startswith("quality:") for r in rows) and len(rows) == 2
    assert not list((tmp_path / "strict").glob("*.nii.gz"))


def test_a_size_that_crops_the_labels_is_warned_about_or_refused(
    run3d: Path, hippocampus: Path, tmp_path: Path
) -> None:
    """hippocampus_023's labels span 24 x 40 x 26 voxels at 1 mm, in a 35 x 51 x 35 grid; a centred crop keeps
    them all from 24 x 41 x 26 voxels; 16 x 24 x 16 cuts about half of each label."""
    source = hippocampus / "labels" / "hippocampus_023.nii.gz"
    cfg = GenerateConfig(run_dir=run3d, out=tmp_path / "g", count=1, steps=2, label_map=source, qc_retries=0)
    with pytest.raises(
        SynthmedError,
        match=r"label 1 loses 5\d%, label 2 loses 4\d%\); give --size of at least "
        r"\(24, 41, 26\).*raise max_label_loss",
    ) as err:
        generate_to_folder(cfg, progress=False)
    assert "hippocampus_023.nii.gz" in str(err.value)
    with pytest.warns(UserWarning, match=r"crops the labelled structures \(label 1 loses 5\d%"):
        generate_to_folder(cfg.model_copy(update={"max_label_loss": 0.6}), progress=False)
    assert len(read_manifest(tmp_path / "g" / "manifest.jsonl")) == 1
    # Drawn training maps (16 x 24 x 16 at 1 mm): a smaller Y cuts them too, and the warning says so.
    drawn = GenerateConfig(
        run_dir=run3d, out=tmp_path / "d", count=1, steps=2, size=(16, 16, 16), qc_retries=0
    )
    with pytest.warns(UserWarning, match=r"the run's training label maps: --size \(16, 16, 16\) crops"):
        generate_to_folder(drawn.model_copy(update={"max_label_loss": 1.0}), progress=False)


def test_evaluation_takes_the_grid_the_volumes_were_generated_at(run3d: Path, tmp_path: Path) -> None:
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.volumetric import volume_grid

    out = tmp_path / "g"
    cfg = GenerateConfig(run_dir=run3d, out=out, count=1, steps=2, spacing=(1.25, 1.25, 1.25), qc_retries=0)
    generate_to_folder(cfg.model_copy(update={"max_label_loss": 1.0}), progress=False)
    grid = volume_grid(EvaluateConfig(synthetic=out, out=tmp_path / "report"))
    assert grid == {
        "size": [16, 24, 16],
        "spacing": [1.25, 1.25, 1.25],
        "size_from": "synthetic manifest",
        "spacing_from": "synthetic manifest",
    }
    given = volume_grid(EvaluateConfig(synthetic=out, out=tmp_path / "r", volume_size=(32, 32, 32)))
    assert given["size"] == [32, 32, 32] and given["size_from"] == "option"
    assert given["spacing"] == [1.25, 1.25, 1.25]
    generate_to_folder(cfg.model_copy(update={"seed": 5, "size": (16, 16, 16), "max_label_loss": 1.0}))
    with pytest.raises(
        SynthmedError, match=r"several sizes \[\(16, 16, 16\), \(16, 24, 16\)\]; give --volume-size"
    ):
        volume_grid(EvaluateConfig(synthetic=out, out=tmp_path / "report"))
