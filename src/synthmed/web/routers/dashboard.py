"""The research dashboard (admins): the trained models on offer, the configurator whose form follows the
picked model (labels, ControlNets, samplers, 3D size and spacing) and enqueues a generation job, and a
form that enqueues an evaluation job. Browsers name models, data sets and samples by key or id, never by
path; the one uploaded file is decoded, re-encoded and stored under the job's folder."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import Dataset, Job, Sample, User
from synthmed.config import EvaluateConfig, GenerateConfig, format_validation_error
from synthmed.data.structure import read_condition_file
from synthmed.errors import SynthmedError
from synthmed.jobs.files import job_dir, output_dir
from synthmed.jobs.queue import enqueue, list_jobs
from synthmed.models.builders import DISTILLED, default_steps
from synthmed.sampling.rules import check_distilled_steps
from synthmed.web.auth import CSRF, Admin, check_csrf
from synthmed.web.deps import DB
from synthmed.web.pages import render
from synthmed.web.run_options import RunOptions, available_runs, find_run

router = APIRouter(prefix="/dashboard")
UPLOAD_PATH = "/dashboard/generate"
MAX_UPLOAD = 5 * 1024 * 1024  # a structure map is one image: a few hundred kB at most in practice
MAX_PIXELS = 8192 * 8192
MASK_CHOICES = 500  # catalogue samples with a mask offered in the configurator
Text = Annotated[str, Form(max_length=200)]
Values = Annotated[list[str] | None, Form()]


def _dirs(request: Request) -> tuple[Path, Path, Path | None]:
    """Where jobs keep their files, where their outputs go, and the folder of trained runs on offer."""
    state = request.app.state
    return state.jobs_dir, state.outputs_dir, state.config.runs_dir


@router.get("")
def home(request: Request, session: DB, user: Admin) -> HTMLResponse:
    runs = available_runs(session, _dirs(request)[2])
    datasets = session.scalars(select(Dataset).order_by(Dataset.origin.desc(), Dataset.name)).all()
    jobs = list_jobs(session, limit=10)
    return render(request, "dashboard.html", user=user, runs=runs, datasets=datasets, jobs=jobs)


def _mask_samples(session: Session, spatial_dims: int) -> list[Sample]:
    """Catalogue samples that come with a mask (3D: a label map), to generate for one of them."""
    return list(
        session.scalars(
            select(Sample)
            .join(Dataset)
            .where(Sample.mask_path.is_not(None), Dataset.spatial_dims == spatial_dims)
            .order_by(Dataset.name, Sample.path)
            .limit(MASK_CHOICES)
        )
    )


def _defaults(run: RunOptions) -> dict[str, Any]:
    vol = run.cfg.data.volume
    return {
        "label": run.class_names[0] if run.class_names else "",
        "count": 8,
        "sampler": run.samplers[0],
        "steps": default_steps(run.samplers[0]),
        "decoder": "full",
        "guidance": "",
        "seed": 0,
        "condition": "",
        "conditioning_scale": 1.0,
        "size": list(vol.size) if vol else [],
        "spacing": list(vol.spacing or run.spacing or (1.0, 1.0, 1.0)) if vol else [],
    }


def _configure_page(
    request: Request, session: Session, user: User, run: RunOptions, form: dict, status: int = 200, **extra
) -> HTMLResponse:
    masks = _mask_samples(session, run.spatial_dims)
    return render(request, "configure.html", status, user=user, run=run, form=form, masks=masks, **extra)


@router.get("/configure")
def configure(
    request: Request, session: DB, user: Admin, model: Annotated[str, Query(max_length=64)]
) -> HTMLResponse:
    run = find_run(session, _dirs(request)[2], model)
    return _configure_page(request, session, user, run, _defaults(run))


@router.post(UPLOAD_PATH.removeprefix("/dashboard"), response_model=None)
def generate(
    request: Request,
    session: DB,
    user: Admin,
    csrf_token: Text,
    model: Text,
    label: Text = "",
    count: Text = "8",
    sampler: Text = "",
    steps: Text = "25",
    decoder: Text = "full",
    guidance: Text = "",
    seed: Text = "0",
    condition: Text = "",
    conditioning_scale: Text = "1",
    mask_sample: Text = "",
    size: Values = None,
    spacing: Values = None,
    condition_upload: Annotated[UploadFile | None, File()] = None,
) -> HTMLResponse | RedirectResponse:
    check_csrf(request, csrf_token)
    jobs_dir, outputs_dir, runs_dir = _dirs(request)
    run = find_run(session, runs_dir, model)
    form = {
        "label": label,
        "count": count,
        "sampler": sampler,
        "steps": steps,
        "decoder": decoder,
        "guidance": guidance,
        "seed": seed,
        "condition": condition,
        "conditioning_scale": conditioning_scale,
        "mask_sample": mask_sample,
        "size": size or [],
        "spacing": spacing or [],
    }
    staged = None
    try:
        staged = _stage_structure(session, run, jobs_dir, form, condition_upload)
        cfg = _generate_config(run, form, staged, outputs_dir)
        job = enqueue(session, "generate", cfg, user.id, out_root=outputs_dir)
        _store_structure(job, cfg, jobs_dir, staged)
    except (ValidationError, SynthmedError) as exc:
        error, errors = _errors(exc)
    else:
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    if staged is not None:
        staged.unlink(missing_ok=True)
    return _configure_page(request, session, user, run, form, 400, error=error, errors=errors)


# Fields named by the checks that the form calls otherwise.
FORM_FIELDS = {"upload": "condition_upload", "structure map": "condition_upload", "label_map": "mask_sample"}


def _errors(exc: ValidationError | SynthmedError) -> tuple[str, dict[str, str]]:
    """The whole message (shown above the form) and each form field's own (shown at the field)."""
    if isinstance(exc, ValidationError):
        errors: dict[str, str] = {}
        for e in exc.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            errors.setdefault(FORM_FIELDS.get(field, field), e["msg"])
        return format_validation_error(exc, "form"), errors
    field = FORM_FIELDS.get(exc.field or "", exc.field or "")
    return str(exc), {field: str(exc).removeprefix(f"{exc.field}: ")} if field else {}


def _blank_to_none(value: str) -> str | None:
    return value.strip() or None


def _generate_config(
    run: RunOptions, form: dict[str, Any], structure: Path | None, outputs_dir: Path
) -> GenerateConfig:
    """The job's GenerateConfig (enqueue sets its output folder, the job's), refused with the reason
    generation itself would give when the model cannot do what the form asks."""
    values: dict[str, Any] = {
        "run_dir": run.run_dir,
        "out": outputs_dir / "job-new",
        "label": _blank_to_none(form["label"]),
        "count": form["count"],
        "sampler": _blank_to_none(form["sampler"]),
        "steps": form["steps"],
        "decoder": form["decoder"],
        "guidance": _blank_to_none(form["guidance"]),
        "seed": form["seed"],
        "conditioning_scale": form["conditioning_scale"],
    }
    if run.spatial_dims == 3:
        values |= {"size": form["size"] or None, "spacing": form["spacing"] or None, "label_map": structure}
    elif structure is not None:
        values |= {"condition_file": structure, "condition": form["condition"]}
    cfg = GenerateConfig.model_validate(values)
    checks = run.checks()
    checks.label_index(cfg.label)
    checks.guidance(cfg.guidance)
    if cfg.sampler is not None and cfg.sampler not in run.samplers:
        raise SynthmedError(f"choose one of {', '.join(run.samplers)}", field="sampler")
    if cfg.sampler == DISTILLED:
        check_distilled_steps(run.distilled_steps(), cfg.steps or default_steps(DISTILLED), run.run_dir)
    if cfg.decoder not in run.decoders:
        raise SynthmedError("this model has no lightweight decoder: choose full", field="decoder")
    if cfg.size is not None:
        checks.latent_shape_for(cfg.size)
    return cfg


def _stage_structure(
    session: Session, run: RunOptions, jobs_dir: Path, form: dict[str, Any], upload: UploadFile | None
) -> Path | None:
    """The structure map the form asks for (an upload, or a catalogue sample's mask), copied to a staging
    file and checked as generation will read it; None for none."""
    uploaded = upload is not None and bool(upload.filename)
    if not uploaded and not form["mask_sample"]:
        if form["condition"]:
            raise SynthmedError("upload a structure map or pick a mask to follow", field="condition")
        return None
    if uploaded and run.spatial_dims == 3:
        raise SynthmedError("3D models follow a label map: pick one from the catalogue", field="upload")
    image = _decoded_image(upload) if uploaded else None  # type: ignore[arg-type]  # a bad file first
    condition = form["condition"] = form["condition"] or "mask"
    if condition not in run.conditions:
        trained = ", ".join(run.conditions) or "none"
        raise SynthmedError(
            f"this model has no {condition} ControlNet (trained: {trained}); train it with synthmed train "
            "controlnet, or generate without a structure map",
            field="condition",
        )
    staging = jobs_dir / ".uploads"
    staging.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    if image is not None:
        path = staging / f"{token}.png"
        image.save(path, format="PNG")  # re-encoded: nothing but the decoded pixels is kept
    else:
        source = _mask_file(session, form["mask_sample"], run.spatial_dims)
        path = staging / f"{token}{''.join(source.suffixes[-2:])}"
        shutil.copyfile(source, path)
    if run.spatial_dims == 2:
        try:
            read_condition_file(path, condition, run.cfg.data, run.cfg.controlnet.edge_sigma)  # type: ignore[arg-type]
        except SynthmedError as exc:
            path.unlink(missing_ok=True)
            raise SynthmedError(str(exc).removeprefix(f"{path}: "), field="structure map") from exc
    return path


def _decoded_image(upload: UploadFile) -> Image.Image:
    """The upload decoded as a PNG or JPEG (anything else refused), small enough to handle."""
    data = upload.file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise SynthmedError(f"larger than {MAX_UPLOAD >> 20} MiB: upload a smaller PNG", field="upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
            if image.width * image.height > MAX_PIXELS:
                raise SynthmedError(
                    f"{image.width} x {image.height} pixels is too many: at most {MAX_PIXELS:,}",
                    field="upload",
                )
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SynthmedError(
            "not a readable PNG or JPEG image: upload the structure map as a PNG", field="upload"
        ) from None
    return image.convert("RGB") if image.mode == "CMYK" else image


def _mask_file(session: Session, sample_id: str, spatial_dims: int) -> Path:
    sample = session.get(Sample, int(sample_id)) if sample_id.isdigit() else None
    if sample is None or sample.mask_path is None or sample.dataset.spatial_dims != spatial_dims:
        raise SynthmedError("pick a mask from the list", field="mask_sample")
    root = Path(sample.dataset.root).resolve()
    path = (root / sample.mask_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise SynthmedError("this sample's mask file is missing from its data set's folder", path=path)
    return path


def _store_structure(job: Job, cfg: GenerateConfig, jobs_dir: Path, staged: Path | None) -> None:
    """Now that the job has its id, move the staged structure map into the job's folder (same transaction
    as the insert: no worker sees the job before)."""
    if staged is None:
        return
    folder = job_dir(jobs_dir, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"structure{''.join(staged.suffixes)}"
    os.replace(staged, final)
    job.config = job.config | {"label_map" if cfg.label_map else "condition_file": str(final)}


@router.get("/evaluate")
def evaluate_form(request: Request, session: DB, user: Admin) -> HTMLResponse:
    return _evaluate_page(request, session, user, {})


def _evaluate_page(
    request: Request, session: Session, user: User, form: dict, status: int = 200, **extra
) -> HTMLResponse:
    datasets = session.scalars(select(Dataset).where(Dataset.spatial_dims == 2).order_by(Dataset.name)).all()
    return render(
        request, "dashboard_evaluate.html", status, user=user, datasets=datasets, form=form, **extra
    )


@router.post("/evaluate", dependencies=[CSRF], response_model=None)
def evaluate(
    request: Request,
    session: DB,
    user: Admin,
    real: Text,
    holdout: Text,
    synthetic: Text,
    masks: Text = "",
    image_size: Text = "64",
) -> HTMLResponse | RedirectResponse:
    form = {
        "real": real,
        "holdout": holdout,
        "synthetic": synthetic,
        "masks": masks == "on",
        "image_size": image_size,
    }
    outputs_dir = _dirs(request)[1]
    try:
        folders = {
            field: _dataset_root(session, form[field], origin, field)
            for field, origin in (("real", "real"), ("holdout", "real"), ("synthetic", "synthetic"))
        }
        if form["holdout"] == form["real"]:
            raise SynthmedError(
                "the holdout must be images the model never saw, not its training set: import a held-out "
                "set (synthmed catalogue import-real) and pick it",
                field="holdout",
            )
        values = folders | {"out": outputs_dir / "job-new", "masks": form["masks"], "image_size": image_size}
        cfg = EvaluateConfig.model_validate(values)
        job = enqueue(session, "evaluate", cfg, user.id)
        job.config = job.config | {"out": str(output_dir(outputs_dir, job.id))}  # its id is known now
    except (ValidationError, SynthmedError) as exc:
        error, errors = _errors(exc)
        return _evaluate_page(request, session, user, form, 400, error=error, errors=errors)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _dataset_root(session: Session, dataset_id: str, origin: str, field: str) -> str:
    dataset = session.get(Dataset, int(dataset_id)) if dataset_id.isdigit() else None
    if dataset is None or dataset.origin != origin:
        raise SynthmedError(f"pick a {origin} data set from the list", field=field)
    return dataset.root
