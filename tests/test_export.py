"""Export of approved synthetic samples: PNG, NIfTI and DICOM corpora from real image files, read back."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from synthmed.artifacts.files import file_sha256
from synthmed.catalogue import export
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.export import export_approved
from synthmed.catalogue.importer import CatalogueWarning
from synthmed.catalogue.migrate import upgrade
from synthmed.catalogue.models import Dataset, GenerationRun, Sample, TrainedModel
from synthmed.cli import app
from synthmed.errors import SynthmedError

RUN_2D, RUN_3D = "/runs/busi64", "/runs/hippo3d"
DIFF_2D, DIFF_3D = "d2" * 32, "e3" * 32
# An affine with anisotropic spacing, a flipped axis and an offset: the DICOM geometry must follow it.
AFFINE_3D = np.array([[-1.5, 0, 0, 30.0], [0, 1.0, 0, -12.0], [0, 0, 2.0, 7.5], [0, 0, 0, 1]])


class Catalogue:
    """A catalogue of real files posing as generated samples, with their review states."""

    def __init__(
        self, url: str, root: Path, busi: Path, hippocampus: Path, ct: Path, retinamnist: Path
    ) -> None:
        self.url, self.ct, self.retinamnist = url, ct, retinamnist
        self.runs: dict[str, int] = {}  # data set name -> its generation run id
        self.sources: dict[int, dict] = {}  # approved sample id -> what its export must hold
        self.excluded: list[int] = []  # pending, rejected, real: never exported
        upgrade(url)
        self.engine = make_engine(url)
        with transaction(session_factory(self.engine)) as session:
            self._fill(session, root, busi, hippocampus)

    def _fill(self, session: Session, root: Path, busi: Path, hippocampus: Path) -> None:
        syn2d = self._dataset(session, "syn2d", root / "syn2d", 2, RUN_2D, DIFF_2D, {})
        images = {
            name: busi / name.split()[0] / "images" / f"{name}.png"
            for name in ("benign (1)", "malignant (1)", "normal (1)", "benign (2)", "benign (3)")
        }
        self._png(session, syn2d, "benign/syn_00000001.png", images["benign (1)"], seed=1, mask=True)
        self._png(session, syn2d, "malignant/syn_00000002.png", images["malignant (1)"], seed=2, mask=True)
        normal = images["normal (1)"]  # 16-bit, with BUSI's empty mask for "normal" (no lesion)
        self._png(session, syn2d, "normal/syn_00000003.png", normal, seed=3, bits=16, mask=True)
        self._png(session, syn2d, "benign/syn_00000004.png", images["benign (2)"], seed=4, state="rejected")
        self._png(session, syn2d, "benign/syn_00000005.png", images["benign (3)"], seed=5, state="pending")
        # A DICOM file with real patient attributes as a sample's file: none of them may reach the export.
        ct = root / "syn2d" / "ct" / "syn_00000006.dcm"
        ct.parent.mkdir()
        shutil.copy(self.ct, ct)
        self._add(session, syn2d, "ct/syn_00000006.dcm", ct, "ct", 6, pydicom.dcmread(ct).pixel_array)
        syn3d = self._dataset(
            session, "syn3d", root / "syn3d", 3, RUN_3D, DIFF_3D, {"data": {"volume": {"modality": "mri"}}}
        )
        for seed, key in ((10, "hippocampus_003"), (11, "hippocampus_001")):  # float32 and uint8 volumes
            self._volume(session, syn3d, hippocampus, key, seed)
        pending = self._dataset(session, "syn_pending", root / "pending", 2, RUN_2D, DIFF_2D, {})
        self._png(session, pending, "benign/syn_00000020.png", images["benign (2)"], seed=20, state="pending")
        hostile = self._dataset(session, "syn_hostile", root / "hostile", 2, RUN_2D, DIFF_2D, {})
        shutil.copy(images["benign (1)"], root / "outside.png")
        self._add(
            session,
            hostile,
            "../outside.png",
            root / "outside.png",
            "benign",
            30,
            np.zeros(1),
            state="hostile",
        )
        self._colour(session, root, images["benign (1)"])
        real = Dataset(name="busi_real", origin="real", root=str(busi), spatial_dims=2)
        session.add(real)
        session.flush()
        sample = Sample(
            dataset=real,
            path="benign/images/benign (1).png",
            label="benign",
            sha256="0" * 64,
            review_state="approved",
        )
        session.add(sample)
        session.flush()
        self.excluded.append(sample.id)

    def _dataset(
        self, session: Session, name: str, root: Path, dims: int, run_dir: str, diff: str, config: dict
    ) -> Dataset:
        root.mkdir(parents=True)
        dataset = Dataset(name=name, origin="synthetic", root=str(root), spatial_dims=dims)
        model = session.scalar(select(TrainedModel).where(TrainedModel.run_dir == run_dir))
        model = model or TrainedModel(
            run_dir=run_dir, autoencoder_sha256="a" * 64, diffusion_sha256=diff, config=config
        )
        run = GenerationRun(
            model=model, dataset=dataset, out_dir=str(root), settings={"sampler": "ddim", "steps": 25}
        )
        session.add_all([dataset, model, run])
        session.flush()
        self.runs[name] = run.id
        return dataset

    def _png(
        self,
        session: Session,
        dataset: Dataset,
        rel: str,
        src: Path,
        *,
        seed: int,
        mask: bool = False,
        bits: int = 8,
        state: str = "approved",
    ) -> None:
        pixels = np.asarray(Image.open(src).convert("L"))
        if bits == 16:
            pixels = pixels.astype(np.uint16) * 257
        path = Path(dataset.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        mask_rel, mask_pixels = None, None
        if mask:
            mask_src = src.parent.parent / "mask" / f"{src.stem}_mask.png"
            mask_rel = rel.replace(".png", "_mask.png")
            shutil.copy(mask_src, Path(dataset.root) / mask_rel)
            mask_pixels = (np.asarray(Image.open(mask_src)) > 0).astype(np.uint8)
        self._add(session, dataset, rel, path, rel.split("/")[0], seed, pixels, mask_rel, mask_pixels, state)

    def _colour(self, session: Session, root: Path, grey: Path) -> None:
        """syn_colour: two RGB fundus photographs (RetinaMNIST); syn_mixed: one beside a grey image."""
        with np.load(self.retinamnist) as z:
            photos = z["test_images"][:2]
        colour = self._dataset(session, "syn_colour", root / "colour", 2, RUN_2D, DIFF_2D, {})
        mixed = self._dataset(session, "syn_mixed", root / "mixed", 2, RUN_2D, DIFF_2D, {})
        for i, (dataset, photo) in enumerate([(colour, photos[0]), (colour, photos[1]), (mixed, photos[0])]):
            rel = f"fundus/syn_{40 + i:08d}.png"
            (Path(dataset.root) / "fundus").mkdir(exist_ok=True)
            Image.fromarray(photo).save(Path(dataset.root) / rel)
            self._add(session, dataset, rel, Path(dataset.root) / rel, "fundus", 40 + i, photo)
        self._png(session, mixed, "benign/syn_00000050.png", grey, seed=50)

    def _volume(self, session: Session, dataset: Dataset, hippocampus: Path, key: str, seed: int) -> None:
        image = np.asanyarray(nib.load(hippocampus / "images" / f"{key}.nii.gz").dataobj)
        label = np.asanyarray(nib.load(hippocampus / "labels" / f"{key}.nii.gz").dataobj)
        rel, mask_rel = f"syn_{seed:08d}_image.nii.gz", f"syn_{seed:08d}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, AFFINE_3D), Path(dataset.root) / rel)
        nib.save(nib.Nifti1Image(label, AFFINE_3D), Path(dataset.root) / mask_rel)
        self._add(
            session, dataset, rel, Path(dataset.root) / rel, "hippocampus", seed, image, mask_rel, label
        )

    def _add(
        self,
        session: Session,
        dataset: Dataset,
        rel: str,
        path: Path,
        label: str,
        seed: int,
        pixels: np.ndarray,
        mask_rel: str | None = None,
        mask: np.ndarray | None = None,
        state: str = "approved",
    ) -> None:
        provenance = {
            "file": rel,
            "label": label,
            "seed": seed,
            "sampler": "ddim",
            "steps": 25,
            "guidance": 3.0,
            "precision": "fp32",
            "checkpoint": "ema",
            "synthmed_version": "0.1.0",
        }
        sample = Sample(
            dataset=dataset,
            generation_run_id=self.runs[dataset.name],
            path=rel,
            mask_path=mask_rel,
            label=label,
            sha256=file_sha256(path),
            seed=seed,
            provenance=provenance,
            review_state="approved" if state == "hostile" else state,  # hostile: approved, path outside
        )
        session.add(sample)
        session.flush()
        if state == "approved":
            self.sources[sample.id] = {
                "pixels": pixels,
                "mask": mask,
                "dataset": dataset.name,
                "label": label,
            }
        else:
            self.excluded.append(sample.id)

    def export(self, out: Path, fmt: str, **kw) -> dict:
        with session_factory(self.engine)() as session:
            return export_approved(session, out, fmt, **kw)  # type: ignore[arg-type]

    def approved(self, dataset: str) -> dict[int, dict]:
        return {i: s for i, s in self.sources.items() if s["dataset"] == dataset}


@pytest.fixture(scope="module")
def catalogue(
    tmp_path_factory: pytest.TempPathFactory,
    busi: Path,
    hippocampus: Path,
    retinamnist: Path,
    dicom_file: Callable[[str], Path],
) -> Catalogue:
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'catalogue.db'}"
    return Catalogue(url, root, busi, hippocampus, dicom_file("CT_small.dcm"), retinamnist)


@pytest.fixture(autouse=True)
def _formats_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These catalogues hold real files posing as generated samples: the provenance check before export
    rightly refuses them (test_real_files_posing_as_synthetic_are_not_exported; tests/test_provenance.py
    exports genuine ones). The other tests here are about the formats, so they skip it."""
    monkeypatch.setattr(export, "verify_catalogued", lambda session, samples: None)


def manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def check_corpus(cat: Catalogue, out: Path, dataset: str, ending: str) -> list[dict[str, str]]:
    """Layout, dataset.json and manifest rows shared by every format; returns the rows."""
    approved = cat.approved(dataset)
    rows = manifest(out)
    assert sorted(int(r["sample_id"]) for r in rows) == sorted(approved)
    assert not {int(r["sample_id"]) for r in rows} & set(cat.excluded)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == len(approved) == len(list((out / "imagesTr").iterdir()))
    labelled = [r for r in rows if r["mask_file"]]
    assert (
        len(list((out / "labelsTr").iterdir()))
        == len(labelled)
        == sum(s["mask"] is not None for s in approved.values())
    )
    assert meta["file_ending"] == ending and meta["synthetic"] is True
    assert (
        "synthmed" in meta["description"]
        and Path(RUN_2D if dataset == "syn2d" else RUN_3D).name in meta["description"]
    )
    assert meta["class_labels"] == {r["case_id"]: approved[int(r["sample_id"])]["label"] for r in rows}
    for row in rows:
        assert row["file"].startswith("imagesTr/") and row["case_id"] + "_0000" in row["file"]
        assert row["sampler"] == "ddim" and row["steps"] == "25" and row["guidance"] == "3.0"
        assert row["diffusion_sha256"] == (DIFF_2D if dataset == "syn2d" else DIFF_3D)
        assert len(row["sha256"]) == 64 and len(row["source_sha256"]) == 64
        if (out / row["file"]).is_file():
            assert file_sha256(out / row["file"]) == row["sha256"]
    return rows


def test_png_export_round_trips_pixels_and_bit_depth(catalogue: Catalogue, tmp_path: Path) -> None:
    summary = catalogue.export(tmp_path / "png", "png", dataset="syn2d")
    out = tmp_path / "png"
    rows = check_corpus(catalogue, out, "syn2d", ".png")
    assert summary["cases"] == 4 and summary["labelled"] == 3
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "foreground": 1}
    for row in rows:
        source = catalogue.sources[int(row["sample_id"])]
        exported = np.asarray(Image.open(out / row["file"]))
        assert np.array_equal(exported, source["pixels"])  # 8-bit stays 8-bit, 16-bit stays 16-bit
        if source["mask"] is not None:
            assert np.array_equal(np.asarray(Image.open(out / row["mask_file"])), source["mask"])
    depths = {row["label"]: np.asarray(Image.open(out / row["file"])).dtype for row in rows}
    assert depths["normal"] == np.uint16 and depths["benign"] == np.uint8


def test_nifti_export_2d_as_one_slice_and_3d_with_affine(catalogue: Catalogue, tmp_path: Path) -> None:
    for dataset in ("syn2d", "syn3d"):
        out = tmp_path / dataset
        catalogue.export(out, "nifti", dataset=dataset)
        for row in check_corpus(catalogue, out, dataset, ".nii.gz"):
            source = catalogue.sources[int(row["sample_id"])]
            image = nib.load(out / row["file"])
            data = np.asanyarray(image.dataobj)
            if dataset == "syn2d":  # x = column, y = row, one slice, unit spacing
                assert data.shape[2] == 1 and np.array_equal(data[:, :, 0].T, source["pixels"])
                assert np.allclose(image.affine, np.eye(4))
            else:
                assert data.dtype == source["pixels"].dtype and np.array_equal(data, source["pixels"])
                assert np.allclose(image.affine, AFFINE_3D)
            if row["mask_file"]:
                mask = np.asanyarray(nib.load(out / row["mask_file"]).dataobj)
                expected = source["mask"] if dataset == "syn3d" else source["mask"].T[:, :, None]
                assert np.array_equal(mask, expected)
    labels = json.loads((tmp_path / "syn3d" / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "label_1": 1, "label_2": 2}
    assert json.loads((tmp_path / "syn3d" / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}


def dicom_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm"))


def check_synthetic_dicom(ds: pydicom.Dataset, run: str, diff: str) -> None:
    assert ds.SyntheticData == "YES" and ds[0x0008001C].value == "YES"
    assert Path(run).name in ds.SeriesDescription and diff[:12] in ds.SeriesDescription
    assert ds.Manufacturer == "synthmed" and "synthmed" in ds.ManufacturerModelName and ds.SoftwareVersions
    assert str(ds.PatientName).startswith("SYNTHETIC") and ds.PatientID.startswith("SYNTHETIC")
    assert not ds.get("PatientBirthDate") and not ds.get("PatientSex") and "PatientAge" not in ds
    for element in ds.iterall():  # decimal strings (rescale, geometry) within DICOM's 16 characters
        values = element.value if element.VM > 1 else [element.value]
        assert element.VR != "DS" or all(len(str(v)) <= 16 for v in values), element


def test_dicom_export_2d_is_marked_synthetic_with_new_uids_and_no_source_patient_data(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    out = tmp_path / "dcm"
    catalogue.export(out, "dicom", dataset="syn2d")
    rows = check_corpus(catalogue, out, "syn2d", ".dcm")
    source = pydicom.dcmread(catalogue.ct)
    uids = []
    for row in rows:
        ds = pydicom.dcmread(out / row["file"])
        check_synthetic_dicom(ds, RUN_2D, DIFF_2D)
        assert ds.ConversionType == "SYN" and ds.Modality == "OT"
        assert np.array_equal(ds.pixel_array, catalogue.sources[int(row["sample_id"])]["pixels"])
        uids += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
        if row["mask_file"]:
            seg = hd.seg.segread(out / row["mask_file"])
            check_synthetic_dicom(seg, RUN_2D, DIFF_2D)
            assert seg.StudyInstanceUID == ds.StudyInstanceUID and seg.PatientID == ds.PatientID
            mask = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)[0]
            assert np.array_equal(mask, catalogue.sources[int(row["sample_id"])]["mask"])
            uids += [seg.SeriesInstanceUID, seg.SOPInstanceUID]
    assert len(uids) == len(set(uids))  # new UIDs for every study, series and instance
    source_values = [source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID]
    source_values += [str(source.PatientName), source.PatientID, source.InstitutionName, source.StudyID]
    assert not set(source_values) & set(uids)
    everything = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in source_values:
        assert value.encode() not in everything, value


def test_dicom_export_3d_slices_follow_the_affine_and_round_trip(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    out = tmp_path / "dcm3d"
    catalogue.export(out, "dicom", dataset="syn3d")
    rows = check_corpus(catalogue, out, "syn3d", ".dcm")
    lps = np.diag([-1.0, -1.0, 1.0]) @ AFFINE_3D[:3]  # NIfTI RAS mm -> DICOM LPS mm
    for row in rows:
        source = catalogue.sources[int(row["sample_id"])]
        slices = [pydicom.dcmread(p) for p in sorted((out / row["file"]).iterdir())]
        assert len(slices) == source["pixels"].shape[2]
        for k, ds in enumerate(slices):
            check_synthetic_dicom(ds, RUN_3D, DIFF_3D)
            assert np.allclose([float(v) for v in ds.ImagePositionPatient], lps @ [0, 0, k, 1], atol=1e-4)
            assert [float(v) for v in ds.PixelSpacing] == [1.0, 1.5]  # between rows (y), between columns (x)
        volume = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds) for ds in slices], axis=-1)
        volume = volume.transpose(1, 0, 2)  # (rows = y, columns = x, z) -> (x, y, z)
        slope = float(slices[0].get("RescaleSlope", 1))
        assert np.allclose(volume, source["pixels"], atol=slope / 2 + 1e-6)  # float volumes: 16-bit steps
        if source["pixels"].dtype == np.uint8:
            assert slope == 1 and np.array_equal(volume, source["pixels"])
        seg = hd.seg.segread(out / row["mask_file"])
        labels = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID for ds in slices], combine_segments=True
        )
        assert np.array_equal(labels.transpose(2, 1, 0), source["mask"])
        uids = [ds.SOPInstanceUID for ds in slices] + [seg.SOPInstanceUID]
        assert len(set(uids)) == len(uids) and len({ds.SeriesInstanceUID for ds in slices}) == 1


def test_refusals(catalogue: Catalogue, tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="mix 2D and 3D"):
        catalogue.export(tmp_path / "a", "nifti")
    with pytest.raises(SynthmedError, match="PNG holds 2D images only"):
        catalogue.export(tmp_path / "a", "png", dataset="syn3d")
    with pytest.raises(SynthmedError, match="no approved synthetic samples in data set 'syn_pending'"):
        catalogue.export(tmp_path / "a", "png", dataset="syn_pending")
    with pytest.raises(SynthmedError, match="real data set"):
        catalogue.export(tmp_path / "a", "png", dataset="busi_real")
    with pytest.raises(SynthmedError, match="outside its data set folder"):
        catalogue.export(tmp_path / "a", "png", dataset="syn_hostile")
    with pytest.raises(SynthmedError, match="no data set named 'nope'"):
        catalogue.export(tmp_path / "a", "png", dataset="nope")
    assert not (tmp_path / "a").exists()


def test_non_empty_output_needs_overwrite_which_replaces_only_the_export(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthmedError, match="not empty"):
        catalogue.export(out, "png", dataset="syn2d")
    catalogue.export(out, "png", dataset="syn2d", overwrite=True)
    (out / "imagesTr" / "stale.png").write_bytes(b"old")
    first = (out / "manifest.csv").read_text()
    with pytest.warns(CatalogueWarning, match=r"the previous export .* was moved to .*corpus\.replaced-"):
        catalogue.export(out, "png", dataset="syn2d", overwrite=True)
    assert not (out / "imagesTr" / "stale.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "imagesTr").iterdir())) == 4
    # The previous export is kept whole beside the new one, in a folder named with the time of the move.
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("corpus.replaced-")]
    assert re.fullmatch(r"corpus\.replaced-\d{8}T\d{6}Z-\w+", aside.name)
    assert (aside / "imagesTr" / "stale.png").read_bytes() == b"old"
    assert (aside / "manifest.csv").read_text() == first and (aside / "dataset.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # the staging folder is gone


def test_the_output_may_not_overlap_a_catalogued_data_set(catalogue: Catalogue, tmp_path: Path) -> None:
    with session_factory(catalogue.engine)() as session:
        roots = dict(session.execute(select(Dataset.name, Dataset.root)).all())
    inside = Path(roots["syn2d"]) / "export"
    with pytest.raises(SynthmedError, match="overlaps the catalogued data set 'syn2d'"):
        catalogue.export(inside, "png", dataset="syn2d")
    with pytest.raises(SynthmedError, match="overlaps the catalogued data set 'busi_real'"):
        catalogue.export(Path(roots["busi_real"]) / "benign", "png", dataset="syn2d", overwrite=True)
    assert not inside.exists()
    # A data set that is a previous export's imagesTr would be moved aside by --overwrite: refused too.
    corpus = tmp_path / "corpus"
    (corpus / "imagesTr").mkdir(parents=True)
    with transaction(session_factory(catalogue.engine)) as session:
        session.add(Dataset(name="old_corpus", origin="real", root=str(corpus / "imagesTr")))
    try:
        with pytest.raises(SynthmedError, match="overlaps the catalogued data set 'old_corpus'"):
            catalogue.export(corpus, "png", dataset="syn2d", overwrite=True)
        assert (corpus / "imagesTr").is_dir() and not list(tmp_path.glob("corpus.replaced-*"))
    finally:
        with transaction(session_factory(catalogue.engine)) as session:
            session.execute(delete(Dataset).where(Dataset.name == "old_corpus"))


def test_real_files_posing_as_synthetic_are_not_exported(
    catalogue: Catalogue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the provenance check, as export runs it
    with pytest.raises(
        SynthmedError, match="cannot prove they are synthetic, so nothing was exported"
    ) as info:
        catalogue.export(tmp_path / "out", "dicom", dataset="syn2d")
    # Every approved file is named: their rows name no model that the catalogue holds with their run.
    for rel in ("benign/syn_00000001.png", "normal/syn_00000003.png", "ct/syn_00000006.dcm"):
        assert f"{rel}: its manifest row names another model than the one catalogued" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_export_command(catalogue: Catalogue, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "export",
        "--format",
        "png",
        "--out",
        str(tmp_path / "cli"),
        "--dataset",
        "syn2d",
        "--database",
        catalogue.url,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(manifest(tmp_path / "cli")) == 4
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    bad = runner.invoke(
        app, ["export", "--format", "jpeg", "--out", str(tmp_path / "x"), "--database", catalogue.url]
    )
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["export", "--out", str(tmp_path / "x"), "--database", catalogue.url])
    assert missing.exit_code == 2 and "format" in missing.output


def test_export_on_sqlite_and_postgresql(
    catalogue_url: str,
    tmp_path: Path,
    busi: Path,
    hippocampus: Path,
    retinamnist: Path,
    dicom_file: Callable[[str], Path],
) -> None:
    ct = dicom_file("CT_small.dcm")
    cat = Catalogue(catalogue_url, tmp_path / "data", busi, hippocampus, ct, retinamnist)
    try:
        summary = cat.export(tmp_path / "out", "nifti", dataset="syn3d")
        assert summary["cases"] == 2 and summary["labelled"] == 2
        check_corpus(cat, tmp_path / "out", "syn3d", ".nii.gz")
    finally:
        cat.engine.dispose()


def test_series_description_keeps_the_model_digest_when_the_run_name_is_long() -> None:
    from synthmed.catalogue.dicom import series_description

    text = series_description({"run_dir": "/runs/" + "x" * 100, "diffusion_sha256": DIFF_2D})
    assert len(text) == 64 and text.startswith("SYNTHETIC synthmed xxx") and text.endswith(DIFF_2D[:12])


def test_colour_exports_keep_rgb_in_every_format(catalogue: Catalogue, tmp_path: Path) -> None:
    approved = catalogue.approved("syn_colour")
    summary = catalogue.export(tmp_path / "png", "png", dataset="syn_colour")
    assert summary["cases"] == 2
    meta = json.loads((tmp_path / "png" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    for row in manifest(tmp_path / "png"):  # one RGB PNG per case, as nnU-Net reads natural images
        written = np.asarray(Image.open(tmp_path / "png" / row["file"]))
        assert np.array_equal(written, approved[int(row["sample_id"])]["pixels"])
    catalogue.export(tmp_path / "nii", "nifti", dataset="syn_colour")
    for row in manifest(tmp_path / "nii"):  # nnU-Net: one file per channel, <case>_0000 .. _0002
        photo = approved[int(row["sample_id"])]["pixels"]
        files = sorted((tmp_path / "nii" / "imagesTr").glob(f"{row['case_id']}_000*.nii.gz"))
        assert [f.name[-11:] for f in files] == ["0000.nii.gz", "0001.nii.gz", "0002.nii.gz"]
        for c, f in enumerate(files):
            assert np.array_equal(np.asanyarray(nib.load(f).dataobj)[:, :, 0].T, photo[..., c])
        assert row["file"].endswith("_000*.nii.gz") and len(row["sha256"]) == 64
    catalogue.export(tmp_path / "dcm", "dicom", dataset="syn_colour")
    for row in manifest(tmp_path / "dcm"):
        ds = pydicom.dcmread(tmp_path / "dcm" / row["file"])
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        assert np.array_equal(ds.pixel_array, approved[int(row["sample_id"])]["pixels"])
        assert ds.SyntheticData == "YES"
    with pytest.raises(SynthmedError, match=r"(grey among colour|colour among grey) samples"):
        catalogue.export(tmp_path / "mixed", "png", dataset="syn_mixed")
