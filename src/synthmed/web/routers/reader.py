"""A reader's pages: assigned studies, one trial per page (no feedback), and the trial's blinded images.

Every page and image is looked up by the reader's own opaque trial token; a token of another reader, or a
study the reader is not assigned to, is answered exactly like one that does not exist (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from synthmed.catalogue.models import Study, StudyReader
from synthmed.errors import SynthmedError
from synthmed.review import render as blinded
from synthmed.review.studies import (
    AnswerInput,
    is_3d,
    is_answered,
    next_trial,
    progress,
    record_answer,
    trial_for,
)
from synthmed.web.auth import CSRF, Reader
from synthmed.web.deps import DB
from synthmed.web.pages import render

router = APIRouter()
TokenStr = Annotated[str, Form(min_length=1, max_length=64)]
Field = Annotated[str | None, Form(max_length=16)]


def _assigned(session: DB, study_id: int, user_id: int) -> Study:
    study = session.scalar(
        select(Study).join(StudyReader).where(Study.id == study_id, StudyReader.user_id == user_id)
    )
    if study is None:
        raise HTTPException(404, "Not found.")
    return study


@router.get("/studies")
def studies(request: Request, session: DB, user: Reader) -> HTMLResponse:
    assigned = session.scalars(
        select(Study).join(StudyReader).where(StudyReader.user_id == user.id).order_by(Study.id)
    ).all()
    rows = [(study, progress(session, study.id, user.id)) for study in assigned]
    return render(request, "studies.html", user=user, rows=rows)


@router.get("/studies/{study_id}")
def trial_page(
    request: Request, session: DB, user: Reader, study_id: int, kept: bool = False
) -> HTMLResponse:
    study = _assigned(session, study_id, user.id)
    done = progress(session, study.id, user.id)
    trial = next_trial(session, study.id, user.id)
    if trial is None:
        return render(request, "done.html", user=user, study=study, progress=done)
    return render(
        request,
        "trial.html",
        user=user,
        study=study,
        trial=trial,
        number=done.answered + 1,
        total=done.total,
        slices=blinded.slice_count(request.app.state.cache, study.id, trial.item_id),
        three_d=is_3d(session, study.id),
        kept=kept,
    )


def _score(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise SynthmedError("must be an integer from 1 to 5", field=field)
    return int(value)


@router.post("/studies/{study_id}/answer", dependencies=[CSRF])
def answer(
    session: DB,
    user: Reader,
    study_id: int,
    token: TokenStr,
    choice: Field = None,
    confidence: Field = None,
    realism: Field = None,
    anatomy: Field = None,
    slice_consistency: Field = None,
) -> RedirectResponse:
    study = _assigned(session, study_id, user.id)
    values = AnswerInput(
        choice=choice or None,
        confidence=_score(confidence, "confidence"),
        realism=_score(realism, "realism"),
        anatomy=_score(anatomy, "anatomy"),
        slice_consistency=_score(slice_consistency, "slice_consistency"),
    )
    # A form sent again (a double submit, or one the browser restored after Back) never answers another
    # item: its token names the item it showed, whose first answer stands; the reader is told.
    kept = is_answered(session, study.id, user.id, token)
    record_answer(session, study.id, user.id, token, values)
    return RedirectResponse(f"/studies/{study.id}{'?kept=1' if kept else ''}", status_code=303)


@router.get("/images/{token}/{index}")
def image(
    request: Request,
    session: DB,
    user: Reader,
    token: Annotated[str, Path(max_length=64)],
    index: Annotated[int, Path(ge=0, le=4096)],
) -> Response:
    """The blinded PNG of one trial (3D: one axial slice), the same bytes as rendered at study creation."""
    trial = trial_for(session, token, user.id)
    path = blinded.slice_path(request.app.state.cache, trial.study_id, trial.item_id, index)
    if not path.is_file():
        raise HTTPException(404, "Not found.")
    return Response(path.read_bytes(), media_type="image/png")
