"""Admin pages: overview, create a study, follow its readers, its statistics (page and CSV), and the review
of synthetic samples (approve, or reject with a reason: a regeneration request)."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from synthmed.catalogue.db import transaction
from synthmed.catalogue.models import REVIEW_STATES, Dataset, Sample, Study, StudyItem, User
from synthmed.config import StudyConfig, format_validation_error
from synthmed.errors import SynthmedError
from synthmed.review.decisions import check_decision, decide, latest_decisions, undo_last
from synthmed.review.render import native_geometry, preview_png, study_info
from synthmed.review.stats import AnswerRow, statistics_csv, study_statistics
from synthmed.review.studies import (
    SetResolution,
    answers_for_stats,
    create_study,
    dataset_resolution,
    progress,
    resolution_warnings,
)
from synthmed.web.auth import CSRF, Admin
from synthmed.web.deps import DB, get_or_404
from synthmed.web.pages import render

router = APIRouter(prefix="/admin")
PAGE_SIZE = 48
MAX_FULL_SIZE = 2048  # the full-size viewer's largest side: beyond a screen, the browser only shrinks it
Text = Annotated[str, Form(max_length=200)]


@router.get("")
def overview(request: Request, session: DB, user: Admin) -> HTMLResponse:
    counts = session.execute(
        select(Dataset, Sample.review_state, func.count(Sample.id))
        .outerjoin(Sample, Sample.dataset_id == Dataset.id)
        .group_by(Dataset.id, Sample.review_state)
        .order_by(Dataset.name)
    ).all()
    datasets: dict[int, tuple[Dataset, dict[str, int]]] = {}
    for dataset, state, n in counts:
        datasets.setdefault(dataset.id, (dataset, {}))[1][state or "pending"] = n
    studies = session.scalars(select(Study).order_by(Study.id.desc())).all()
    return render(request, "admin.html", user=user, datasets=list(datasets.values()), studies=studies)


def _study_form(
    request: Request, session: DB, user: User, form: dict, status: int = 200, **values: object
) -> HTMLResponse:
    datasets = session.scalars(select(Dataset).order_by(Dataset.name)).all()
    readers = session.scalars(
        select(User).where(User.role == "reader", User.active.is_(True)).order_by(User.username)
    ).all()
    resolutions = {d.name: dataset_resolution(session, d) for d in datasets}
    picked = [
        form.get(field) or next((d.name for d in datasets if d.origin == origin), None)
        for field, origin in (("real_dataset", "real"), ("synthetic_dataset", "synthetic"))
    ]
    warnings = _resolution_warnings(resolutions, picked, form.get("image_size"))
    return render(
        request,
        "study_new.html",
        status,
        user=user,
        datasets=datasets,
        readers=readers,
        resolutions=resolutions,
        resolution_warnings=warnings,
        form=form,
        **values,
    )


def _resolution_warnings(
    resolutions: dict[str, SetResolution | None], picked: list[str | None], size: object
) -> list[str]:
    found = [resolutions.get(name) for name in picked if name]
    if len(found) != 2 or None in found:
        return []
    image_size = int(size) if str(size).isdigit() else StudyConfig.model_fields["image_size"].default
    return resolution_warnings(*found, image_size)  # type: ignore[arg-type]


@router.get("/studies/new/resolution")
def resolution_check(
    session: DB,
    user: Admin,
    real_dataset: Annotated[str, Query(max_length=200)] = "",
    synthetic_dataset: Annotated[str, Query(max_length=200)] = "",
    image_size: Annotated[str, Query(max_length=10)] = "",
) -> dict[str, list[str]]:
    """The study form's warnings for a pair of data sets (its script asks when the choice changes)."""
    names = [real_dataset, synthetic_dataset]
    datasets = session.scalars(select(Dataset).where(Dataset.name.in_(names))).all()
    resolutions = {d.name: dataset_resolution(session, d) for d in datasets}
    return {"warnings": _resolution_warnings(resolutions, names, image_size)}


@router.get("/studies/new")
def new_study(request: Request, session: DB, user: Admin) -> HTMLResponse:
    return _study_form(request, session, user, {})


@router.post("/studies/new", dependencies=[CSRF], response_model=None)
def create(
    request: Request,
    session: DB,
    user: Admin,
    name: Text,
    real_dataset: Text,
    synthetic_dataset: Text,
    n_real: Text,
    n_synthetic: Text,
    readers: Annotated[list[str] | None, Form()] = None,
    kind: Text = "turing",
    likert: Text = "",
    repeat_fraction: Text = "0",
    image_size: Text = "512",
    seed: Text = "0",
) -> HTMLResponse | RedirectResponse:
    form = {
        "name": name,
        "real_dataset": real_dataset,
        "synthetic_dataset": synthetic_dataset,
        "n_real": n_real,
        "n_synthetic": n_synthetic,
        "readers": readers or [],
        "kind": kind,
        "likert": likert == "on",
        "repeat_fraction": repeat_fraction,
        "image_size": image_size,
        "seed": seed,
    }
    try:
        cfg = StudyConfig.model_validate(form)
        # Its own transaction: a failure (e.g. a damaged image) leaves no half-made study behind.
        with transaction(request.app.state.sessions) as writer:
            study_id = create_study(writer, cfg, user.id, request.app.state.cache).id
    except ValidationError as exc:
        return _study_form(request, session, user, form, 400, error=format_validation_error(exc, "form"))
    except SynthmedError as exc:
        return _study_form(request, session, user, form, 400, error=str(exc))
    return RedirectResponse(f"/admin/studies/{study_id}", status_code=303)


@router.get("/studies/{study_id}")
def study_page(request: Request, session: DB, user: Admin, study_id: int) -> HTMLResponse:
    study = get_or_404(session, Study, study_id)
    origins = dict(
        session.execute(
            select(Dataset.origin, func.count(StudyItem.id))
            .join(Sample, Sample.id == StudyItem.sample_id)
            .join(Dataset, Dataset.id == Sample.dataset_id)
            .where(StudyItem.study_id == study.id)
            .group_by(Dataset.origin)
        ).all()
    )
    readers = [(r.user, progress(session, study.id, r.user_id)) for r in study.readers]
    rendering = study_info(request.app.state.cache, study.id)
    return render(
        request, "study.html", user=user, study=study, origins=origins, readers=readers, rendering=rendering
    )


@router.get("/studies/{study_id}/statistics")
def statistics_page(request: Request, session: DB, user: Admin, study_id: int) -> HTMLResponse:
    study = get_or_404(session, Study, study_id)
    result = study_statistics(answers_for_stats(session, study.id))
    return render(request, "statistics.html", user=user, study=study, result=result)


def _csv(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/studies/{study_id}/statistics.csv")
def statistics_download(session: DB, user: Admin, study_id: int) -> Response:
    study = get_or_404(session, Study, study_id)
    return _csv(
        statistics_csv(study_statistics(answers_for_stats(session, study.id))), f"study_{study.id}.csv"
    )


@router.get("/studies/{study_id}/answers.csv")
def answers_download(session: DB, user: Admin, study_id: int) -> Response:
    """Every answer with its answer key, for analyses of one's own."""
    study = get_or_404(session, Study, study_id)
    fields = [f.name for f in dataclasses.fields(AnswerRow)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(row) for row in answers_for_stats(session, study.id))
    return _csv(out.getvalue(), f"study_{study.id}_answers.csv")


ReviewState = Annotated[str, Query(max_length=16)]


@router.get("/review")
def review(
    request: Request,
    session: DB,
    user: Admin,
    dataset_id: Annotated[str, Query(max_length=20)] = "",
    state: ReviewState = "pending",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    last: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    return _review_page(request, session, user, dataset_id, state, page, last=session.get(Sample, last or 0))


def _review_page(
    request: Request,
    session: DB,
    user: User,
    dataset_id: str,
    state: str,
    page: int,
    status: int = 200,
    **extra: object,
) -> HTMLResponse:
    """The gallery of one review state; ``extra``: the last decision (its undo) or a refused one's error."""
    if state not in REVIEW_STATES:
        raise HTTPException(400, f"state must be one of {', '.join(REVIEW_STATES)}")
    datasets = session.scalars(
        select(Dataset).where(Dataset.origin == "synthetic").order_by(Dataset.name)
    ).all()
    query = (
        select(Sample)
        .join(Dataset)
        .options(selectinload(Sample.dataset))
        .where(Dataset.origin == "synthetic", Sample.review_state == state)
        .order_by(Sample.id)
    )
    selected = int(dataset_id) if dataset_id.isdigit() else None  # "" from the form's "all"
    if selected is not None:
        query = query.where(Sample.dataset_id == selected)
    samples = session.scalars(query.offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)).all()
    shown = samples[:PAGE_SIZE]
    return render(
        request,
        "review.html",
        status,
        user=user,
        datasets=datasets,
        samples=shown,
        decisions=latest_decisions(session, [s.id for s in shown]),
        more=len(samples) > PAGE_SIZE,
        dataset_id=selected,
        state=state,
        page=page,
        states=REVIEW_STATES,
        **extra,
    )


def _wants_json(request: Request) -> bool:
    """The gallery's script asks for JSON (no page reload); a plain form post gets pages and redirects."""
    return request.headers.get("accept", "").startswith("application/json")


def _back(state: str, page: int, dataset_id: str, last: int | None = None) -> RedirectResponse:
    back = f"/admin/review?state={state if state in REVIEW_STATES else 'pending'}&page={page}"
    if dataset_id.isdigit():
        back += f"&dataset_id={dataset_id}"
    if last is not None:
        back += f"&last={last}"
    return RedirectResponse(back, status_code=303)


def _decided(session: DB, sample_ids: list[int]) -> dict[str, object]:
    samples = [session.get_one(Sample, i) for i in sample_ids]
    decisions = latest_decisions(session, sample_ids)
    return {
        "samples": [
            {"id": s.id, "state": s.review_state, "reason": getattr(decisions.get(s.id), "reason", "")}
            for s in samples
        ]
    }


Filter = Annotated[str, Form(max_length=20)]
PageField = Annotated[int, Form(ge=1, le=100_000)]


@router.post("/review/{sample_id}", dependencies=[CSRF], response_model=None)
def review_decision(
    request: Request,
    session: DB,
    user: Admin,
    sample_id: int,
    decision: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=2000)] = "",
    dataset_id: Filter = "",
    state: Annotated[str, Form(max_length=16)] = "pending",
    page: PageField = 1,
) -> Response:
    try:
        decide(session, sample_id, user.id, decision, reason)
    except SynthmedError as exc:
        return _refused(request, session, user, exc, sample_id, (dataset_id, state, page))
    if _wants_json(request):
        return JSONResponse(_decided(session, [sample_id]))
    return _back(state, page, dataset_id, last=sample_id)


def _refused(
    request: Request,
    session: DB,
    user: User,
    exc: SynthmedError,
    sample_id: int | None,
    where: tuple[str, str, int],
) -> Response:
    """A refused decision: JSON for the script, else the gallery again with the error at the sample."""
    if _wants_json(request):
        return JSONResponse({"error": str(exc), "field": exc.field, "sample_id": sample_id}, status_code=400)
    dataset_id, state, page = where
    state = state if state in REVIEW_STATES else "pending"
    return _review_page(request, session, user, dataset_id, state, page, 400, error=(sample_id, str(exc)))


@router.post("/review/{sample_id}/undo", dependencies=[CSRF], response_model=None)
def review_undo(
    request: Request,
    session: DB,
    user: Admin,
    sample_id: int,
    dataset_id: Filter = "",
    state: Annotated[str, Form(max_length=16)] = "pending",
    page: PageField = 1,
) -> Response:
    """Take back the admin's latest decision on a sample (the gallery's Undo)."""
    try:
        undo_last(session, sample_id, user.id)
    except SynthmedError as exc:
        return _refused(request, session, user, exc, sample_id, (dataset_id, state, page))
    if _wants_json(request):
        return JSONResponse(_decided(session, [sample_id]))
    return _back(state, page, dataset_id)


@router.post("/review", dependencies=[CSRF], response_model=None)
def review_batch(
    request: Request,
    session: DB,
    user: Admin,
    decision: Annotated[str, Form(max_length=16)],
    sample_ids: Annotated[list[int] | None, Form()] = None,
    reason: Annotated[str, Form(max_length=2000)] = "",
    dataset_id: Filter = "",
    state: Annotated[str, Form(max_length=16)] = "pending",
    page: PageField = 1,
) -> Response:
    """One decision for every selected sample of the page, all or none."""
    ids = sorted(set(sample_ids or []))
    try:
        if not ids:
            raise SynthmedError("select the samples first (their check boxes)", field="sample_ids")
        for sample_id in ids:
            check_decision(session, sample_id, decision, reason)
        for sample_id in ids:
            decide(session, sample_id, user.id, decision, reason)
    except SynthmedError as exc:
        return _refused(request, session, user, exc, None, (dataset_id, state, page))
    if _wants_json(request):
        return JSONResponse(_decided(session, ids))
    return _back(state, page, dataset_id)


@router.get("/samples/{sample_id}/image.png")
def sample_image(session: DB, user: Admin, sample_id: int) -> Response:
    """A sample at its native resolution (3D: the middle axial slice), for the review's full-size viewer."""
    sample = get_or_404(session, Sample, sample_id)
    side = min(native_geometry(sample.files, sample.dataset.spatial_dims).side, MAX_FULL_SIZE)
    return Response(preview_png(sample.files, sample.dataset.spatial_dims, side), media_type="image/png")


@router.get("/samples/{sample_id}/preview.png")
def sample_preview(session: DB, user: Admin, sample_id: int) -> Response:
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise HTTPException(404, "Not found.")
    return Response(preview_png(sample.files, sample.dataset.spatial_dims), media_type="image/png")
