"""discover / check_readable / load_split_arrays on real files: class folders, BUSI, DICOM, npz, CSV."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import DataConfig
from synthmed.data import (
    Record,
    check_readable,
    discover,
    load_arrays,
    load_split_arrays,
)
from synthmed.errors import SynthmedError

# --- class folders ---------------------------------------------------------------------------------


def test_class_folders(kermany_folder) -> None:
    root = kermany_folder(n=5)
    found = discover(DataConfig(source=root))
    assert found.class_names == ["NORMAL", "PNEUMONIA"]
    assert [r.label for r in found.records].count("PNEUMONIA") == 5 and len(found.records) == 10
    assert all(r.source.startswith(r.label + "/") and r.split is None for r in found.records)
    assert len({r.sha256 for r in found.records}) == 10 and found.skipped == []


def test_full_kermany_train_counts_and_speed(kermany: Path) -> None:
    start = time.perf_counter()
    found = discover(DataConfig(source=kermany / "train"))
    elapsed = time.perf_counter() - start
    labels = [r.label for r in found.records]
    assert (labels.count("NORMAL"), labels.count("PNEUMONIA")) == (1341, 3875)
    assert elapsed < 10, f"discovering 5216 files took {elapsed:.1f}s"


def test_split_level_folder_is_rejected_with_a_hint(kermany: Path) -> None:
    with pytest.raises(SynthmedError, match="cxr-kermany/train"):
        discover(DataConfig(source=kermany))


def test_real_busi_counts_exclude_masks(busi: Path) -> None:
    found = discover(DataConfig(source=busi))
    labels = [r.label for r in found.records]
    assert found.class_names == ["benign", "malignant", "normal"]
    assert (labels.count("benign"), labels.count("malignant"), labels.count("normal")) == (437, 210, 133)
    assert not any("mask" in r.source for r in found.records)


def _busi_copy(busi: Path, dst: Path, n: int = 3, flat: bool = False) -> Path:
    """Copy n images (+ their masks) per class; flat=True puts masks beside images like the original BUSI."""
    for cls in ("benign", "malignant"):
        for img in sorted((busi / cls / "images").glob("*.png"))[:n]:
            out = dst / cls / ("" if flat else "images")
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(img, out / img.name)
            for mask in (busi / cls / "mask").glob(f"{img.stem}_mask*.png"):
                mdir = dst / cls / ("" if flat else "mask")
                mdir.mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, mdir / mask.name)
    return dst


@pytest.mark.parametrize("flat", [False, True])
def test_busi_layout_odd_names_masks_excluded(busi: Path, tmp_path: Path, flat: bool) -> None:
    root = _busi_copy(busi, tmp_path / "busi", flat=flat)
    found = discover(DataConfig(source=root))
    names = sorted(Path(r.source).name for r in found.records)
    assert len(names) == 6 and "benign (1).png" in names
    assert not any("_mask" in n for n in names)


def test_pattern_selects_files(busi: Path, tmp_path: Path) -> None:
    root = _busi_copy(busi, tmp_path / "busi")
    found = discover(DataConfig(source=root, pattern="mask/*_mask.png"))
    assert found.records and all("/mask/" in r.source for r in found.records)
    with pytest.raises(SynthmedError, match=r"\*\.jpeg"):
        discover(DataConfig(source=root, pattern="*.jpeg"))


def test_non_image_and_hidden_files(kermany_folder) -> None:
    root = kermany_folder(n=3)
    (root / "NORMAL" / "README.txt").write_text("notes")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"junk")
    (root / "labels.csv").write_text("a,b\n")
    (root / "EMPTY").mkdir()
    found = discover(DataConfig(source=root))
    reasons = {s.source: s.reason for s in found.skipped}
    assert "not an image file" in reasons["NORMAL/README.txt"]
    assert "outside any class" in reasons["labels.csv"]
    assert "without image files" in reasons["EMPTY/"] and found.class_names == ["NORMAL", "PNEUMONIA"]
    assert not any(".DS_Store" in s or ".cache" in s for s in reasons)
    assert len(found.records) == 6


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="no class sub-folders") as err:
        discover(DataConfig(source=tmp_path))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    with pytest.raises(SynthmedError, match="no image files"):
        discover(DataConfig(source=tmp_path))


def test_single_class(kermany_folder) -> None:
    root = kermany_folder(n=3, classes=("NORMAL",))
    with pytest.raises(SynthmedError, match="allow_single_class"):
        discover(DataConfig(source=root))
    assert discover(DataConfig(source=root, allow_single_class=True)).class_names == ["NORMAL"]


def test_classes_restrict_and_order(busi: Path, tmp_path: Path) -> None:
    root = _busi_copy(busi, tmp_path / "busi")
    found = discover(DataConfig(source=root, classes=["malignant", "benign"]))
    assert found.class_names == ["malignant", "benign"]
    with pytest.raises(SynthmedError, match=r"\['cyst'\].*available classes: \['benign', 'malignant'\]"):
        discover(DataConfig(source=root, classes=["benign", "cyst"]))


def test_missing_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match=r"data\.source"):
        discover(DataConfig())
    with pytest.raises(SynthmedError, match="not found"):
        discover(DataConfig(source=tmp_path / "nowhere"))
    (tmp_path / "data.h5").write_bytes(b"x")
    with pytest.raises(SynthmedError, match="unsupported"):
        discover(DataConfig(source=tmp_path / "data.h5"))


def test_dicom_folder_with_extensionless_file(dicom_file, tmp_path: Path) -> None:
    for cls, name in (("CR", "RG1_UNCI.dcm"), ("CT", "CT_small.dcm")):
        (tmp_path / cls).mkdir()
        shutil.copy(dicom_file(name), tmp_path / cls / name)
    shutil.copy(dicom_file("CT_small.dcm"), tmp_path / "CT" / "IM0002")  # no extension: DICM magic
    found = check_readable(discover(DataConfig(source=tmp_path)), DataConfig(source=tmp_path))
    assert sorted(r.source for r in found.records) == ["CR/RG1_UNCI.dcm", "CT/CT_small.dcm", "CT/IM0002"]
    images, labels = load_split_arrays(
        [Record(r.source, r.label, r.sha256, "train") for r in found.records],
        DataConfig(source=tmp_path, image_size=32),
        "train",
        class_names=found.class_names,
    )
    assert images.shape == (3, 1, 32, 32) and labels.tolist() == [0, 1, 1]


# --- unreadable files: skip / raise ------------------------------------------------------------------


def _with_corrupt_file(root: Path) -> Path:
    good = sorted((root / "NORMAL").glob("*.jpeg"))[0]
    bad = root / "NORMAL" / "broken (copy).jpeg"
    bad.write_bytes(good.read_bytes()[:2000])
    (root / "PNEUMONIA" / "empty.png").write_bytes(b"")
    return bad


def test_corrupt_files_skipped_and_reported(kermany_folder) -> None:
    root = kermany_folder(n=3)
    _with_corrupt_file(root)
    cfg = DataConfig(source=root)
    found = check_readable(discover(cfg), cfg)
    reasons = {s.source: s.reason for s in found.skipped}
    assert "truncated" in reasons["NORMAL/broken (copy).jpeg"]
    assert "empty" in reasons["PNEUMONIA/empty.png"]
    assert len(found.records) == 6


def test_corrupt_files_raise_naming_the_file(kermany_folder) -> None:
    root = kermany_folder(n=3)
    _with_corrupt_file(root)
    cfg = DataConfig(source=root, on_error="raise")
    with pytest.raises(SynthmedError, match=r"empty\.png"):
        discover(cfg)  # empty files are caught while hashing
    (root / "PNEUMONIA" / "empty.png").unlink()
    with pytest.raises(SynthmedError, match=r"broken \(copy\)\.jpeg"):
        check_readable(discover(cfg), cfg)


def test_load_skips_files_damaged_after_discovery(kermany_folder) -> None:
    root = kermany_folder(n=3)
    cfg = DataConfig(source=root, image_size=16)
    found = discover(cfg)
    victim = root / found.records[0].source
    victim.write_bytes(victim.read_bytes()[:1000])
    loaded = load_arrays(found.records, cfg, found.class_names)
    assert len(loaded.records) == 5 and "changed" in loaded.skipped[0].reason
    with pytest.raises(SynthmedError, match="changed"):
        load_arrays(found.records, cfg.model_copy(update={"on_error": "raise"}), found.class_names)


# --- loading and cache -------------------------------------------------------------------------------


def test_load_split_arrays_and_cache(kermany_folder, tmp_path: Path) -> None:
    root = kermany_folder(n=4)
    cfg = DataConfig(source=root, image_size=32)
    found = discover(cfg)
    records = [
        Record(r.source, r.label, r.sha256, "train" if i % 4 else "val") for i, r in enumerate(found.records)
    ]
    images, labels = load_split_arrays(
        records, cfg, "train", tmp_path / "cache", class_names=found.class_names
    )
    assert images.shape == (6, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert len(list((tmp_path / "cache").glob("train-*.pt"))) == 1
    empty = load_split_arrays(records, cfg, "holdout", class_names=found.class_names)
    assert empty[0].shape == (0, 1, 32, 32) and empty[1].shape == (0,)
    shutil.rmtree(root)  # a cache hit must not touch the files at all
    again = load_split_arrays(records, cfg, "train", tmp_path / "cache", class_names=found.class_names)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    with pytest.raises(SynthmedError):  # other preprocessing settings -> another cache entry -> reads files
        load_split_arrays(
            records,
            cfg.model_copy(update={"image_size": 16}),
            "train",
            tmp_path / "cache",
            class_names=["NORMAL"],
        )


# --- MedMNIST-style npz ------------------------------------------------------------------------------


def _kermany_arrays(kermany: Path, n: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    paths = [
        p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((kermany / "train" / cls).glob("*.jpeg"))[:n]
    ]
    images = np.stack([np.asarray(Image.open(p).convert("L").resize((size, size))) for p in paths])
    labels = np.repeat([0, 1], n).astype(np.uint8)[:, None]  # MedMNIST stores (N, 1)
    return images, labels


@pytest.fixture
def medmnist_npz(kermany: Path, tmp_path: Path) -> Path:
    images, labels = _kermany_arrays(kermany, 6)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(
        path,
        train_images=images[::2],
        train_labels=labels[::2],
        val_images=images[1::4],
        val_labels=labels[1::4],
        test_images=images[3::4],
        test_labels=labels[3::4],
    )
    return path


def test_npz_source(medmnist_npz: Path) -> None:
    cfg = DataConfig(source=medmnist_npz, image_size=32)
    found = discover(cfg)
    assert found.class_names == ["0", "1"]
    assert [r.split for r in found.records].count("train") == 6
    assert {r.split for r in found.records} == {"train", "val", "holdout"}
    assert found.records[0].source == "pneumoniamnist.npz#train/0"
    images, labels = load_split_arrays(found.records, cfg, "holdout", class_names=found.class_names)
    assert images.shape == (3, 1, 32, 32) and labels.tolist() == [0, 1, 1]


def test_npz_label_names_rgb_and_integer_order(kermany: Path, tmp_path: Path) -> None:
    images, _ = _kermany_arrays(kermany, 6)
    rgb = np.repeat(images[..., None], 3, axis=-1)
    labels = np.array([2, 10] * 6)
    np.savez(tmp_path / "a.npz", train_images=rgb, train_labels=labels)
    assert discover(DataConfig(source=tmp_path / "a.npz")).class_names == ["2", "10"]  # by value, not text
    names = np.array(["normal", "x", "pneumonia"] + [f"c{i}" for i in range(8)])
    np.savez(tmp_path / "b.npz", images=rgb, labels=np.where(labels == 2, 0, 2), label_names=names)
    found = discover(DataConfig(source=tmp_path / "b.npz"))
    assert found.class_names == ["normal", "pneumonia"] and found.records[0].split is None


def test_npz_nan_items(medmnist_npz: Path, tmp_path: Path) -> None:
    data = dict(np.load(medmnist_npz))
    data["train_images"] = data["train_images"].astype(np.float32)
    data["train_images"][3, 5, 5] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **data)
    found = discover(DataConfig(source=path))
    assert [s.source for s in found.skipped] == ["nan.npz#train/3"] and "NaN" in found.skipped[0].reason
    with pytest.raises(SynthmedError, match=r"nan\.npz#train/3.*NaN"):
        discover(DataConfig(source=path, on_error="raise"))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"train_images": np.zeros((4, 8, 8))}, "no 'train_labels'"),
        ({"train_images": np.zeros((4, 8, 8)), "train_labels": np.zeros((4, 3))}, "one-hot"),
        ({"train_images": np.zeros((4, 8, 8)), "train_labels": np.array([0, 1, 0.5, 1])}, "whole numbers"),
        ({"train_images": np.zeros((4, 8, 8)), "train_labels": np.array([0, 1, -1, 1])}, r">= 0"),
        ({"train_images": np.zeros((4, 8)), "train_labels": np.zeros(4)}, r"\(N, H, W\)"),
        ({"x": np.zeros(3)}, "train_images"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SynthmedError, match=match) as err:
        discover(DataConfig(source=tmp_path / "bad.npz"))
    assert "bad.npz" in str(err.value)


def test_npz_with_pickled_objects_or_garbage(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", train_images=np.array([None, 1], dtype=object), train_labels=np.zeros(2))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    for name in ("obj.npz", "junk.npz"):
        with pytest.raises(SynthmedError, match=r"not a readable \.npz"):
            discover(DataConfig(source=tmp_path / name))


# --- CSV manifest --------------------------------------------------------------------------------------


def _manifest(busi: Path, tmp_path: Path) -> Path:
    root = _busi_copy(busi, tmp_path / "data", n=4)
    files = sorted(root.glob("*/images/*.png"))
    rows = [[f.relative_to(tmp_path).as_posix(), f.parent.parent.name, ""] for f in files]
    rows[0][2] = "holdout"
    odd = root / "benign" / "images" / 'with, comma "quoted".png'
    shutil.copy(files[1], odd)
    rows.append([odd.relative_to(tmp_path).as_posix(), "benign", "train"])
    rows.append(["data/benign/images/gone (7).png", "benign", ""])
    rows.append(rows[2])  # listed twice
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


def test_csv_manifest(busi: Path, tmp_path: Path) -> None:
    path = _manifest(busi, tmp_path)
    found = discover(DataConfig(source=path))
    assert found.class_names == ["benign", "malignant"] and len(found.records) == 9
    assert found.records[0].split == "holdout" and {r.split for r in found.records[1:]} <= {None, "train"}
    assert any('with, comma "quoted".png' in r.source for r in found.records)
    reasons = {s.source: s.reason for s in found.skipped}
    assert "file not found" in reasons["data/benign/images/gone (7).png"]
    assert any("listed again" in r for r in reasons.values())
    images, _ = load_split_arrays(
        found.records, DataConfig(source=path, image_size=16), "holdout", class_names=["benign", "malignant"]
    )
    assert images.shape == (1, 1, 16, 16)
    with pytest.raises(SynthmedError, match=r"gone \(7\)\.png.*line 11"):
        discover(DataConfig(source=path, on_error="raise"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,class\na.png,x\n", "'path' and 'label'"),
        ("path,label,split\na.png,x,testing\n", "unknown split 'testing'"),
        ("path,label\na.png\n", "line 2 has 1 fields"),
        ("path,label\n", "no readable image"),
        ("", "'path' and 'label'"),
    ],
)
def test_bad_manifest(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(SynthmedError, match=match) as err:
        discover(DataConfig(source=tmp_path / "m.csv"))
    assert "m.csv" in str(err.value)


def test_semicolon_manifest(kermany_folder, tmp_path: Path) -> None:
    root = kermany_folder(n=2)
    lines = ["Path;Label"] + [
        f"{p.relative_to(tmp_path).as_posix()};{p.parent.name}" for p in sorted(root.rglob("*.jpeg"))
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines), encoding="utf-8-sig")
    assert len(discover(DataConfig(source=tmp_path / "m.csv")).records) == 4
