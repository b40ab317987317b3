"""Multi-contrast 3D (issue 22): two-channel MRI made of real hippocampus volumes, read from contrast folders,
4D NIfTI and nnU-Net channel files, then trained (tiny3d), generated, regenerated, evaluated and exported."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthmed.artifacts.manifest import read_manifest
from synthmed.cli import app
from synthmed.config import GenerateConfig, build_train_config
from synthmed.data.volumes import VolumeConfig, discover_volumes, load_volume_pair, load_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.previews import GUTTER, LEGEND_HEIGHT

KEYS = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8, 11)]
GRID = (32, 44, 32)  # every case's contrasts and label map cropped / padded to one grid
SIZE = (16, 24, 16)  # tiny3d's


def _fit(arr: np.ndarray) -> np.ndarray:
    """Centred crop or zero pad of ``arr`` to GRID."""
    for axis, target in enumerate(GRID):
        n = arr.shape[axis]
        if n < target:
            pad = [(0, 0)] * arr.ndim
            pad[axis] = ((target - n) // 2, target - n - (target - n) // 2)
            arr = np.pad(arr, pad)
        start = (arr.shape[axis] - target) // 2
        arr = np.take(arr, range(start, start + target), axis=axis)
    return arr


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)


@pytest.fixture(scope="module")
def cases(hippocampus: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """key -> (t1, t2, label map) on GRID: t1 is volume i, t2 volume i + 1 in other units (x 1000 + 50)."""
    vols = {
        k: _fit(nib.load(hippocampus / "images" / f"{k}.nii.gz").get_fdata(dtype=np.float32)) for k in KEYS
    }
    out = {}
    for key, after in itertools.pairwise(KEYS):
        label = _fit(np.asarray(nib.load(hippocampus / "labels" / f"{key}.nii.gz").dataobj).astype(np.uint8))
        out[key] = (vols[key], vols[after] * 1000 + 50, label)
    return out


@pytest.fixture(scope="module")
def contrasts(cases: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/t1/<key>, images/t2/<key> and labels/<key>."""
    root = tmp_path_factory.mktemp("contrasts")
    for key, (t1, t2, label) in cases.items():
        _save(t1, root / "images" / "t1" / f"{key}.nii.gz")
        _save(t2, root / "images" / "t2" / f"{key}.nii.gz")
        _save(label, root / "labels" / f"{key}.nii.gz")
    return root


def _four_d(cases: dict, root: Path) -> Path:
    for key, (t1, t2, label) in cases.items():
        _save(np.stack([t1, t2], axis=-1), root / "images" / f"{key}.nii.gz")
        _save(label, root / "labels" / f"{key}.nii.gz")
    return root


def test_contrast_folders_4d_nifti_and_nnunet_files_read_alike(
    cases: dict, contrasts: Path, tmp_path: Path
) -> None:
    cfg = VolumeConfig(size=SIZE)
    found = discover_volumes(contrasts, require_labels=True)
    assert found.channel_names == ["t1", "t2"] and not found.skipped
    folders = load_volumes(contrasts, cfg, require_labels=True)
    assert folders.images.shape == (len(cases), 2, *SIZE) and folders.labels is not None
    # Each channel scaled on its own: t2 (volume i + 1 in other units) reads as the next case's t1.
    for i in range(len(cases) - 1):
        assert torch.allclose(folders.images[i, 1], folders.images[i + 1, 0], atol=1e-5)
    assert folders.images.amin() == 0.0 and folders.images.amax() == 1.0
    four_d = load_volumes(_four_d(cases, tmp_path / "4d"), cfg, require_labels=True)
    assert torch.equal(four_d.images, folders.images) and torch.equal(four_d.labels, folders.labels)
    nnunet = tmp_path / "nnunet"
    for key, (t1, t2, label) in cases.items():
        _save(t1, nnunet / "imagesTr" / f"{key}_0000.nii.gz")
        _save(t2, nnunet / "imagesTr" / f"{key}_0001.nii.gz")
        _save(label, nnunet / "labelsTr" / f"{key}.nii.gz")
    (nnunet / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}}))
    assert discover_volumes(nnunet).channel_names == ["T1", "T2"]
    assert torch.equal(load_volumes(nnunet, cfg, require_labels=True).images, folders.images)


def test_a_missing_contrast_is_reported_and_one_off_the_grid_refused(
    cases: dict, contrasts: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    key, (t1, t2, label) = next(iter(cases.items()))
    _save(t1, root / "images" / "t1" / "a.nii.gz")
    _save(t2, root / "images" / "t2" / "a.nii.gz")
    _save(label, root / "labels" / "a.nii.gz")
    _save(t1, root / "images" / "t1" / "lonely.nii.gz")  # no t2
    _save(label, root / "labels" / "lonely.nii.gz")
    _save(t1, root / "images" / "t1" / "shifted.nii.gz")
    _save(t2[1:], root / "images" / "t2" / "shifted.nii.gz")  # another grid
    _save(label, root / "labels" / "shifted.nii.gz")
    found = discover_volumes(root, require_labels=True)
    assert [p.key for p in found.pairs] == ["a", "shifted"]
    (skip,) = found.skipped
    assert skip.source == "images/t1/lonely.nii.gz" and "lacks contrast(s) ['t2']" in skip.reason
    assert "images/t2/lonely.nii.gz" in skip.reason
    with pytest.raises(SynthmedError, match=r"contrast shape .* differs .*resample every contrast") as err:
        load_volume_pair(found.pairs[1], VolumeConfig(size=SIZE))
    assert "images/t2/shifted.nii.gz" in str(err.value)
    loaded = load_volumes(root, VolumeConfig(size=SIZE), require_labels=True)
    assert loaded.keys == ["a"]
    assert {s.source for s in loaded.skipped} == {"images/t1/lonely.nii.gz", "images/t1/shifted.nii.gz"}
    # A one-channel volume among two-channel ones: skipped, with the counts named.
    mixed = _four_d(dict([next(iter(cases.items()))]), tmp_path / "mixed")
    _save(t1, mixed / "images" / "grey.nii.gz")
    _save(label, mixed / "labels" / "grey.nii.gz")
    loaded = load_volumes(mixed, VolumeConfig(size=SIZE), channels=2)
    assert loaded.keys == [key] and "has 1 channel(s) but the data set 2" in loaded.skipped[0].reason


def test_foundation_slice_by_slice_encodes_each_contrast_as_grey() -> None:
    from synthmed.models.slicewise import SliceWiseAutoencoder, build_run_autoencoder

    volume = {"size": [32, 32, 8]}
    cfg = build_train_config({"preset": "small3d", "data": {"channels": 2, "volume": volume}})
    grey = build_train_config({"preset": "small3d", "data": {"volume": volume}})
    assert cfg.slicewise and cfg.channelwise and cfg.latent_channels == 8
    torch.manual_seed(0)
    model = build_run_autoencoder(cfg).eval()
    single = SliceWiseAutoencoder(model.autoencoder.autoencoder).eval()  # type: ignore[union-attr, arg-type]
    assert not grey.channelwise
    x = torch.rand(1, 2, 32, 32, 8)
    with torch.no_grad():
        mu, _ = model.encode(x)
        assert mu.shape == (1, 8, 8, 8, 8)
        assert torch.allclose(mu[:, 4:], single.encode(x[:, 1:])[0], atol=1e-5)
        assert model.decode(mu).shape == (1, 2, 32, 32, 8)


@pytest.fixture(scope="module")
def run2c(contrasts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthmed.training.run import train

    stage = {"steps": 4, "batch_size": 4, "preview_every": 4}
    cfg = build_train_config(
        {
            "preset": "tiny3d",
            "run_dir": str(tmp_path_factory.mktemp("run2c")),
            "data": {"source": str(contrasts), "val_fraction": 0.2},
            "autoencoder": stage,
            "diffusion": stage,
            "controlnet": stage,
        }
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def generated(run2c: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthmed.sampling.generate import generate_to_folder

    out = tmp_path_factory.mktemp("gen2c")
    cfg = GenerateConfig(run_dir=run2c, out=out, count=2, steps=3, batch_size=2, qc_retries=0)
    return generate_to_folder(cfg, progress=False)


def test_train_and_generate_two_contrasts(run2c: Path, generated: Path, tmp_path: Path) -> None:
    saved = (run2c / "config.yaml").read_text()
    assert "channels: 2" in saved and "- t1\n" in saved and "- t2\n" in saved
    assert {item["channels"] for item in json.loads((run2c / "split.json").read_text())["items"]} == {2}
    rows = read_manifest(generated / "manifest.jsonl")
    assert len(rows) == 2 and all(r["channels"] == 2 and r["channel_names"] == ["t1", "t2"] for r in rows)
    for row in rows:
        image = nib.load(generated / row["file"])
        data = np.asarray(image.dataobj)
        assert data.shape == (*SIZE, 2) and data.dtype == np.float32
        assert np.abs(data[..., 0] - data[..., 1]).mean() > 1e-3  # two contrasts, not one twice
        assert nib.load(generated / row["label_file"]).shape == SIZE
        assert [len(r["labels"]) > 0 for r in row["quality"]["channels"]] == [True, True]
        with Image.open(generated / row["preview"]) as preview:  # a row of three views per contrast + legend
            assert preview.height == 2 * 128 + GUTTER + LEGEND_HEIGHT
    row = rows[1]
    again = tmp_path / "again.nii.gz"
    args = ["regenerate", str(generated / "manifest.jsonl"), "--file", row["file"], "--out", str(again)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.array_equal(
        np.asarray(nib.load(again).dataobj), np.asarray(nib.load(generated / row["file"]).dataobj)
    )


def test_evaluate_two_contrasts(contrasts: Path, generated: Path, tmp_path: Path) -> None:
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    settings = {"extractor_steps": 4, "segmenter_steps": 2, "c2st_steps": 2, "c2st_folds": 2, "bootstrap": 10}
    settings |= {
        "msssim_pairs": 4,
        "c2st_permutations": 10,
        "image_size": 16,
        "cache_dir": tmp_path / "cache",
    }
    cfg = EvaluateConfig(
        synthetic=generated,
        real=contrasts,
        holdout=contrasts,
        out=tmp_path / "eval",
        masks=True,
        volume_size=(32, 48, 32),  # MS-SSIM needs more than tiny3d's 16 voxels
        **settings,
    )
    evaluate(cfg)
    doc = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [c["channel"] for c in doc["sharpness"]["all"]["per_channel"]] == [0, 1]
    assert len(doc["condition_fidelity"]["intensity"]["per_channel"]) == 2
    assert doc["condition_fidelity"]["segmenter"]["image_channels"] == 2  # every contrast, not channel 0


def test_export_writes_one_nifti_per_contrast(generated: Path, tmp_path: Path) -> None:
    from sqlalchemy import update

    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.export import export_approved
    from synthmed.catalogue.importer import import_generation
    from synthmed.catalogue.migrate import upgrade
    from synthmed.catalogue.models import Sample

    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    factory = session_factory(make_engine(url))
    with transaction(factory) as session:
        import_generation(session, generated, "syn2c", verify_all=True)
        session.execute(update(Sample).values(review_state="approved"))
    with transaction(factory) as session:
        export_approved(session, tmp_path / "export", "nifti")
    meta = json.loads((tmp_path / "export" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "t1", "1": "t2"}
    files = sorted(p.name for p in (tmp_path / "export" / "imagesTr").iterdir())
    assert files == [f"synthmed_{i:06d}_{c:04d}.nii.gz" for i in (1, 2) for c in (0, 1)]
    source = np.asarray(nib.load(sorted(generated.glob("syn_*_image.nii.gz"))[0]).dataobj)
    exported = [np.asarray(nib.load(tmp_path / "export" / "imagesTr" / f).dataobj) for f in files[:2]]
    assert all(np.array_equal(exported[c], source[..., c]) for c in (0, 1))


def test_real_contrast_files_are_catalogued_and_shown_like_a_4d_volume(
    contrasts: Path, generated: Path, tmp_path: Path
) -> None:
    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.importer import import_real
    from synthmed.catalogue.migrate import upgrade
    from synthmed.review import render

    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    engine = make_engine(url)
    with transaction(session_factory(engine)) as session:
        sample = sorted(import_real(session, contrasts, "mri2c").samples, key=lambda s: s.path)[0]
        files = sample.files
    engine.dispose()
    key = Path(sample.path).name
    assert [f.relative_to(contrasts).as_posix() for f in files] == [f"images/t1/{key}", f"images/t2/{key}"]
    planes = render.render_volume(files, 64, 20)
    single = [render.render_volume(f, 64, 20) for f in files]
    assert planes.shape == (20, 64, 128) and np.array_equal(planes, np.concatenate(single, axis=2))
    synthetic = sorted(generated.glob("syn_*_image.nii.gz"))[0]  # a 4D NIfTI of the same two contrasts
    items = [(1, files), (2, synthetic)]
    assert render.render_study(tmp_path / "cache", 1, items, spatial_dims=3, size=64) > 0  # not refused
    widths = {Image.open(p).width for p in (tmp_path / "cache").rglob("*.png")}
    assert widths == {128}
