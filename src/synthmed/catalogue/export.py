"""Export the approved synthetic samples as a training corpus (``synthmed export``).

Layout (Medical Segmentation Decathlon / nnU-Net v2): ``imagesTr/<case>_0000<ending>`` (first channel),
``labelsTr/<case><ending>`` for samples with a mask or label map, ``dataset.json`` and ``manifest.csv``
(provenance of every case); ``dataset.json``'s ``channel_names`` has one entry per channel. Formats:

- png: 2D only; 8- or 16-bit greyscale as the source (other pixel types are scaled to 16 bits), or 8-bit RGB
  for colour (one file, as nnU-Net reads natural images); masks 0/1.
- nifti: ``.nii.gz``; a 2D image is a one-slice volume (x = column, y = row, unit spacing, as ITK and MONAI
  read PNGs); a 3D volume keeps its values and affine. Colour: one file per channel (``_0000``, ``_0001``,
  ``_0002``: red, green, blue), nnU-Net's layout for several channels; so are the contrasts of a
  multi-channel volume (named in ``channel_names`` as the run's ``data.channel_names``).
- dicom: Secondary Capture images (colour: photometric interpretation RGB) built by highdicom with new UIDs,
  placeholder patient attributes that say synthetic (nothing is copied from any source file), Synthetic Data
  (0008,001C) = YES, Conversion Type SYN and a series description naming the model. Masks and label maps
  are DICOM Segmentation objects (highdicom) referencing the images.

Before anything is written, every sample proves again that it is synthetic (synthmed.catalogue.provenance:
file unchanged, of its kind, its row's sha256 and weights, a fresh random sample regenerated bit for bit);
likely copies of training images are refused. The export is written to a staging folder beside ``out`` and
moved in only when every case succeeded; ``out`` may not lie inside a catalogued data set, and a previous
export there is moved aside (``<out>.replaced-<UTC time>-<random>``), never deleted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.artifacts.files import file_sha256
from synthmed.catalogue.cases import Case, read_case
from synthmed.catalogue.dicom import write_dicom
from synthmed.catalogue.importer import CatalogueWarning
from synthmed.catalogue.models import Dataset, Sample
from synthmed.catalogue.provenance import verify_catalogued
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
        rows, models, highest, channels = [], [], 0, set[int]()
        for sample in samples:  # one at a time: only the current case's pixels are in memory
            case = read_case(session, sample, dims)
            channels.add(_channels(case, channels))
            rows.append(_write_case(staging, fmt, case))
            models.append(case.model)
            highest = max(highest, int(case.mask.max()) if case.mask is not None and case.mask.size else 0)
        meta = _dataset_json(rows, models, highest, fmt, dims, dataset, channels.pop())
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


def _channels(case: Case, seen: set[int]) -> int:
    """The case's channel count; a corpus mixing channel counts (grey and colour) is refused (nnU-Net
    needs one)."""
    colour = case.image.ndim == 3 and case.affine is None
    count = 3 if colour else case.image.shape[3] if case.image.ndim == 4 else 1
    if seen and count not in seen:
        where = Path(case.sample.dataset.root) / case.sample.path
        raise SynthmedError(
            f"is {_kind(count)} among {_kind(next(iter(seen)))} samples; a training corpus holds one kind: "
            "export one data set at a time with --dataset NAME",
            path=where,
        )
    return count


def _kind(channels: int) -> str:
    return {1: "grey", 3: "colour"}.get(channels, f"{channels}-channel")


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
        nearest = [(s, (s.copy_check or {})["nearest_train"]) for s in copies[:20]]
        listing = "; ".join(
            f"{Path(s.dataset.root) / s.path} (nearest training image {n})" for s, n in nearest
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
        if case.image.ndim == (3 if case.affine is None else 4):  # channels: the others' files beside it
            image_rel = image_rel.removesuffix(f"_0000{ending}") + f"_000*{ending}"
    else:
        if case.image.ndim == 4:
            raise SynthmedError(
                "a multi-channel volume has no DICOM Secondary Capture form here; export it with "
                "--format nifti (one file per channel)",
                path=Path(case.sample.dataset.root) / case.sample.path,
            )
        if case.affine is not None:
            image_rel = image_rel.removesuffix(ending)  # a 3D volume: a folder of slices
        write_dicom(case, staging / image_rel, staging / mask_rel if mask_rel else None)
    return _manifest_row(case, staging, image_rel, mask_rel)


def _write_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")  # a fresh PNG: no metadata chunks from the source


def _write_nifti(case: Case, image_path: Path, mask_path: Path | None) -> None:
    if case.affine is None:  # 2D: (rows, columns) -> (x = column, y = row, one slice)
        channels = case.image[..., None] if case.image.ndim == 2 else case.image
        images = [channels[..., c].T[:, :, None] for c in range(channels.shape[-1])]
        affine = np.eye(4)
        mask = case.mask.T[:, :, None] if case.mask is not None else None
    else:  # 3D: (x, y, z), or one file per channel of (x, y, z, c)
        channels = case.image[..., None] if case.image.ndim == 3 else case.image
        images = [channels[..., c] for c in range(channels.shape[-1])]
        mask, affine = case.mask, case.affine
    for c, image in enumerate(images):  # nnU-Net: <case>_0000, _0001, ... one channel each
        path = image_path.with_name(f"{case.case_id}_{c:04d}{ENDINGS['nifti']}")
        save_nifti(image, affine, path, dtype=image.dtype)
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
    """A file's sha256; a folder of DICOM slices, or the channel files ``<case>_000*`` of a colour case: the
    sha256 of its files' sha256s in name order."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(path.iterdir()) if path.is_dir() else sorted(path.parent.glob(path.name))
    return hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()


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
    channels: int = 1,
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
        "channel_names": _channel_names(models, channels, dims),
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


def _channel_names(models: list[dict[str, Any]], channels: int, dims: int = 2) -> dict[str, str]:
    """One entry per channel, as nnU-Net numbers the files: the modality for grey, R, G, B for colour, the
    run's channel (contrast) names for a multi-channel volume (else "0", "1", ...)."""
    if channels == 3 and dims == 2:
        return {"0": "R", "1": "G", "2": "B"}
    if channels == 1:
        return {"0": _channel_name(models)}
    names = {tuple(m["channel_names"]) for m in models if m.get("channel_names")}
    found = names.pop() if len(names) == 1 else ()
    return {str(c): found[c] if len(found) == channels else str(c) for c in range(channels)}


def _channel_name(models: list[dict[str, Any]]) -> str:
    """nnU-Net normalises a "CT" channel with data set statistics, anything else per image; a 3D run's
    config names its modality."""
    modalities = {str(model["modality"]).upper() for model in models if model["modality"]}
    return modalities.pop() if len(modalities) == 1 else "image"


# -- DICOM ---------------------------------------------------------------------------------------------
