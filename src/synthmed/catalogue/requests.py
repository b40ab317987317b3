"""Fulfil regeneration requests (``synthmed generate --from-requests``): a rejected synthetic sample is
generated again with the conditions recorded in its provenance (label, sampler, steps, guidance, precision,
condition file and scale; 3D: size, spacing, label-map source) and a seed not used in its output folder.

The new image goes into the same folder and manifest through the ordinary generation code, is imported as a
new sample of the same generation run, and the request records the new seed and sample. Requests of one
folder with the same conditions are generated together, so the model is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.manifest import MANIFEST, drop_cut_last_line, read_manifest
from synthmed.artifacts.run import RunDir
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.importer import import_generation
from synthmed.catalogue.models import RegenerationRequest, Sample, utcnow
from synthmed.config import GenerateConfig, format_validation_error
from synthmed.errors import SynthmedError
from synthmed.sampling.generate import generate_to_folder


@dataclass
class Job:
    """Open requests to generate together: one output folder, one set of generation settings."""

    cfg: GenerateConfig  # seed and count are set when the job runs
    dataset: str
    requests: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Fulfilled:
    request: int
    rejected_sample: int
    new_sample: int
    seed: int
    path: str  # relative to the output folder


def fulfil_requests(
    url: str | None = None, *, device: str = "auto", progress: bool = False
) -> list[Fulfilled]:
    """Generate and catalogue a replacement for every open request. Requests that cannot be fulfilled
    (missing or changed run, condition file) are reported together in one SynthmedError after the rest."""
    engine = make_engine(url)
    factory = session_factory(engine)
    try:
        with transaction(factory) as session:
            jobs, errors = _jobs(session, device)
        done = []
        for job in jobs:
            try:
                done += _run(factory, job, progress)
            except SynthmedError as exc:
                errors.append(f"requests {job.requests}: {exc}")
    finally:
        engine.dispose()
    if errors:
        raise SynthmedError(
            "some regeneration requests could not be fulfilled (the others were): " + " | ".join(errors)
        )
    return done


def _jobs(session: Session, device: str) -> tuple[list[Job], list[str]]:
    open_requests = session.scalars(
        select(RegenerationRequest)
        .where(RegenerationRequest.status == "open")
        .order_by(RegenerationRequest.id)
    )
    jobs: dict[str, Job] = {}
    errors = []
    hashes: dict[Path, str] = {}  # weights are hashed once, however many requests share them
    for request in open_requests:
        try:
            cfg = _config(request.sample, device, hashes)
        except SynthmedError as exc:
            errors.append(f"request {request.id}: {exc}")
            continue
        key = cfg.model_dump_json()
        jobs.setdefault(key, Job(cfg, request.sample.dataset.name)).requests.append(request.id)
    return list(jobs.values()), errors


def _config(sample: Sample, device: str, hashes: dict[Path, str] | None = None) -> GenerateConfig:
    """The generation settings of ``sample``'s manifest row (seed and count to be set), inputs checked
    (``hashes``: checksums of files already read)."""
    if sample.generation_run_id is None:
        raise SynthmedError(
            f"sample {sample.id} is not from a generation run; only synthetic ones regenerate"
        )
    row = sample.provenance
    try:
        _check_inputs(row, {} if hashes is None else hashes)
        values = {
            "run_dir": row["run_dir"],
            "out": sample.dataset.root,
            "label": row["label"],
            "steps": row["steps"],
            "guidance": row["guidance"],
            "sampler": row["sampler"],
            "checkpoint": row["checkpoint"],
            "precision": row["precision"],
            "device": device,
            "conditioning_scale": row.get("conditioning_scale", 1.0),
        }
        values |= _volume_settings(row) if "size" in row else _image_settings(row)
        return GenerateConfig.model_validate(values)
    except KeyError as exc:
        raise SynthmedError(
            f"sample {sample.id}: its provenance has no {exc} field", field="provenance"
        ) from exc
    except ValidationError as exc:
        raise SynthmedError(format_validation_error(exc, f"sample {sample.id} provenance")) from exc


def _image_settings(row: dict[str, Any]) -> dict[str, Any]:
    percentile = row.get("privacy_filter")
    return {
        "bit_depth": row.get("bit_depth", 8),
        "privacy_filter": percentile is not None,
        "copy_percentile": percentile or 99.0,
        "condition_file": row.get("condition_file"),
        "condition": row.get("condition"),
    }


def _volume_settings(row: dict[str, Any]) -> dict[str, Any]:
    """3D: the same label-map source (the same file, or a new draw from the run's training maps)."""
    keys = ("size", "spacing", "augment_label_maps", "tile_size", "tile_overlap", "qc_retries")
    return {k: row[k] for k in keys} | {"label_map": row["label_map"].get("file")}


def _check_inputs(row: dict[str, Any], hashes: dict[Path, str]) -> None:
    """Same weights and condition files as the rejected sample had (their checksums in its row)."""
    run = RunDir(Path(row["run_dir"]))
    inputs = [
        (run.weights("autoencoder"), row["autoencoder_sha256"]),
        (run.weights("diffusion"), row["diffusion_sha256"]),
    ]
    if row.get("controlnet_sha256"):  # 2D: the condition's ControlNet; 3D: the label-map one ("mask")
        controlnet = run.controlnet(row.get("condition") or "mask") / "model.pt"
        inputs.append((controlnet, row["controlnet_sha256"]))
    if row.get("condition_file"):
        inputs.append((Path(row["condition_file"]), row["condition_sha256"]))
    label_map = row.get("label_map") or {}
    if label_map.get("file"):
        inputs.append((Path(label_map["file"]), label_map["sha256"]))
    for path, sha256 in inputs:
        if path.is_file() and path not in hashes:
            hashes[path] = file_sha256(path)
        if hashes.get(path) != sha256:
            raise SynthmedError(
                "missing, or changed since the rejected sample was generated (sha256 differs); restore it "
                "to regenerate with the same conditions",
                path=path,
            )


def _run(factory: sessionmaker[Session], job: Job, progress: bool) -> list[Fulfilled]:
    out = job.cfg.out
    manifest = out / MANIFEST
    drop_cut_last_line(manifest)
    seed = _unused_seed(read_manifest(manifest), span=2 * len(job.requests))
    generate_to_folder(job.cfg.model_copy(update={"seed": seed, "count": len(job.requests)}), progress)
    new_rows = sorted(
        (r for r in read_manifest(manifest) if r.get("file") and r["seed"] >= seed), key=lambda r: r["seed"]
    )
    if len(new_rows) != len(job.requests):
        raise SynthmedError(f"expected {len(job.requests)} new images, found {len(new_rows)}", path=manifest)
    with transaction(factory) as session:
        run = import_generation(session, out, job.dataset)
        done = []
        for request_id, row in zip(job.requests, new_rows, strict=True):
            sample = session.scalar(
                select(Sample).where(Sample.dataset_id == run.dataset_id, Sample.path == row["file"])
            )
            request = session.get(RegenerationRequest, request_id, with_for_update=True)
            if sample is None or request is None or request.status != "open":
                continue  # fulfilled meanwhile by another process: the new image stays an extra sample
            request.status, request.new_seed, request.fulfilled_sample_id = (
                "fulfilled",
                row["seed"],
                sample.id,
            )
            request.fulfilled = utcnow()
            done.append(Fulfilled(request_id, request.sample_id, sample.id, row["seed"], row["file"]))
    return done


def _unused_seed(rows: list[dict[str, Any]], span: int) -> int:
    """The first seed after every base seed of the folder such that ``span`` seeds from it (the privacy
    filter may try twice as many as it keeps) were never used, including 3D quality-check retry seeds."""
    base = {int(r["seed"]) for r in rows}  # every drawn base seed has a row (dropped ones too)
    used = base | {int(s) for r in rows for s in r.get("batch_seeds", [])}  # 3D retries: derived seeds
    used |= {int(a["seed"]) for r in rows for a in r.get("attempts", [])}
    seed = max(base, default=-1) + 1
    while used.intersection(range(seed, seed + span)):
        seed += 1
    return seed
