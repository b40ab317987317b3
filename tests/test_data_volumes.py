"""3D ingestion on the real MSD hippocampus volumes, their quirks, and damaged copies of them."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydantic
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from synthmed.data.sources import Skipped
from synthmed.data.volumes import (
    VolumeConfig,
    VolumePair,
    discover_volumes,
    load_volume_pair,
    load_volumes,
)
from synthmed.errors import SynthmedError

# The first few complete pairs: hippocampus_001 is stored as uint8, 003 and 004 as float32.
KEYS = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006")
CFG = VolumeConfig(size=(40, 56, 40))


@pytest.fixture
def msd_copy(msd_pairs: Callable[[tuple[str, ...]], Path]) -> Callable[..., Path]:
    """Copy some real pairs into a fresh {images,labels}/ folder (MSD layout)."""

    def build(keys: tuple[str, ...] = KEYS) -> Path:
        return msd_pairs(keys)

    return build


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


def _real_pair(root: Path, key: str, *, label: bool = True) -> VolumePair:
    return VolumePair(
        root / "images" / f"{key}.nii.gz", root / "labels" / f"{key}.nii.gz" if label else None, key
    )


def _real(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_reports_exactly_the_three_quirks(hippocampus: Path) -> None:
    found = discover_volumes(hippocampus, require_labels=True)
    orphan, unlabelled = "label map without an image (expected images/{})", "image without a label map"
    assert {s.source: s.reason for s in found.skipped} == {
        "labels/hippocampus_010.nii.gz": orphan.format("hippocampus_010.nii.gz"),
        "labels/hippocampus_281.nii.gz": orphan.format("hippocampus_281.nii.gz"),
        "images/hippocampus_118.nii.gz": f"{unlabelled} (expected labels/hippocampus_118.nii.gz)",
    }
    assert len(found.pairs) == 260
    assert all(p.label is not None and p.label.name == p.image.name for p in found.pairs)
    assert all(p.key == p.image.name.removesuffix(".nii.gz") for p in found.pairs)


def test_images_without_labels_are_kept_unless_labels_are_required(hippocampus: Path) -> None:
    found = discover_volumes(hippocampus)
    assert len(found.pairs) == 261
    assert [p.key for p in found.pairs if p.label is None] == ["hippocampus_118"]
    assert [s.source for s in found.skipped] == [
        "labels/hippocampus_010.nii.gz",
        "labels/hippocampus_281.nii.gz",
    ]


def test_flat_layout_pairs_by_key_and_reports_strays(hippocampus: Path, tmp_path: Path) -> None:
    for key in KEYS[:2]:
        shutil.copy(hippocampus / "images" / f"{key}.nii.gz", tmp_path / f"{key}_image.nii.gz")
        shutil.copy(hippocampus / "labels" / f"{key}.nii.gz", tmp_path / f"{key}_label.nii.gz")
    shutil.copy(hippocampus / "labels" / "hippocampus_010.nii.gz", tmp_path / "hippocampus_010_label.nii.gz")
    (tmp_path / "notes.txt").write_text("not a volume")
    (tmp_path / "thumbnails").mkdir()
    (tmp_path / ".DS_Store").write_text("hidden files are ignored")
    (tmp_path / "previews").mkdir()  # synthmed generate's sidecars: ignored too
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    found = discover_volumes(tmp_path)
    assert [(p.key, p.image.name, p.label.name if p.label else None) for p in found.pairs] == [
        (k, f"{k}_image.nii.gz", f"{k}_label.nii.gz") for k in KEYS[:2]
    ]
    assert found.skipped == [
        Skipped("notes.txt", "not a NIfTI file (.nii, .nii.gz) or a DICOM series folder"),
        Skipped("thumbnails", "folder without DICOM files (expected one folder per DICOM series)"),
        Skipped(
            "hippocampus_010_label.nii.gz",
            "label map without an image (expected hippocampus_010_image.nii.gz)",
        ),
    ]


def test_images_only_folder_loads_without_labels(hippocampus: Path, tmp_path: Path) -> None:
    shutil.copy(hippocampus / "images" / f"{KEYS[0]}.nii.gz", tmp_path)
    _save(tmp_path / f"{KEYS[1]}.nii", *_real(hippocampus / "images" / f"{KEYS[1]}.nii.gz"))  # uncompressed
    shutil.copy(hippocampus / "images" / f"{KEYS[1]}.nii.gz", tmp_path)  # the same key again
    loaded = load_volumes(tmp_path, CFG)
    assert loaded.keys == list(KEYS[:2]) and loaded.labels is None
    assert loaded.skipped == [
        Skipped(f"{KEYS[1]}.nii.gz", f"same name {KEYS[1]!r} as {KEYS[1]}.nii; rename one of them")
    ]
    with pytest.raises(SynthmedError, match=r"none of the 2 images has a label map \(image without a label"):
        discover_volumes(tmp_path, require_labels=True)  # nothing usable left: the error says why


def test_folder_without_volumes_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="no usable volumes found"):
        discover_volumes(tmp_path)
    with pytest.raises(SynthmedError, match="not a folder of volumes"):
        discover_volumes(tmp_path / "missing")


# --- loading real pairs ------------------------------------------------------------------------


def test_real_pairs_load_at_the_configured_size_in_ras(
    hippocampus: Path, msd_copy: Callable[..., Path]
) -> None:
    loaded = load_volumes(msd_copy(), CFG)
    assert loaded.keys == list(KEYS) and loaded.skipped == []
    assert loaded.images.shape == (len(KEYS), 1, 40, 56, 40) and loaded.images.dtype.is_floating_point
    assert float(loaded.images.min()) == 0.0 and float(loaded.images.max()) == 1.0
    assert loaded.labels is not None and loaded.labels.shape == loaded.images.shape
    assert set(loaded.labels.unique().tolist()) == {0, 1, 2}
    assert np.all(np.diagonal(loaded.affines[:, :3, :3], axis1=1, axis2=2) > 0)  # +x R, +y A, +z S
    _, _, meta = load_volume_pair(_real_pair(hippocampus, KEYS[0], label=False), CFG)
    assert meta["original_shape"] == nib.load(hippocampus / "images" / f"{KEYS[0]}.nii.gz").shape
    assert meta["spacing"] == (1.0, 1.0, 1.0)


def test_flipped_file_is_reoriented_to_ras(hippocampus: Path, tmp_path: Path) -> None:
    """The same scan stored L->R (x axis flipped, affine adjusted) loads voxel for voxel identically."""
    data, affine = _real(hippocampus / "images" / f"{KEYS[0]}.nii.gz")
    labels, _ = _real(hippocampus / "labels" / f"{KEYS[0]}.nii.gz")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    las = affine @ flip
    assert nib.aff2axcodes(las) == ("L", "A", "S")
    pair = VolumePair(
        _save(tmp_path / "las.nii.gz", data[::-1].copy(), las),
        _save(tmp_path / "las_label.nii.gz", labels[::-1].copy(), las),
        "las",
    )
    image, label, meta = load_volume_pair(pair, CFG)
    ref_image, ref_label, ref_meta = load_volume_pair(
        _real_pair(hippocampus, KEYS[0]),
        CFG,
    )
    assert np.allclose(image, ref_image) and label is not None and np.array_equal(label, ref_label)
    assert np.allclose(meta["affine"], ref_meta["affine"])


def test_resampling_to_2mm_halves_the_extent(hippocampus: Path) -> None:
    pair = _real_pair(hippocampus, KEYS[0])
    _, fine, _ = load_volume_pair(pair, VolumeConfig(size=(64, 64, 64)))
    _, coarse, meta = load_volume_pair(pair, VolumeConfig(size=(64, 64, 64), spacing=(2.0, 2.0, 2.0)))
    assert meta["spacing"] == (2.0, 2.0, 2.0) and np.allclose(np.diag(meta["affine"])[:3], 2.0)
    assert fine is not None and coarse is not None
    for axis in range(3):
        extent = [int(np.ptp(np.nonzero(lab[0].numpy())[axis])) + 1 for lab in (fine, coarse)]
        assert abs(extent[1] - extent[0] / 2) <= 1, (axis, extent)


def test_ct_window_clips_hounsfield_units_then_scales(tmp_path: Path) -> None:
    hu = np.array([-3000, -1000, -500, 0, 500, 1000, 3000], dtype=np.float32)
    vol = np.broadcast_to(hu[:, None, None], (7, 4, 4)).copy()
    path = _save(tmp_path / "ct.nii.gz", vol, np.eye(4))
    cfg = VolumeConfig(size=(7, 4, 6), modality="ct")  # z padded by one voxel each side
    image, label, _ = load_volume_pair(VolumePair(path, None, "ct"), cfg)
    assert label is None
    assert np.allclose(image[0, :, 0, 2].numpy(), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert float(image[0, :, :, 0].abs().max()) == 0.0  # padding is air (0 after scaling)
    narrow = VolumeConfig(size=(7, 4, 4), modality="ct", ct_window=(-500, 500))
    image, _, _ = load_volume_pair(VolumePair(path, None, "ct"), narrow)
    assert np.allclose(image[0, :, 0, 0].numpy(), [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])


# --- bad files ---------------------------------------------------------------------------------


def _shape_mismatch(root: Path, key: str) -> Path:
    data, affine = _real(root / "labels" / f"{key}.nii.gz")
    return _save(root / "labels" / f"{key}.nii.gz", data[:-2].copy(), affine)


def _shifted_affine(root: Path, key: str) -> Path:
    data, affine = _real(root / "labels" / f"{key}.nii.gz")
    affine[:3, 3] += [2.0, 0.0, 0.0]
    return _save(root / "labels" / f"{key}.nii.gz", data, affine)


def _nan_image(root: Path, key: str) -> Path:
    data, affine = _real(root / "images" / f"{key}.nii.gz")
    data = data.astype(np.float32)
    data[3, 4, 5] = data[6, 7, 8] = np.nan
    return _save(root / "images" / f"{key}.nii.gz", data, affine)


def _constant_image(root: Path, key: str) -> Path:
    data, affine = _real(root / "images" / f"{key}.nii.gz")
    return _save(root / "images" / f"{key}.nii.gz", np.zeros_like(data), affine)


def _truncated_image(root: Path, key: str) -> Path:
    path = root / "images" / f"{key}.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _fractional_labels(root: Path, key: str) -> Path:
    data, affine = _real(root / "labels" / f"{key}.nii.gz")
    data = data.astype(np.float32)
    data[data == 2] = 1.5
    return _save(root / "labels" / f"{key}.nii.gz", data, affine)


QUIRKS = {
    "label shape": (
        _shape_mismatch,
        r"label map shape \(\d+, \d+, \d+\) differs from its image's \(\d+, \d+, \d+\)",
    ),
    "label affine": (_shifted_affine, r"label map affine .* differs from its image's .* by up to 2 mm"),
    "NaN image": (_nan_image, r"image has 2 NaN or infinite voxels"),
    "constant image": (_constant_image, r"empty volume: every voxel is 0"),
    "truncated file": (_truncated_image, r"cannot read this NIfTI file: damaged, truncated"),
    "float labels": (_fractional_labels, r"label map has \d+ non-integer values \(e\.g\. 1\.5\)"),
}


@pytest.mark.parametrize("quirk", QUIRKS)
def test_bad_file_raises_naming_it(quirk: str, msd_copy: Callable[..., Path]) -> None:
    make, message = QUIRKS[quirk]
    root = msd_copy(KEYS[:1])
    bad = make(root, KEYS[0])
    pair = discover_volumes(root).pairs[0]
    with pytest.raises(SynthmedError, match=message) as err:
        load_volume_pair(pair, CFG)
    assert err.value.path == str(bad) and str(err.value).startswith(f"{bad}: ")


def test_bad_files_are_skipped_and_the_rest_still_loads(hippocampus: Path, msd_copy: Callable) -> None:
    keys = (*KEYS, "hippocampus_007", "hippocampus_008", "hippocampus_011", "hippocampus_014")
    root = msd_copy(keys)
    shutil.copy(hippocampus / "labels" / "hippocampus_010.nii.gz", root / "labels")  # no image
    bad = {key: make(root, key) for key, (make, _) in zip(keys, QUIRKS.values(), strict=False)}
    loaded = load_volumes(root, CFG)
    assert loaded.keys == list(keys[len(QUIRKS) :]) and loaded.images.shape[0] == len(keys) - len(QUIRKS)
    reasons = {s.source: s.reason for s in loaded.skipped}
    assert reasons.pop("labels/hippocampus_010.nii.gz").startswith("label map without an image")
    assert reasons.keys() == {f"images/{k}.nii.gz" for k in bad}
    for (key, path), (_, message) in zip(bad.items(), QUIRKS.values(), strict=True):
        reason = reasons[f"images/{key}.nii.gz"]
        assert reason.startswith(f"{path}: ") and re.search(message, reason), reason


def test_mixed_labelled_and_unlabelled_images_return_no_labels(hippocampus: Path, msd_copy: Callable) -> None:
    root = msd_copy(KEYS[:2])
    shutil.copy(hippocampus / "images" / "hippocampus_118.nii.gz", root / "images")
    assert load_volumes(root, CFG).labels is None
    labelled = load_volumes(root, CFG, require_labels=True)
    assert labelled.keys == list(KEYS[:2]) and labelled.labels is not None
    assert [s.source for s in labelled.skipped] == ["images/hippocampus_118.nii.gz"]


# --- DICOM series ------------------------------------------------------------------------------


def _write_series(data: np.ndarray, affine: np.ndarray, folder: Path) -> None:
    """One DICOM file per z slice, geometry from the NIfTI affine (RAS -> DICOM's LPS)."""
    folder.mkdir()
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    dx, dy = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    series, study = generate_uid(), generate_uid()
    for k in range(data.shape[2]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "MR"
        ds.InstanceNumber = k + 1
        # Columns run along x (first axis), rows along y: the slice is the transposed (x, y) plane.
        ds.ImageOrientationPatient = [*(lps[:, 0] / dx), *(lps[:, 1] / dy)]
        ds.ImagePositionPatient = list(lps @ [0.0, 0.0, k, 1.0])
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.uint16)).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def test_dicom_series_folder_loads_like_the_nifti_it_was_written_from(
    hippocampus: Path, tmp_path: Path
) -> None:
    key = KEYS[0]  # stored as uint8, so it fits DICOM's 16-bit integers exactly
    data, affine = _real(hippocampus / "images" / f"{key}.nii.gz")
    _write_series(data, affine, tmp_path / key)
    shutil.copy(hippocampus / "labels" / f"{key}.nii.gz", tmp_path / f"{key}_label.nii.gz")
    (tmp_path / "stray.dcm").write_bytes((tmp_path / key / "slice_000.dcm").read_bytes())
    found = discover_volumes(tmp_path, require_labels=True)
    assert found.pairs == [VolumePair(tmp_path / key, tmp_path / f"{key}_label.nii.gz", key)]
    assert found.skipped == [
        Skipped("stray.dcm", "DICOM file outside a series folder; put each series in its own folder")
    ]
    image, label, meta = load_volume_pair(found.pairs[0], CFG)
    ref_image, ref_label, ref_meta = load_volume_pair(
        _real_pair(hippocampus, key),
        CFG,
    )
    assert meta["original_shape"] == data.shape and np.allclose(meta["original_affine"], affine)
    assert np.allclose(meta["affine"], ref_meta["affine"])
    assert np.allclose(image, ref_image, atol=1e-6) and label is not None and np.array_equal(label, ref_label)


# --- config ------------------------------------------------------------------------------------


def test_config_accepts_yaml_lists_and_rejects_bad_values() -> None:
    cfg = VolumeConfig.model_validate({"size": [96, 96, 64], "spacing": [1, 1, 2.5], "modality": "ct"})
    assert cfg.size == (96, 96, 64) and cfg.spacing == (1.0, 1.0, 2.5) and cfg.ct_window == (-1000.0, 1000.0)
    for bad in (
        {"size": [96, 96]},
        {"size": [96, 96, 0]},
        {"size": ["96", 96, 64]},
        {"size": [96, 96, 64], "spacing": [1, 1, -1]},
        {"size": [96, 96, 64], "clip_percentiles": [99, 1]},
        {"size": [96, 96, 64], "ct_window": [1000, -1000]},
        {"size": [96, 96, 64], "modality": "pet"},
        {"size": [96, 96, 64], "spacnig": [1, 1, 1]},
    ):
        with pytest.raises(pydantic.ValidationError):
            VolumeConfig.model_validate(bad)


def test_reading_a_volume_does_not_log_the_missing_gpu_dicom_decoder(
    hippocampus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MONAI logs "nvImageCodec is not available" whenever its loader is built on a machine without the GPU
    DICOM decoder (every CPU machine): the line used to open every 3D command's output."""
    import logging

    from synthmed.data import volumes

    volumes._loader.cache_clear()  # build the loader again, as a fresh command does
    with caplog.at_level(logging.DEBUG):
        pair = volumes.discover_volumes(hippocampus, require_labels=True).pairs[0]
        image, _, _ = volumes.load_volume_pair(pair, volumes.VolumeConfig(size=(16, 16, 16)))
    assert image.shape == (1, 16, 16, 16)
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]
