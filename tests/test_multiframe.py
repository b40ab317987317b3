"""Multi-frame DICOM (issue 22): each frame of a colour or grey cine is one image of the data set, only that
frame is decoded, and the frames of one file stay in one split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from synthmed.config import DataConfig
from synthmed.data import load_arrays, prepare
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.readers import MAX_FRAMES, decode_pixels, read_bytes, read_image
from synthmed.errors import SynthmedError


def _cine(frames: np.ndarray, path: Path, claimed: int | None = None) -> Path:
    """A multi-frame RGB Secondary Capture DICOM of (F, H, W, 3) uint8 ``frames``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    ds.NumberOfFrames = claimed or len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _fundus(retinamnist: Path, grade: int, n: int, skip: int = 0) -> np.ndarray:
    """``n`` real RetinaMNIST photographs of one grade, (n, 28, 28, 3) uint8."""
    with np.load(retinamnist) as z:
        images = z["train_images"][z["train_labels"][:, 0] == grade]
    return images[skip : skip + n]


def _cine_folder(retinamnist: Path, root: Path, per_class: int = 4, frames: int = 5) -> Path:
    """Two grade folders, each with ``per_class`` colour cines of ``frames`` real photographs."""
    for grade, name in ((0, "none"), (1, "some")):
        for k in range(per_class):
            _cine(_fundus(retinamnist, grade, frames, k * frames), root / name / f"cine{k}.dcm")
    return root


def test_each_frame_decodes_alone_and_keeps_its_colour(retinamnist: Path, tmp_path: Path) -> None:
    real = _fundus(retinamnist, 0, 3)
    path = _cine(real, tmp_path / "cine.dcm")
    data = read_bytes(path)
    for k in range(3):
        pixels = decode_pixels(data, path, k + 1)
        assert pixels.colour and pixels.channels is not None
        np.testing.assert_array_equal(pixels.channels, real[k].astype(np.float32))
    with pytest.raises(SynthmedError, match="frame 4 asked of a DICOM file with 3 frame"):
        decode_pixels(data, path, 4)
    with pytest.raises(SynthmedError, match=r"multi-frame DICOM with 3 frames.*export the frame") as err:
        read_image(path)  # where one image is expected (an editing source), the file is refused by name
    assert err.value.path == str(path)


def test_a_grey_cine_reads_like_pydicom_frame_by_frame(dicom_file) -> None:
    path = dicom_file("emri_small.dcm")
    whole = pydicom.dcmread(path).pixel_array
    data = read_bytes(path)
    for k in (1, 10):
        np.testing.assert_allclose(decode_pixels(data, path, k).array, whole[k - 1])


def test_a_folder_of_cines_is_one_image_per_frame_in_one_split(
    retinamnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _cine_folder(retinamnist, tmp_path / "cines")
    cfg = DataConfig(source=root, val_fraction=0.25, holdout_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        prepared = prepare(cfg, 0, tmp_path / "s.json")
    assert "40 images are frames of 8 multi-frame DICOM files" in caplog.text
    assert len(prepared.records) == 2 * 4 * 5 and {r.channels for r in prepared.records} == {3}
    assert prepared.records[0].source == "none/cine0.dcm#frame=1"
    split_of: dict[str, set[str]] = {}
    for r in prepared.records:
        split_of.setdefault(r.source.split("#")[0], set()).add(str(r.split))
    assert all(len(s) == 1 for s in split_of.values())  # a cine never straddles training and holdout
    assert {s for v in split_of.values() for s in v} == {"train", "val", "holdout"}
    assert json.loads((tmp_path / "s.json").read_text()).get("duplicates", []) == []  # frames are not copies
    loaded = load_arrays(prepared.records[:5], DataConfig(source=root, image_size=28), ["none", "some"])
    assert loaded.images.shape == (5, 3, 28, 28) and not loaded.skipped
    assert len({loaded.images[i].sum().item() for i in range(5)}) == 5  # five different photographs


def test_a_manifest_may_list_single_frames(retinamnist: Path, tmp_path: Path) -> None:
    _cine(_fundus(retinamnist, 0, 3), tmp_path / "a.dcm")
    _cine(_fundus(retinamnist, 1, 2), tmp_path / "b.dcm")
    (tmp_path / "m.csv").write_text("path,label\na.dcm#frame=2,none\nb.dcm,some\na.dcm#frame=7,none\n")
    prepared = prepare(DataConfig(source=tmp_path / "m.csv", on_error="skip"), 0, tmp_path / "s.json")
    assert [r.source for r in prepared.records] == ["a.dcm#frame=2", "b.dcm#frame=1", "b.dcm#frame=2"]
    assert [(s.source, "frame 7 asked" in s.reason) for s in prepared.skipped] == [("a.dcm#frame=7", True)]


def test_a_hostile_frame_count_is_refused_by_name(retinamnist: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    _cine(_fundus(retinamnist, 0, 2), root / "none" / "liar.dcm", claimed=MAX_FRAMES + 1)
    _cine(_fundus(retinamnist, 0, 2), root / "none" / "ok.dcm")
    _cine(_fundus(retinamnist, 1, 2), root / "some" / "ok.dcm")
    prepared = prepare(DataConfig(source=root, on_error="skip"), 0, tmp_path / "s.json")
    assert len(prepared.records) == 4
    skipped = [(s.source, "claims 10001 frames" in s.reason) for s in prepared.skipped]
    assert skipped == [("none/liar.dcm", True)]


def test_frames_have_no_masks_and_say_so(retinamnist: Path, tmp_path: Path) -> None:
    path = _cine(_fundus(retinamnist, 0, 2), tmp_path / "cine.dcm")
    pairs = load_image_mask_pairs([Path(f"{path}#frame=1")], DataConfig(image_size=28))
    reasons = [s.reason for s in pairs.skipped]
    assert reasons == ["a frame of a multi-frame DICOM: masks pair with whole files"]


def test_the_catalogue_leaves_a_cine_out_and_says_why(retinamnist: Path, tmp_path: Path) -> None:
    from PIL import Image

    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.importer import CatalogueWarning, import_real
    from synthmed.catalogue.migrate import upgrade

    root = tmp_path / "set"
    _cine(_fundus(retinamnist, 0, 3), root / "none" / "cine.dcm")
    (root / "some").mkdir()
    Image.fromarray(_fundus(retinamnist, 1, 1)[0]).save(root / "some" / "photo.png")
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    engine = make_engine(url)
    warns = pytest.warns(CatalogueWarning, match=r"cine\.dcm: left out \(multi-frame DICOM")
    with warns, transaction(session_factory(engine)) as session:
        assert [s.path for s in import_real(session, root, "mixed").samples] == ["some/photo.png"]
    engine.dispose()
