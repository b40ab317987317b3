"""The job queue: rows of the catalogue's ``jobs`` table, shared by the web app and any number of workers.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``; a queued job may be cancelled at
once. Jobs live in the database only, so restarting the server or a worker loses none.

- **Claim**: one worker at a time gets a queued job, oldest first. PostgreSQL: ``SELECT ... FOR UPDATE SKIP
  LOCKED``, so concurrent workers pass over each other's row; SQLite: the claiming ``UPDATE`` is conditional
  on the row still being queued, and the worker's transactions take SQLite's write lock when they begin
  (:func:`worker_engine`), so two claims are serialised. A claim is a :class:`Lease`: every later write of
  the worker is conditional on the job still being running under that lease, so a worker that was taken for
  dead can never overwrite the job's next attempt.
- **Heartbeat**: a running job's worker renews ``heartbeat`` every few seconds and with each progress
  update.
- **Recovery** (:func:`recover_stale`, which workers call whenever they look at the queue): a running job
  whose heartbeat is older than the timeout has lost its worker (killed, machine gone). It is queued again,
  and the next attempt resumes: generation continues from its manifest (images already written are kept),
  training from its last checkpoints, evaluation starts over. After ``max_attempts`` starts it is marked
  failed with an error saying why, and a job whose cancel was requested is marked cancelled: no job stays
  running without a live worker.
- **Cancel** (:func:`request_cancel`): a queued job is cancelled at once; a running one is flagged and its
  worker stops at the next step (a generation job keeps the images written so far).
- **Graceful stop** (SIGTERM): the worker puts its running job back in the queue; that start does not count
  as an attempt.

Timestamps come from the workers' clocks: workers on several machines need synchronised clocks (NTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, event, func, select, update
from sqlalchemy.orm import Session

from synthmed.catalogue.db import changed_rows, database_url, make_engine
from synthmed.catalogue.models import Job, utcnow
from synthmed.config import EvaluateConfig, GenerateConfig, TrainConfig, format_validation_error
from synthmed.errors import SynthmedError
from synthmed.jobs.files import output_dir

MAX_ATTEMPTS = 3
CONFIGS: dict[str, type[BaseModel]] = {
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "train": TrainConfig,
}
Status = Literal["running", "cancel", "lost"]


@dataclass(frozen=True)
class Lease:
    """One worker's claim of one job: its start number ``attempt`` tells this start from any other."""

    job_id: int
    worker: str
    attempt: int


def worker_engine(url: str | None = None) -> Engine:
    """An engine for workers. On SQLite every transaction begins with the write lock (BEGIN IMMEDIATE):
    a transaction that reads first and writes later fails at once if another process wrote in between,
    whereas waiting for the lock up front obeys the busy timeout."""
    url = database_url(url)
    engine = make_engine(url)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _driver_transactions_off)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _driver_transactions_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN instead


def enqueue(
    session: Session, kind: str, config: BaseModel, user_id: int | None, *, out_root: Path | None = None
) -> Job:
    """Queue a job running ``config`` (the command's config object). ``out_root``: a generation or evaluation
    job writes to ``out_root/job-<id>`` (its id is known only here), whatever ``config.out`` says."""
    model = CONFIGS.get(kind)
    if model is None:
        raise SynthmedError(f"unknown job kind {kind!r}; choose one of {list(CONFIGS)}", field="kind")
    if not isinstance(config, model):
        raise SynthmedError(
            f"a {kind} job needs a {model.__name__}, not {type(config).__name__}", field="config"
        )
    if out_root is not None and kind == "train":
        raise SynthmedError("out_root applies to generation and evaluation jobs only", field="out_root")
    values = config.model_dump(mode="json")
    job_config(kind, values)  # the stored JSON must load back into the config the worker runs
    job = Job(kind=kind, config=values, created_by=user_id, progress={"message": "queued"})
    session.add(job)
    session.flush()
    if out_root is not None:
        job.config = values | {"out": str(output_dir(out_root, job.id))}
        session.flush()
    return job


def job_config(kind: str, values: dict[str, Any]) -> BaseModel:
    """A job's stored config as the config object the worker runs."""
    model = CONFIGS[kind]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SynthmedError(format_validation_error(exc, f"{model.__name__} of the job")) from exc


def list_jobs(session: Session, limit: int = 50) -> list[Job]:
    """The newest jobs first."""
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def claim(session: Session, worker: str) -> Lease | None:
    """Start the oldest queued job under ``worker``'s name; None when none is queued."""
    job_id = session.scalar(
        select(Job.id)
        .where(Job.state == "queued")
        .order_by(Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it (see the module docstring)
    )
    if job_id is None:
        return None
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(
            state="running",
            worker=worker,
            heartbeat=now,
            started=func.coalesce(Job.started, now),
            attempts=Job.attempts + 1,
            progress={"message": "started"},
        )
        .returning(Job.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return None if claimed is None else Lease(job_id, worker, claimed)


def _owned(lease: Lease) -> tuple[Any, ...]:
    return (
        Job.id == lease.job_id,
        Job.state == "running",
        Job.worker == lease.worker,
        Job.attempts == lease.attempt,
    )


def touch(session: Session, lease: Lease, progress: dict[str, Any] | None = None) -> Status:
    """Renew the heartbeat (and store ``progress``): "running", "cancel" when a cancel was requested, or
    "lost" when the job is no longer this lease's (recovered after a stall, or ended)."""
    values: dict[str, Any] = {"heartbeat": utcnow()}
    if progress is not None:
        values["progress"] = progress
    cancel = session.execute(
        update(Job)
        .where(*_owned(lease))
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if cancel is None:
        return "lost"
    return "cancel" if cancel else "running"


def end(
    session: Session,
    lease: Lease,
    state: Literal["done", "failed", "cancelled"],
    *,
    progress: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """End the leased job in ``state`` (with ``result``, ``error``, ...); False if it is no longer ours."""
    if progress is not None:
        values["progress"] = progress
    done = changed_rows(
        session,
        update(Job)
        .where(*_owned(lease))
        .values(state=state, finished=utcnow(), **values)
        .execution_options(synchronize_session=False),
    )
    return done == 1


def release(session: Session, lease: Lease, message: str) -> bool:
    """Put the leased job back in the queue (its worker is stopping); this start is not counted."""
    done = changed_rows(
        session,
        update(Job)
        .where(*_owned(lease))
        .values(
            state="queued",
            worker=None,
            heartbeat=None,
            attempts=Job.attempts - 1,
            progress={"message": message},
        )
        .execution_options(synchronize_session=False),
    )
    return done == 1


def request_cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once; flag a running one, which its worker stops at the next step."""
    stopped = {"message": "cancelled before it started"}
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(state="cancelled", finished=utcnow(), progress=stopped)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise SynthmedError(f"there is no job {job_id}", field="job")
    if job.state in ("done", "failed"):
        raise SynthmedError(f"job {job_id} has already ended ({job.state}): nothing to cancel", field="job")
    return job


def recover_stale(session: Session, timeout_s: float, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
    """Queue again, fail or cancel the running jobs whose heartbeat is older than ``timeout_s`` (see the
    module docstring); returns them."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = list(
        session.scalars(
            select(Job)
            .where(Job.state == "running", Job.heartbeat < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    for job in stale:
        _recover(job, timeout_s, max_attempts)
    session.flush()
    return stale


def _recover(job: Job, timeout_s: float, max_attempts: int) -> None:
    lost = f"worker {job.worker} sent no heartbeat for over {timeout_s:g} s during attempt {job.attempts}"
    if job.cancel_requested:
        job.state, job.finished = "cancelled", utcnow()
        job.progress = {"message": f"cancelled: {lost}"}
    elif job.attempts >= max_attempts:
        job.state, job.finished = "failed", utcnow()
        job.error = (
            f"{lost} of {max_attempts}, so the job is not started again; see that worker's log for why it "
            "stopped (killed, out of memory, machine down), then start a new job"
        )
        job.progress = {"message": "failed: its workers kept stopping"}
    else:
        job.state, job.worker, job.heartbeat = "queued", None, None
        job.progress = {"message": f"queued again: {lost}; the next attempt resumes"}
