"""Export the approved synthetic samples as a training corpus (``synthmed export``).

Layout (Medical Segmentation Decathlon / nnU-Net v2): ``imagesTr/<case>_0000<ending>`` (one channel),
``labelsTr/<case><ending>`` for samples with a mask or label map, ``dataset.json`` and ``manifest.csv``
(provenance of every case). Formats:

- png: 2D only; 8- or 16-bit greyscale as the source (other pixel types are scaled to 16 bits); masks 0/1.
- nifti: ``.nii.gz``; a 2D image is a one-slice volume (x = column, y = row, unit spacing, as ITK and MONAI
  read PNGs); a 3D volume keeps its values and affine.
- dicom: Secondary Capture images built by highdicom with new UIDs, placeholder patient attributes that say
  synthetic (nothing is copied from any source file), Synthetic Data (0008,001C) = YES, Conversion Type SYN
  and a series description naming the model. Masks and label maps are DICOM Segmentation objects
  (highdicom) referencing the images.

Before anything is written, every sample proves again that it is synthetic (synthmed.catalogue.provenance:
file unchanged, of its kind, its row's sha256 and weights, a fresh random sample regenerated bit for bit);
likely copies of training images are refused. The export is written to a staging folder beside ``out`` and
moved in only when every case succeeded; ``out`` may not lie inside a catalogued data set, and a previous
export there is moved aside (``<out>.replaced-<UTC time>-<random>``), never deleted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.valuerep import format_number_as_ds
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.artifacts.files import file_sha256
from synthmed.catalogue.importer import CatalogueWarning
from synthmed.catalogue.models import Dataset, GenerationRun, Sample
from synthmed.catalogue.provenance import inside_folder, verify_catalogued
from synthmed.data.readers import DICOM_EXTENSIONS, has_dicom_magic, read_bytes, validate_array
from synthmed.data.volumes import save_nifti
from synthmed.errors import SynthmedError
from synthmed.version import __version__

Format = Literal["png", "nifti", "dicom"]
ENDINGS: dict[str, str] = {"png": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}
OUTPUTS = ("imagesTr", "labelsTr", "dataset.json", "manifest.csv")  # what --overwrite moves aside
SETTINGS = (
    "sampler",
    "steps",
    "guidance",
    "checkpoint",
    "precision",
    "conditioning_scale",
    "condition_sha256",
)
MANIFEST_FIELDS = (
    "case_id",
    "file",
    "mask_file",
    "label",
    "seed",
    "sample_id",
    "dataset",
    "model_run",
    "autoencoder_sha256",
    "diffusion_sha256",
    "controlnet_sha256",
    *SETTINGS,
    "generator_version",
    "source_sha256",
    "sha256",
    "mask_sha256",
)
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_UINT16_TOP = 65535


@dataclass
class Case:
    """One approved sample, read: pixel values, its geometry (3D) and its mask or label map."""

    case_id: str
    sample: Sample
    model: dict[str, Any]
    image: np.ndarray  # 2D (rows, columns) uint8/uint16; 3D (x, y, z) as stored in the source
    affine: np.ndarray | None  # 3D voxel -> RAS mm
    mask: np.ndarray | None  # 2D 0/1 uint8; 3D integer label map on the image's grid


def export_approved(
    session: Session, out: Path, fmt: Format, *, dataset: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Write the synthetic samples whose review_state is "approved" to ``out``; returns a summary."""
    if fmt not in ENDINGS:
        raise SynthmedError(f"unknown export format {fmt!r}; choose png, nifti or dicom", field="format")
    samples = _approved(session, dataset)
    dims = _spatial_dims(samples, fmt)
    out = Path(out).absolute()  # "." has no name to put the staging folder beside
    _check_out(session, out, overwrite)
    _refuse_copies(samples)
    verify_catalogued(session, samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        rows, models, highest = [], [], 0
        for sample in samples:  # one at a time: only the current case's pixels are in memory
            case = _read_case(session, sample, dims)
            rows.append(_write_case(staging, fmt, case))
            models.append(case.model)
            highest = max(highest, int(case.mask.max()) if case.mask is not None and case.mask.size else 0)
        meta = _dataset_json(rows, models, highest, fmt, dims, dataset)
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        _write_manifest(staging / "manifest.csv", rows)
        _publish(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "out": str(out),
        "format": fmt,
        "cases": len(rows),
        "labelled": sum(bool(row["mask_file"]) for row in rows),
        "classes": dict(Counter(row["label"] for row in rows)),
        "models": meta["models"],
    }


def _approved(session: Session, name: str | None) -> list[Sample]:
    query = select(Sample).join(Sample.dataset).where(Dataset.origin == "synthetic")
    if name is not None:
        found = session.scalar(select(Dataset).where(Dataset.name == name))
        if found is None:
            names = session.scalars(select(Dataset.name).where(Dataset.origin == "synthetic")).all()
            raise SynthmedError(
                f"no data set named {name!r}; synthetic data sets: {sorted(names)}", field="dataset"
            )
        if found.origin != "synthetic":
            raise SynthmedError(
                f"{name!r} is a real data set; only synthetic samples are exported", field="dataset"
            )
        query = query.where(Dataset.id == found.id)
    samples = list(session.scalars(query.where(Sample.review_state == "approved").order_by(Sample.id)))
    if not samples:
        where = f" in data set {name!r}" if name else ""
        raise SynthmedError(
            f"no approved synthetic samples{where}; approve samples in the review app (synthmed serve) first",
            field="dataset",
        )
    return samples


def _spatial_dims(samples: list[Sample], fmt: Format) -> int:
    by_dims: dict[int, set[str]] = {}
    for sample in samples:
        by_dims.setdefault(sample.dataset.spatial_dims, set()).add(sample.dataset.name)
    if len(by_dims) > 1:
        listing = "; ".join(f"{dims}D: {', '.join(sorted(names))}" for dims, names in sorted(by_dims.items()))
        raise SynthmedError(
            f"the approved samples mix 2D and 3D data sets ({listing}); a training corpus holds one kind: "
            "export one data set at a time with --dataset NAME",
            field="dataset",
        )
    dims = next(iter(by_dims))
    if dims not in (2, 3):
        raise SynthmedError(f"data sets of {dims} spatial dimensions cannot be exported", field="dataset")
    if dims == 3 and fmt == "png":
        raise SynthmedError(
            "PNG holds 2D images only; export 3D volumes with --format nifti or dicom", field="format"
        )
    return dims


def _check_out(session: Session, out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthmedError("exists and is not a folder; choose a folder for the export", path=out)
    resolved = out.resolve()
    for name, root in session.execute(select(Dataset.name, Dataset.root)):
        folder = Path(root).resolve()
        # Inside a data set the export would mix with its files; a data set inside what --overwrite moves
        # aside would lose its files.
        if resolved.is_relative_to(folder) or any(folder.is_relative_to(resolved / o) for o in OUTPUTS):
            raise SynthmedError(
                f"overlaps the catalogued data set {name!r} ({folder}); export to a folder outside every "
                "catalogued data set",
                path=out,
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthmedError(
            "the output folder is not empty; choose an empty or new folder, or pass --overwrite (moves "
            f"{', '.join(OUTPUTS)} there aside into a timestamped folder beside it and keeps anything else)",
            path=out,
        )


def _refuse_copies(samples: list[Sample]) -> None:
    copies = [s for s in samples if s.likely_copy]
    if copies:
        listing = "; ".join(
            f"{Path(s.dataset.root) / s.path} (nearest training image {s.copy_check['nearest_train']})"
            for s in copies[:20]
        )
        raise SynthmedError(
            f"{len(copies)} approved sample(s) are likely copies of the model's training images, so nothing "
            f"was exported: {listing}. Reject them in the review app (synthmed serve)",
            field="dataset",
        )


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    previous = [out / name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    if overwrite and previous:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = Path(tempfile.mkdtemp(prefix=f"{out.name}.replaced-{stamp}-", dir=out.parent))
        for path in previous:
            path.replace(aside / path.name)
        warnings.warn(
            f"{out}: the previous export ({', '.join(p.name for p in previous)}) was moved to {aside}",
            CatalogueWarning,
            stacklevel=3,
        )
    for name in OUTPUTS:
        (staging / name).replace(out / name)


# -- reading -------------------------------------------------------------------------------------------


def _read_case(session: Session, sample: Sample, dims: int) -> Case:
    root = Path(sample.dataset.root)
    path = inside_folder(root, sample.path)
    mask_path = inside_folder(root, sample.mask_path) if sample.mask_path else None
    case_id = f"synthmed_{sample.id:06d}"
    model = _model(session, sample)
    if dims == 2:
        image = _read_2d(path)
        mask = None
        if mask_path is not None:
            mask = (_read_2d(mask_path) > 0).astype(np.uint8)
            _same_shape(mask.shape, image.shape, mask_path)
        return Case(case_id, sample, model, image, None, mask)
    image, affine = _read_volume(path)
    label = None
    if mask_path is not None:
        label, label_affine = _read_volume(mask_path)
        _same_shape(label.shape, image.shape, mask_path)
        if not np.allclose(label_affine, affine, atol=1e-3):
            raise SynthmedError(
                "the label map's affine differs from its image's; they must share a grid", path=mask_path
            )
        label = _label_values(label, mask_path)
    return Case(case_id, sample, model, image, affine, label)


def _same_shape(mask: tuple[int, ...], image: tuple[int, ...], path: Path) -> None:
    if mask != image:
        raise SynthmedError(f"mask has shape {mask} but its image has {image}; they must match", path=path)


def _read_2d(path: Path) -> np.ndarray:
    """A 2D image as uint8 or uint16 greyscale, values as stored (DICOM: stored values, no LUTs)."""
    data = read_bytes(path)
    try:
        dicom = path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_magic(data)
        arr = _dicom_pixels(data, path) if dicom else _pil_pixels(data)
    except SynthmedError:
        raise
    except Exception as exc:  # any decoder failure on a damaged file becomes our one error type
        raise SynthmedError(f"cannot read the image ({type(exc).__name__}: {exc})", path=path) from exc
    return _unsigned(arr, path)[0]


def _pil_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
        if im.mode in ("L", "I", "F") or im.mode.startswith("I;16"):
            return np.asarray(im)
        return np.asarray(im.convert("L"))  # colour, palette, alpha: luminance, as synthmed trains on


def _dicom_pixels(data: bytes, path: Path) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SynthmedError("multi-frame DICOM; a 2D sample must be a single image", path=path)
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":  # low values bright: flip, since the export is MONOCHROME2
        arr = int(arr.max()) + int(arr.min()) - arr.astype(np.int64)
    return arr if arr.ndim == 2 else validate_array(arr, str(path))  # colour: luminance


def _unsigned(arr: np.ndarray, path: Path) -> tuple[np.ndarray, float, float]:
    """``arr`` as uint8/uint16 with (slope, intercept) such that source = stored * slope + intercept.

    PNG and Secondary Capture DICOM hold unsigned 8- or 16-bit pixels: those are kept exactly, other
    integers are shifted, and anything else is scaled linearly onto 0..65535.
    """
    if arr.ndim < 2 or arr.size == 0:
        raise SynthmedError(f"image has no pixels or too few dimensions (shape {arr.shape})", path=path)
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        return arr.astype(np.uint16 if arr.dtype.itemsize == 2 else np.uint8), 1.0, 0.0
    if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise SynthmedError(
            f"pixel values must be finite numbers (found {arr.dtype}, NaN or infinity)", path=path
        )
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind in "ui" and hi - lo <= _UINT16_TOP:
        shift = 0.0 if lo >= 0 and hi <= _UINT16_TOP else lo
        return (arr.astype(np.int64) - int(shift)).astype(np.uint16), 1.0, shift
    # Slope and intercept as DICOM writes them (decimal strings of 16 characters at most).
    slope, lo = float(format_number_as_ds((hi - lo) / _UINT16_TOP)) or 1.0, float(format_number_as_ds(lo))
    stored = np.clip(np.round((arr.astype(np.float64) - lo) / slope), 0, _UINT16_TOP)
    return stored.astype(np.uint16), slope, lo


def _read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)
    except FileNotFoundError as exc:
        raise SynthmedError("file not found", path=path) from exc
    except Exception as exc:  # nibabel raises many types for damaged files
        raise SynthmedError(f"not a readable NIfTI volume ({type(exc).__name__}: {exc})", path=path) from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.size == 0:
        raise SynthmedError(f"expected a 3D volume, got shape {arr.shape}", path=path)
    return arr, np.asarray(img.affine, dtype=np.float64)


def _label_values(label: np.ndarray, path: Path) -> np.ndarray:
    if (
        not (np.isfinite(label).all() and np.array_equal(label, np.round(label)))
        or not 0 <= label.min() <= label.max() < 2**16
    ):
        raise SynthmedError("a label map must hold integer labels 0..65535", path=path)
    return label.astype(np.uint8 if label.max() < 256 else np.uint16)


def _model(session: Session, sample: Sample) -> dict[str, Any]:
    """The model that generated the sample: its generation run's, else its manifest row's record."""
    prov = sample.provenance or {}
    run = session.get(GenerationRun, sample.generation_run_id) if sample.generation_run_id else None
    if run is not None:
        model = run.model
        volume = (model.config or {}).get("data", {}).get("volume") or {}
        return {
            "run_dir": model.run_dir,
            "autoencoder_sha256": model.autoencoder_sha256,
            "diffusion_sha256": model.diffusion_sha256,
            "modality": volume.get("modality"),
            "settings": run.settings or {},
        }
    keys = ("run_dir", "autoencoder_sha256", "diffusion_sha256")
    return {key: prov.get(key) for key in keys} | {"modality": None, "settings": {}}


# -- writing -------------------------------------------------------------------------------------------


def _write_case(staging: Path, fmt: Format, case: Case) -> dict[str, Any]:
    ending = ENDINGS[fmt]
    image_rel = f"imagesTr/{case.case_id}_0000{ending}"
    mask_rel = f"labelsTr/{case.case_id}{ending}" if case.mask is not None else ""
    if fmt == "png":
        _write_png(case.image, staging / image_rel)
        if case.mask is not None:
            _write_png(case.mask, staging / mask_rel)
    elif fmt == "nifti":
        _write_nifti(case, staging / image_rel, staging / mask_rel if mask_rel else None)
    else:
        if case.affine is not None:
            image_rel = image_rel.removesuffix(ending)  # a 3D volume: a folder of slices
        _write_dicom(case, staging / image_rel, staging / mask_rel if mask_rel else None)
    return _manifest_row(case, staging, image_rel, mask_rel)


def _write_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")  # a fresh PNG: no metadata chunks from the source


def _write_nifti(case: Case, image_path: Path, mask_path: Path | None) -> None:
    if case.affine is None:  # 2D: (rows, columns) -> (x = column, y = row, one slice)
        image, affine = case.image.T[:, :, None], np.eye(4)
        mask = case.mask.T[:, :, None] if case.mask is not None else None
    else:
        image, mask, affine = case.image, case.mask, case.affine
    save_nifti(image, affine, image_path, dtype=image.dtype)
    if mask is not None and mask_path is not None:
        save_nifti(mask, affine, mask_path, dtype=mask.dtype)


def _manifest_row(case: Case, staging: Path, image_rel: str, mask_rel: str) -> dict[str, Any]:
    sample, model = case.sample, case.model
    prov = sample.provenance or {}
    row: dict[str, Any] = {"case_id": case.case_id, "file": image_rel, "mask_file": mask_rel}
    row |= {
        "label": sample.label,
        "seed": sample.seed,
        "sample_id": sample.id,
        "dataset": sample.dataset.name,
    }
    row |= {"model_run": model["run_dir"], "autoencoder_sha256": model["autoencoder_sha256"]}
    row |= {"diffusion_sha256": model["diffusion_sha256"], "controlnet_sha256": prov.get("controlnet_sha256")}
    row |= {key: prov.get(key, model["settings"].get(key)) for key in SETTINGS}
    row |= {"generator_version": prov.get("synthmed_version"), "source_sha256": sample.sha256}
    row["sha256"] = _sha256(staging / image_rel)
    row["mask_sha256"] = _sha256(staging / mask_rel) if mask_rel else ""
    return row


def _sha256(path: Path) -> str:
    """A file's sha256; a folder of DICOM slices: the sha256 of its files' sha256s in name order."""
    if path.is_file():
        return file_sha256(path)
    return hashlib.sha256("".join(file_sha256(p) for p in sorted(path.iterdir())).encode()).hexdigest()


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _dataset_json(
    rows: list[dict[str, Any]],
    models: list[dict[str, Any]],
    highest: int,
    fmt: Format,
    dims: int,
    name: str | None,
) -> dict[str, Any]:
    """nnU-Net v2 fields (channel_names, labels, numTraining, file_ending) plus provenance and classes."""
    unique = _unique_models(models)
    labels = {"background": 0}
    if dims == 2 and any(row["mask_file"] for row in rows):
        labels["foreground"] = 1  # 2D masks are binary
    else:
        labels |= {f"label_{value}": value for value in range(1, highest + 1)}  # nnU-Net: consecutive values
    return {
        "name": f"synthmed_{name or 'approved'}",
        "description": f"Synthetic {dims}D images generated by synthmed with {_describe_models(unique)}; "
        "approved in physician review. Not images of real patients.",
        "synthetic": True,
        "synthmed_version": __version__,
        "tensorImageSize": f"{dims}D",
        "channel_names": {"0": _channel_name(models)},
        "labels": labels,
        "numTraining": len(rows),
        "file_ending": ENDINGS[fmt],
        "class_labels": {row["case_id"]: row["label"] for row in rows},
        "models": unique,
    }


def _unique_models(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("run_dir", "autoencoder_sha256", "diffusion_sha256")
    unique = {tuple(model[key] for key in keys) for model in models}
    return [dict(zip(keys, values, strict=True)) for values in sorted(unique, key=str)]


def _describe_models(models: list[dict[str, Any]]) -> str:
    return "; ".join(_model_name(model) for model in models)


def _model_name(model: dict[str, Any]) -> str:
    run = Path(model["run_dir"]).name if model.get("run_dir") else "an unrecorded run"
    digest = model.get("diffusion_sha256")
    return f"model {run} (diffusion sha256 {digest[:12]})" if digest else f"model {run}"


def _channel_name(models: list[dict[str, Any]]) -> str:
    """nnU-Net normalises a "CT" channel with data set statistics, anything else per image; a 3D run's
    config names its modality."""
    modalities = {str(model["modality"]).upper() for model in models if model["modality"]}
    return modalities.pop() if len(modalities) == 1 else "image"


# -- DICOM ---------------------------------------------------------------------------------------------


def _write_dicom(case: Case, image_path: Path, seg_path: Path | None) -> None:
    common = _dicom_common(case)
    if case.affine is None:
        images = [_sc_image(case.image, (1.0, 0.0), 1, common, orientation=None)]
        images[0].save_as(image_path, enforce_file_format=True)
        seg_pixels = case.mask
    else:
        images = _volume_slices(case, common)
        image_path.mkdir()
        for k, image in enumerate(images):
            image.save_as(image_path / f"slice_{k:04d}.dcm", enforce_file_format=True)
        seg_pixels = case.mask.transpose(2, 1, 0) if case.mask is not None else None
    if seg_path is not None and seg_pixels is not None:
        _segmentation(images, seg_pixels, case, common).save_as(seg_path, enforce_file_format=True)


def _dicom_common(case: Case) -> dict[str, Any]:
    """Attributes of every object of a case (new UIDs; placeholders that say synthetic; synthmed as the
    device), passed to highdicom."""
    version = __version__
    return {
        "manufacturer": "synthmed",
        "manufacturer_model_name": f"synthmed {version}",
        "software_versions": version,
        "series_description": _series_description(case.model),
        "patient_id": f"SYNTHETIC-{case.sample.id}",
        "patient_name": f"SYNTHETIC^{case.case_id}",
        "study_id": "SYNTHETIC",
        "study_instance_uid": hd.UID(),
        "series_instance_uid": hd.UID(),
    }


def _series_description(model: dict[str, Any]) -> str:
    """The model in 64 characters (a DICOM LO value): SYNTHETIC synthmed, the run folder's name (cut to
    fit) and the diffusion weights' sha256 prefix."""
    digest = (model.get("diffusion_sha256") or "unknown")[:12]
    run = Path(model["run_dir"]).name if model.get("run_dir") else "unrecorded-run"
    prefix = "SYNTHETIC synthmed "
    return f"{prefix}{run[: 64 - len(prefix) - len(digest) - 1]} {digest}"


def _sc_image(
    stored: np.ndarray,
    rescale: tuple[float, float],
    number: int,
    common: dict[str, Any],
    orientation: tuple[str, str] | None,
) -> Any:
    """One Secondary Capture image of uint8/uint16 ``stored`` pixels (source = stored * slope + intercept)."""

    image = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(stored),
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8 if stored.dtype == np.uint8 else 16,
        coordinate_system="PATIENT",
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=number,
        patient_orientation=orientation or ("L", "F"),
        **common,
    )
    if orientation is None:
        image.PatientOrientation = ""  # a generated 2D image's orientation is unknown (Type 2: empty)
    image.SyntheticData = "YES"
    image.ConversionType = "SYN"  # Secondary Capture conversion type: synthetic image
    image.BurnedInAnnotation = "NO"
    image.ImageComments = "Synthetic image generated by synthmed; not an image of a real patient"
    if rescale != (1.0, 0.0):
        image.RescaleSlope, image.RescaleIntercept, image.RescaleType = *rescale, "US"
    return image


def _volume_slices(case: Case, common: dict[str, Any]) -> list[Any]:
    """One Secondary Capture image per axial slice, with the plane geometry of the NIfTI affine.

    highdicom builds Secondary Capture images single-frame only, and the enhanced multi-frame IODs need
    acquisition attributes a generated volume does not have; a slice series is what every viewer and
    converter (e.g. dcm2niix) stacks back into the volume.
    """

    # Scale the whole volume once, so every slice shares one rescale slope and intercept.
    stored, *rescale = _unsigned(case.image, Path(case.sample.path))
    volume = hd.Volume.from_nibabel(nib.Nifti1Image(stored, case.affine))
    volume = volume.permute_spatial_axes([2, 1, 0])  # frames along z, rows along y, columns along x
    closest = volume.get_closest_patient_orientation()
    orientation = (closest[2].value, closest[1].value)  # directions of a row and of a column
    plane, measures, frame = volume.get_plane_orientation()[0], volume.get_pixel_measures()[0], hd.UID()
    images = []
    for k, position in enumerate(volume.get_plane_positions()):
        image = _sc_image(volume.array[k], tuple(rescale), k + 1, common, orientation)
        image.FrameOfReferenceUID, image.PositionReferenceIndicator = frame, ""
        image.ImagePositionPatient = position[0].ImagePositionPatient
        image.ImageOrientationPatient = plane.ImageOrientationPatient
        image.PixelSpacing, image.SliceThickness = measures.PixelSpacing, measures.SliceThickness
        images.append(image)
    return images


def _segmentation(images: list[Any], pixels: np.ndarray, case: Case, common: dict[str, Any]) -> Any:
    # synthmed's 2D masks mark lesions (the mask ControlNet); 3D label maps mark anatomical structures.
    if case.affine is None:
        category, kind, names = (
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Lesion,
            {1: "foreground"},
        )
    else:
        category, kind = codes.SCT.AnatomicalStructure, codes.SCT.AnatomicalStructure
        names = {value: f"label_{value}" for value in range(1, max(int(pixels.max()), 1) + 1)}
    segments = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for value, label in names.items()
    ]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=common["manufacturer"],
        manufacturer_model_name=common["manufacturer_model_name"],
        software_versions=common["software_versions"],
        device_serial_number="synthmed",
        series_description=common["series_description"],
        omit_empty_frames=False,  # an empty mask (no lesion) is an annotation too
    )
    seg.SyntheticData = "YES"
    return seg
