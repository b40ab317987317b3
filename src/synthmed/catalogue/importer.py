"""Put images into the catalogue: a ``synthmed generate`` output folder (its manifest.jsonl, 2D or 3D) or a
folder of real images (class folders of 2D images, or NIfTI volumes).

Both imports are idempotent: a file already catalogued is left alone, so importing again adds only what is
new (e.g. images written by ``synthmed generate --from-requests``). A file whose content changed since it
was catalogued keeps its record (reviews and answers refer to the old content) and is reported with a
:class:`CatalogueWarning`; the CLI prints these.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.artifacts.manifest import MANIFEST, ManifestRow, read_manifest
from synthmed.artifacts.run import RunDir
from synthmed.catalogue.db import insert_or_ignore
from synthmed.catalogue.models import Dataset, GenerationRun, Sample, TrainedModel, utcnow
from synthmed.catalogue.provenance import COPY_PERCENTILE, Claim, Proof, mark_copy_check, prove
from synthmed.config import DataConfig, VolumeData, format_validation_error, read_yaml
from synthmed.data.masks import find_mask_files
from synthmed.data.readers import split_frame
from synthmed.data.sources import Skipped, discover, hash_file, refuse_links_leaving
from synthmed.data.volume_sets import _content_hash, class_roots
from synthmed.data.volumes import NIFTI_SUFFIXES, discover_volumes
from synthmed.errors import SynthmedError

# Generation settings summarised on the GenerationRun (one value, or the list of values seen).
RUN_SETTINGS = (
    "sampler",
    "steps",
    "guidance",
    "precision",
    "checkpoint",
    "device",
    "bit_depth",
    "privacy_filter",
    "condition",
    "conditioning_scale",
    "size",
    "spacing",
)


class CatalogueWarning(UserWarning):
    """A file the import left out or could not update (changed since it was catalogued, unreadable)."""


@dataclass
class Found:
    """One image to catalogue, its paths relative to the data set's root."""

    path: str
    label: str
    sha256: str
    mask_path: str | None = None
    seed: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def import_generation(
    session: Session,
    out_dir: Path,
    name: str | None = None,
    *,
    verify_all: bool = False,
    copy_percentile: float | None = COPY_PERCENTILE,
) -> GenerationRun:
    """Catalogue a ``synthmed generate`` output folder as a synthetic data set (named ``name``, default: the
    folder's name) with its trained model, its generation run and one sample per image written.

    Every new image must first prove it is what generation wrote (synthmed.catalogue.provenance: its kind,
    its row's sha256, the row's model weights, seeded regeneration of all of a small set or of a random
    sample, of all with ``verify_all``); one that cannot is refused, naming it, and nothing is catalogued.
    2D images are compared with the model's training images (``copy_percentile``; None: not): likely copies
    are marked."""
    out = _folder(out_dir)
    rows = _kept_rows(out / MANIFEST, out)
    run_dir, ae_sha, diffusion_sha = _one_model(rows, out / MANIFEST)
    first = rows[0][1]
    dims = 3 if first.file and first.file.endswith(NIFTI_SUFFIXES) else 2
    found = [_generated(out, raw, row) for raw, row in rows]
    catalogued = session.scalar(select(Dataset).where(Dataset.root == str(out)))
    known = {s.path for s in catalogued.samples} if catalogued is not None else set()
    claims = [
        Claim(out / item.path, item.path, item.provenance, dims) for item in found if item.path not in known
    ]
    # The slow proof first, before anything is written (a SQLite writer would block the web app meanwhile).
    proof = prove(claims, everything=verify_all, copy_percentile=copy_percentile) if claims else Proof()
    model = _trained_model(session, run_dir, ae_sha, diffusion_sha)
    dataset = _dataset(session, name, out, "synthetic", dims)
    run = session.scalar(select(GenerationRun).where(GenerationRun.dataset_id == dataset.id))
    if run is None:
        run = GenerationRun(model_id=model.id, dataset_id=dataset.id, out_dir=str(out))
        session.add(run)
    elif run.model_id != model.id:
        raise SynthmedError(
            f"the catalogue holds this folder's images from another trained model (id {run.model_id}); "
            "write new images to a new folder",
            path=out,
        )
    run.settings = _settings([raw for raw, _ in rows])
    session.flush()
    _add_samples(session, dataset, found, run.id, proof)
    return run


def import_real(
    session: Session, folder: Path, name: str, *, spatial_dims: Literal[2, 3] | None = None
) -> Dataset:
    """Catalogue a folder of real images as data set ``name``: class folders of 2D images (masks beside
    them as BUSI has them), or NIfTI volumes (with their label maps; class sub-folders of volumes, or one
    folder of volumes). ``spatial_dims`` None: 3D when the folder holds NIfTI files. Symbolic links that
    lead out of the folder are refused."""
    root = _folder(folder)
    refuse_links_leaving(root)  # images, masks and volumes alike
    dims = spatial_dims or (3 if _has_nifti(root) else 2)
    found, skipped = _real_volumes(root) if dims == 3 else _real_images(root)
    dataset = _dataset(session, name, root, "real", dims)
    for item in skipped:
        warnings.warn(f"{root / item.source}: left out ({item.reason})", CatalogueWarning, stacklevel=2)
    _add_samples(session, dataset, found, None)
    return dataset


def _folder(path: Path) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise SynthmedError("not a folder (give the folder that holds the images)", path=path)
    return path


def _kept_rows(manifest: Path, out: Path) -> list[tuple[dict[str, Any], ManifestRow]]:
    """The manifest's rows with an image, the last row per file (a resumed job may repeat a file); checks
    that every file they name is inside ``out`` and exists."""
    if not manifest.is_file():
        raise SynthmedError(
            f"no {MANIFEST}: not an output folder of synthmed generate (import real images with "
            "synthmed catalogue import-real)",
            path=manifest.parent,
        )
    latest: dict[str, tuple[dict[str, Any], ManifestRow]] = {}
    for i, raw in enumerate(read_manifest(manifest), 1):
        row = _parse_row(raw, i, manifest)
        if row.file is None:  # dropped by the privacy filter: no image
            continue
        for rel in (row.file, row.annotation, row.label_file):
            if rel is not None:
                _existing_file(out, rel, f"row {i}", manifest)
        latest[row.file] = (raw, row)
    if not latest:
        raise SynthmedError("lists no written images (every row was dropped, or it is empty)", path=manifest)
    return list(latest.values())


def _parse_row(raw: Any, i: int, manifest: Path) -> ManifestRow:
    if not isinstance(raw, dict):
        raise SynthmedError(
            f"row {i} is not a JSON object; restore the manifest synthmed wrote", path=manifest
        )
    try:
        return ManifestRow.model_validate(raw)
    except ValidationError as exc:
        raise SynthmedError(format_validation_error(exc, f"{manifest} row {i}")) from exc


def _existing_file(root: Path, rel: str, where: str, listing: Path) -> Path:
    """``root / rel``, refused when it lies outside ``root`` (a hostile manifest) or does not exist."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise SynthmedError(f"{where} names {rel!r}, outside the folder {root}", path=listing)
    if not path.is_file():
        raise SynthmedError(
            f"{where} lists this file but it does not exist; restore it, or remove the row from {listing}",
            path=path,
        )
    return path


def _one_model(rows: list[tuple[dict[str, Any], ManifestRow]], manifest: Path) -> tuple[str, str, str]:
    """The run folder and weight checksums of the one trained model that made every image."""
    models = {(r.run_dir, r.autoencoder_sha256, r.diffusion_sha256) for _, r in rows}
    if len(models) > 1:
        raise SynthmedError(
            f"its images come from {len(models)} different trained models or weights; a catalogued "
            "generation run has one: generate into one folder per model",
            path=manifest,
        )
    return models.pop()


def _trained_model(session: Session, run_dir: str, ae_sha: str, diffusion_sha: str) -> TrainedModel:
    """The trained model found by run folder and weights, or added (its weights were checked by prove)."""
    query = select(TrainedModel).where(
        TrainedModel.run_dir == run_dir, TrainedModel.diffusion_sha256 == diffusion_sha
    )
    model = session.scalar(query)
    if model is None:
        config = RunDir(Path(run_dir)).config
        settings = read_yaml(config) if config.is_file() else {}
        # Two workers importing outputs of one model at once: one row wins, both use it.
        row = {"run_dir": run_dir, "autoencoder_sha256": ae_sha, "diffusion_sha256": diffusion_sha}
        insert_or_ignore(session, TrainedModel, row | {"config": settings}, ["run_dir", "diffusion_sha256"])
        model = session.scalars(query).one()
    if model.autoencoder_sha256 != ae_sha:
        raise SynthmedError(
            f"the catalogue knows this model with autoencoder sha256 {model.autoencoder_sha256[:12]}..., the "
            f"manifest names {ae_sha[:12]}...: these images were not made with the catalogued weights",
            path=RunDir(Path(run_dir)).weights("autoencoder"),
        )
    return model


def _dataset(session: Session, name: str | None, root: Path, origin: str, dims: int) -> Dataset:
    """The data set of folder ``root`` (reused on a re-import), or a new one named ``name`` or the folder."""
    existing = session.scalar(select(Dataset).where(Dataset.root == str(root)))
    if existing is not None:
        if existing.origin != origin or existing.spatial_dims != dims or name not in (None, existing.name):
            raise SynthmedError(
                f"this folder is already catalogued as the {existing.spatial_dims}D {existing.origin} data "
                f"set {existing.name!r}; import it under that name",
                path=root,
            )
        return existing
    name = name or root.name
    clash = session.scalar(select(Dataset).where(Dataset.name == name))
    if clash is not None:
        raise SynthmedError(
            f"a data set named {name!r} already exists (folder {clash.root}); choose another with --name",
            field="name",
        )
    dataset = Dataset(name=name, origin=origin, root=str(root), spatial_dims=dims)
    session.add(dataset)
    session.flush()
    return dataset


def _settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    settings = {}
    for key in RUN_SETTINGS:
        seen = {json.dumps(r[key], sort_keys=True) for r in rows if key in r}
        values = [json.loads(v) for v in sorted(seen)]
        if values:
            settings[key] = values[0] if len(values) == 1 else values
    return settings


def _generated(out: Path, raw: dict[str, Any], row: ManifestRow) -> Found:
    assert row.file is not None
    mask = row.label_file or (row.annotation if row.condition == "mask" else None)
    return Found(
        path=row.file,
        label=row.label or "unconditional",  # as the generator names its folder
        sha256=hash_file(out / row.file),
        mask_path=mask,
        seed=row.seed,
        provenance=raw,
    )


def _add_samples(
    session: Session, dataset: Dataset, found: list[Found], run_id: int | None, proof: Proof | None = None
) -> None:
    """Add the samples not catalogued yet (synthetic: with what ``proof`` found); warn about catalogued
    files whose content changed."""
    known = {s.path: s.sha256 for s in session.scalars(select(Sample).where(Sample.dataset_id == dataset.id))}
    now = utcnow()
    for item in found:
        old = known.get(item.path)
        if old is None:
            sample = Sample(
                dataset_id=dataset.id,
                generation_run_id=run_id,
                path=item.path,
                mask_path=item.mask_path,
                label=item.label,
                sha256=item.sha256,
                seed=item.seed,
                provenance=item.provenance,
            )
            if proof is not None:
                path = Path(dataset.root) / item.path
                sample.verified = now
                sample.regenerated = now if path in proof.regenerated else None
                mark_copy_check(sample, proof.copy_checks.get(path))
            session.add(sample)
        elif old != item.sha256:
            warnings.warn(
                f"{Path(dataset.root) / item.path}: changed since it was catalogued (sha256 {old[:12]}..., "
                f"now {item.sha256[:12]}...); the catalogue keeps the old record: restore the file, or "
                "import the folder under a new name",
                CatalogueWarning,
                stacklevel=3,
            )
    session.flush()


def _has_nifti(root: Path) -> bool:
    """NIfTI files in the folder, its class folders, or their images/ folders."""
    return any(
        p.name.lower().endswith(NIFTI_SUFFIXES)
        for pattern in ("*", "*/*", "*/*/*")
        for p in root.glob(pattern)
    )


def _real_images(root: Path) -> tuple[list[Found], list[Skipped]]:
    found = discover(DataConfig(source=root, allow_single_class=True))
    items, skipped = [], list(found.skipped)
    for record in found.records:
        file, frame = split_frame(record.source)
        if frame is not None:  # the catalogue and the review app show single images
            if frame == 1:
                reason = "multi-frame DICOM: the catalogue holds single images, so export its frames as files"
                skipped.append(Skipped(file, reason, record.label))
            continue
        masks = [m.relative_to(root).as_posix() for m in find_mask_files(root / record.source)]
        provenance = {"masks": masks} if len(masks) > 1 else {}  # several lesions: every mask file
        mask = masks[0] if masks else None
        items.append(Found(record.source, record.label, record.sha256, mask, provenance=provenance))
    return items, skipped


def _real_volumes(root: Path) -> tuple[list[Found], list[Skipped]]:
    """Volumes with their label maps; a folder of volumes is one class (named like training names it)."""
    items, skipped = [], []
    for label, folder in class_roots(DataConfig(source=root, volume=VolumeData())).items():
        found = discover_volumes(folder)
        for pair in found.pairs:
            rel = pair.image.relative_to(root).as_posix()
            mask = pair.label.relative_to(root).as_posix() if pair.label else None
            # one 3D file per contrast: the further ones, so the review app shows every contrast
            contrasts = [c.relative_to(root).as_posix() for c in pair.contrasts]
            provenance = {"contrasts": contrasts} if contrasts else {}
            items.append(Found(rel, label, _content_hash(pair), mask, provenance=provenance))
        prefix = folder.relative_to(root)
        skipped += [Skipped((prefix / s.source).as_posix(), s.reason) for s in found.skipped]
    return items, skipped
