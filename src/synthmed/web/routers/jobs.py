"""Jobs (admins): the list with cancel buttons, a job's page with its live view (Server-Sent Events carry
the progress; the page swaps in each new preview of the predicted clean image), its preview images and
its report (an evaluation job's report.html and files, served from the job's own output folder only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from pydantic_core import PydanticUndefined, to_jsonable_python
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from synthmed.catalogue.models import Dataset, GenerationRun, Job
from synthmed.jobs.files import preview_path
from synthmed.jobs.queue import CONFIGS, list_jobs, request_cancel
from synthmed.web.auth import CSRF, Admin
from synthmed.web.deps import DB, get_or_404
from synthmed.web.pages import readable, render

router = APIRouter(prefix="/jobs")
TERMINAL = ("done", "failed", "cancelled")
POLL_S = 0.5  # how often a live view reads its job: the worker writes progress a few times a second
# A report is a generated page with inline styles and its own images: nothing else, no script at all.
REPORT_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
JobId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


@router.get("")
def job_list(request: Request, session: DB, user: Admin) -> HTMLResponse:
    return render(request, "jobs.html", user=user, jobs=list_jobs(session, limit=50), terminal=TERMINAL)


@router.get("/{job_id}")
def job_page(request: Request, session: DB, user: Admin, job_id: JobId) -> HTMLResponse:
    job = get_or_404(session, Job, job_id)
    run = session.get(GenerationRun, job.generation_run_id) if job.generation_run_id else None
    names = {d.root.rstrip("/"): d.name for d in session.scalars(select(Dataset))}
    return render(
        request,
        "job.html",
        user=user,
        job=job,
        dataset_id=run.dataset_id if run else None,
        terminal=TERMINAL,
        settings=chosen_settings(job, names),
        result=[(key, shown(value, names)) for key, value in sorted(job.result.items())],
    )


def chosen_settings(job: Job, names: dict[str, str]) -> list[tuple[str, str]]:
    """The settings the job was given that differ from the command's defaults, as people read them."""
    fields = CONFIGS[job.kind].model_fields if job.kind in CONFIGS else {}
    rows = []
    for key, value in sorted(job.config.items()):
        field = fields.get(key)
        default = field.get_default(call_default_factory=True) if field else PydanticUndefined
        if value is not None and (default is PydanticUndefined or to_jsonable_python(default) != value):
            rows.append((key, shown(value, names)))
    return rows


def shown(value: Any, names: dict[str, str]) -> str:
    """A setting as one table cell: names for paths, short checksums, a list joined."""
    value = readable(value, names)
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


@router.post("/{job_id}/cancel", dependencies=[CSRF])
def cancel(session: DB, user: Admin, job_id: JobId) -> RedirectResponse:
    request_cancel(session, get_or_404(session, Job, job_id).id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def snapshot(job: Job) -> dict[str, Any]:
    """What the live view shows of a job."""
    return {"state": job.state, "progress": job.progress or {}, "error": job.error}


def _read(sessions: sessionmaker[Session], job_id: int) -> dict[str, Any] | None:
    with sessions() as session:
        job = session.get(Job, job_id)
        return None if job is None else snapshot(job)


async def job_events(
    sessions: sessionmaker[Session],
    job_id: int,
    disconnected: Callable[[], Awaitable[bool]],
    interval: float = POLL_S,
) -> AsyncIterator[str]:
    """Server-Sent Events: a ``progress`` event whenever the job's state or progress changes, then ``end``
    once it is done, failed or cancelled (or gone); stops when the browser goes away."""
    last = None
    while not await disconnected():
        current = await asyncio.to_thread(_read, sessions, job_id)
        if current != last and current is not None:
            yield f"event: progress\ndata: {json.dumps(current)}\n\n"
            last = current
        if current is None or current["state"] in TERMINAL:
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(interval)


@router.get("/{job_id}/events")
def events(request: Request, session: DB, user: Admin, job_id: JobId) -> StreamingResponse:
    get_or_404(session, Job, job_id)
    return StreamingResponse(
        job_events(request.app.state.sessions, job_id, request.is_disconnected),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},  # a reverse proxy must pass each event on at once
    )


@router.get("/{job_id}/previews/{n}.png")
def preview(
    request: Request, session: DB, user: Admin, job_id: JobId, n: Annotated[int, PathParam(ge=0, le=10**6)]
) -> FileResponse:
    """A preview of this job only: the path is built from the job id and the number, never from the URL."""
    path = preview_path(request.app.state.jobs_dir, get_or_404(session, Job, job_id).id, n)
    if not path.is_file():
        raise HTTPException(404, "Not found.")
    return FileResponse(path, media_type="image/png")


@router.get("/{job_id}/report")
def report_index(user: Admin, job_id: JobId) -> RedirectResponse:
    return RedirectResponse(f"/jobs/{job_id}/report/", status_code=307)  # relative links then resolve


@router.get("/{job_id}/report/{name:path}")
def report_file(session: DB, user: Admin, job_id: JobId, name: str) -> FileResponse:
    """The job's report page ('' names it) and the files it links, from inside its output folder only."""
    job = get_or_404(session, Job, job_id)
    report, out = job.result.get("report"), job.config.get("out")
    if not isinstance(report, str) or not isinstance(out, str):
        raise HTTPException(404, "Not found.")
    folder = Path(report).resolve().parent
    path = (folder / (name or Path(report).name)).resolve()
    if (
        not folder.is_relative_to(Path(out).resolve())
        or not path.is_relative_to(folder)
        or not path.is_file()
    ):
        raise HTTPException(404, "Not found.")
    return FileResponse(path, headers={"Content-Security-Policy": REPORT_CSP})
