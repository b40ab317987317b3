"""Integrity on every input route (issue 20): duplicates across splits, links out of the folder, colour,
small classes and npz class names, on real images (Kermany, BUSI, RetinaMNIST, hippocampus)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthmed.cli import app
from synthmed.config import DataConfig, VolumeData
from synthmed.data import discover, prepare, read_image
from synthmed.data.integrity import near_pairs, pixel_hash
from synthmed.data.splits import read_split_file
from synthmed.data.volume_sets import prepare_volumes
from synthmed.errors import SynthmedError

runner = CliRunner()
# Real near-identical BUSI images (slightly different crops of one scan), and one byte-identical pair
# filed under two classes.
BUSI_NEAR = [("benign (233)", "benign (299)"), ("benign (320)", "benign (3)"), ("normal (51)", "normal (54)")]


def _retina(retinamnist: Path) -> dict[str, np.ndarray]:
    with np.load(retinamnist) as z:
        return {k: z[k] for k in z.files}


def _split_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# --- item 1: duplicates across splits -------------------------------------------------------------


def test_pixel_hash_matches_reencoded_copies_not_other_images(kermany: Path) -> None:
    files = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[:40]
    images = [read_image(f) for f in files]
    hashes = [pixel_hash(im) for im in images]
    assert near_pairs(hashes) == []  # 40 different radiographs
    buffer = io.BytesIO()
    Image.open(files[0]).convert("L").resize((112, 112)).save(buffer, "PNG")  # smaller, grey, PNG
    copy = np.asarray(Image.open(buffer), dtype=np.float32) * 0.5 + 20  # and a linear intensity change
    assert near_pairs([pixel_hash(copy)], hashes) == [(0, 0)]


def test_npz_duplicate_across_its_own_splits_is_warned_and_recorded(
    retinamnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    z = _retina(retinamnist)
    arrays = {
        f"{k}_{part}": z[f"{k}_{part}"][:30].copy()
        for k in ("train", "val", "test")
        for part in ("images", "labels")
    }
    arrays["train_labels"][5] = 0
    arrays["test_images"][0] = arrays["train_images"][5]  # byte-identical, opposite label
    arrays["test_labels"][0] = 4
    arrays["val_images"][0] = np.clip(arrays["train_images"][6].astype(int) + 3, 0, 255)  # near-identical
    npz = tmp_path / "retina.npz"
    np.savez(npz, **arrays)
    with caplog.at_level(logging.WARNING):
        prepared = prepare(DataConfig(source=npz, allow_single_class=True), 0, tmp_path / "split.json")
    assert {r.split for r in prepared.records if r.source.endswith(("#train/5", "#test/0"))} == {
        "train",
        "holdout",
    }
    found = {(d["a"], d["b"]): d for d in _split_json(tmp_path / "split.json")["duplicates"]}
    planted = found["retina.npz#test/0", "retina.npz#train/5"]
    assert planted["kind"] == "identical" and (planted["a_label"], planted["b_label"]) == ("4", "0")
    assert (planted["a_split"], planted["b_split"]) == ("holdout", "train")
    assert found["retina.npz#train/6", "retina.npz#val/0"]["kind"] == "near-identical"
    text = _warnings(caplog)
    assert "retina.npz#test/0 (4, holdout) = retina.npz#train/5 (0, train), identical" in text


def test_near_identical_images_share_a_split_when_the_split_is_ours(busi: Path, tmp_path: Path) -> None:
    root = tmp_path / "busi"
    for cls in ("benign", "normal"):
        (root / cls).mkdir(parents=True)
        for src in sorted((busi / cls / "images").glob("*.png"))[:25]:
            shutil.copy(src, root / cls / src.name)
    for pair in BUSI_NEAR:
        for stem in pair:
            shutil.copy(busi / stem.split()[0] / "images" / f"{stem}.png", root / stem.split()[0])
    # A JPEG copy of one image filed under the other class.
    Image.open(root / "benign" / "benign (1).png").save(root / "normal" / "copy.jpg", quality=80)
    pairs = [[f"{s.split()[0]}/{s}.png" for s in pair] for pair in BUSI_NEAR]
    pairs.append(["benign/benign (1).png", "normal/copy.jpg"])
    for seed in range(3):
        split_path = tmp_path / f"split{seed}.json"
        prepared = prepare(DataConfig(source=root), seed, split_path)
        split_of = {r.source: r.split for r in prepared.records}
        assert all(split_of[a] == split_of[b] for a, b in pairs), seed
    recorded = {frozenset((d["a"], d["b"])) for d in _split_json(split_path)["duplicates"]}
    assert all(frozenset(p) in recorded for p in pairs)
    assert read_split_file(split_path).records[0].phash  # kept for the leak check


def test_csv_split_apart_copies_are_warned(
    busi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = ["path,label,split"]
    for cls in ("benign", "normal"):
        for i, src in enumerate(sorted((busi / cls / "images").glob("*.png"))[:12]):
            rows.append(f"{cls}/{src.name},{cls},{'holdout' if i < 2 else 'train'}")
            (tmp_path / cls).mkdir(exist_ok=True)
            shutil.copy(src, tmp_path / cls / src.name)
    first = sorted((tmp_path / "benign").glob("*.png"))[0]  # in holdout
    Image.open(first).save(tmp_path / "benign" / "again.jpg", quality=90)
    rows.append("benign/again.jpg,benign,train")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        prepare(DataConfig(source=tmp_path / "list.csv"), 0, tmp_path / "split.json")
    assert f"benign/again.jpg (benign, train) = benign/{first.name} (benign, holdout)" in _warnings(caplog)


def test_volume_copy_in_another_format_shares_a_split(msd_pairs, tmp_path: Path) -> None:
    keys = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8, 11, 14, 15, 17)]
    root = msd_pairs(keys)
    for sub in ("images", "labels"):  # the first volume again, stored as float32: other bytes, same content
        img = nib.load(root / sub / f"{keys[0]}.nii.gz")
        data = np.asarray(img.dataobj, dtype=np.float32 if sub == "images" else np.uint8)
        nib.save(nib.Nifti1Image(data, img.affine), root / sub / "hippocampus_copy.nii.gz")
    cfg = DataConfig(
        source=root, volume=VolumeData(size=(16, 16, 16)), val_fraction=0.2, holdout_fraction=0.3
    )
    for seed in range(3):
        prepared = prepare_volumes(cfg, seed, tmp_path / f"split{seed}.json")
        split_of = {Path(r.source).name: r.split for r in prepared.records}
        assert split_of[f"{keys[0]}.nii.gz"] == split_of["hippocampus_copy.nii.gz"], seed
    duplicates = _split_json(tmp_path / "split2.json")["duplicates"]
    assert [(Path(d["a"]).name, Path(d["b"]).name, d["kind"]) for d in duplicates] == [
        ("hippocampus_001.nii.gz", "hippocampus_copy.nii.gz", "near-identical")
    ]


# --- item 3: links out of the folder --------------------------------------------------------------


def test_links_out_of_a_training_folder_are_refused(kermany: Path, kermany_folder) -> None:
    root = kermany_folder(n=3)
    test_image = sorted((kermany / "test" / "NORMAL").glob("*.jpeg"))[0]
    (root / "NORMAL" / "extra.jpeg").symlink_to(test_image)
    (root / "PNEUMONIA" / "passwd.png").symlink_to("/etc/passwd")
    (root / "NORMAL" / "inside.jpeg").symlink_to(next((root / "NORMAL").glob("IM-*.jpeg")))  # stays inside
    with pytest.raises(SynthmedError, match="2 symbolic link") as info:
        discover(DataConfig(source=root))
    assert f"NORMAL/extra.jpeg -> {test_image}" in str(info.value) and "PNEUMONIA/passwd.png" in str(
        info.value
    )
    assert "inside.jpeg" not in str(info.value)


def test_catalogue_import_real_refuses_links_out_of_the_folder(
    kermany: Path, kermany_folder, msd_pairs, hippocampus: Path, tmp_path: Path
) -> None:
    database = ["--database", f"sqlite:///{tmp_path / 'catalogue.db'}"]
    assert runner.invoke(app, ["db", "upgrade", *database]).exit_code == 0
    images = kermany_folder(n=2)
    first = sorted((images / "NORMAL").iterdir())[0]
    (images / "NORMAL" / f"{first.stem}_mask.png").symlink_to("/etc/passwd")  # a "mask" from the system
    volumes = msd_pairs(["hippocampus_001", "hippocampus_003"])
    for sub in ("images", "labels"):
        (volumes / sub / "hippocampus_004.nii.gz").symlink_to(hippocampus / sub / "hippocampus_004.nii.gz")
    for folder, link in (
        (images, f"NORMAL/{first.stem}_mask.png"),
        (volumes, "images/hippocampus_004.nii.gz"),
    ):
        result = runner.invoke(
            app, ["catalogue", "import-real", str(folder), "--name", folder.name, *database]
        )
        assert result.exit_code == 2 and "symbolic link(s) lead out of the folder" in result.output
        assert link in result.output
    result = runner.invoke(app, ["catalogue", "list", *database])
    assert result.exit_code == 0 and "real samples" not in result.output  # nothing catalogued


# --- item 4: skipped files counted per class ----------------------------------------------------------


def test_skipped_files_are_counted_per_class(
    kermany_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = kermany_folder(n=6)
    (root / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "NORMAL" / "notes.txt").write_text("not an image")
    for _ in range(2):  # the split is made, then re-used (as a resumed run does)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            prepare(DataConfig(source=root), 0, tmp_path / "split.json")
        assert "NORMAL 6 kept, 2 skipped; PNEUMONIA 6 kept, 0 skipped" in _warnings(caplog)


# --- item 5: colour -------------------------------------------------------------------------------


def test_colour_images_are_counted_once_per_data_set(
    retinamnist: Path, kermany_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = kermany_folder(n=12)  # Kermany: grey stored as three equal RGB channels, not colour
    with caplog.at_level(logging.WARNING):
        prepare(DataConfig(source=root), 0, tmp_path / "grey.json")
    assert "colour" not in _warnings(caplog)
    z = _retina(retinamnist)
    for i in range(5):  # five colour fundus photographs as RGB PNGs
        Image.fromarray(z["train_images"][i]).save(root / "NORMAL" / f"fundus{i}.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare(DataConfig(source=root), 0, tmp_path / "colour.json")
    colour = [r.getMessage() for r in caplog.records if "colour" in r.getMessage()]
    assert len(colour) == 1 and "5 of 29 images have colour or several channels, read as grey" in colour[0]


# --- item 6: small classes ------------------------------------------------------------------------


def test_one_image_class_is_warned_and_a_class_without_training_image_refused(
    kermany_folder, retinamnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = kermany_folder(n=30)
    for extra in sorted((root / "NORMAL").iterdir())[1:]:
        extra.unlink()
    with caplog.at_level(logging.WARNING):
        prepare(DataConfig(source=root), 0, tmp_path / "split.json")
    assert "NORMAL (1 train, 0 val, 0 holdout)" in _warnings(caplog)
    z = _retina(retinamnist)
    keep = z["train_labels"][:, 0] != 4  # grade 4 only in the test split
    np.savez(
        tmp_path / "r.npz",
        train_images=z["train_images"][keep],
        train_labels=z["train_labels"][keep],
        test_images=z["test_images"],
        test_labels=z["test_labels"],
    )
    with pytest.raises(SynthmedError, match=r"\['4'\] have no image in the training split"):
        prepare(DataConfig(source=tmp_path / "r.npz"), 0, tmp_path / "r.json")


# --- item 9: class names of an npz ------------------------------------------------------------------


def test_npz_class_names_from_config_or_medmnist_info(retinamnist: Path, tmp_path: Path) -> None:
    npz = tmp_path / "retinamnist.npz"
    shutil.copy(retinamnist, npz)
    grades = ["none", "mild", "moderate", "severe", "proliferative"]
    found = discover(DataConfig(source=npz, label_names=grades))
    assert found.class_names == grades and {r.label for r in found.records} == set(grades)
    info = {"retinamnist": {"task": "ordinal-regression", "label": {str(i): g for i, g in enumerate(grades)}}}
    npz.with_suffix(".json").write_text(json.dumps(info))
    prepare(DataConfig(source=npz), 0, tmp_path / "split.json")
    doc = _split_json(tmp_path / "split.json")
    assert doc["class_names"] == grades and doc["counts"]["train"]["proliferative"] == 66
    with pytest.raises(SynthmedError, match=r"data\.label_names"):
        discover(DataConfig(source=tmp_path, label_names=grades))
