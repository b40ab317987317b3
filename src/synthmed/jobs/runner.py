"""Run one claimed job through the code its command runs: ``generate_to_folder`` (then the catalogue import),
``evaluate`` or ``train``.

Their hooks write the job's progress (at most every ``progress_every_s``), the generation previews (the
predicted clean images of the current batch decoded through the autoencoder; 3D: the middle axial slice of
the first volume), and stop the job at the next step, by raising :class:`Stop`, when a cancel is requested,
the worker is stopping or the job was taken over. Images written before a stop stay, so the job resumes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from synthmed.artifacts.manifest import MANIFEST, drop_cut_last_line, read_manifest
from synthmed.catalogue.db import transaction
from synthmed.catalogue.importer import import_generation
from synthmed.catalogue.models import Sample
from synthmed.config import EvaluateConfig, GenerateConfig, TrainConfig, WorkerConfig
from synthmed.diffusion.sampler import StepCallback
from synthmed.diffusion.tiled import decode_latents
from synthmed.evaluation.run import evaluate
from synthmed.evaluation.views import view_slices
from synthmed.jobs import queue
from synthmed.jobs.files import count_previews, preview_path, write_preview
from synthmed.jobs.queue import Lease, Status
from synthmed.runtime import autocast
from synthmed.sampling.generate import generate_to_folder
from synthmed.sampling.pipeline import Pipeline
from synthmed.training.run import default_stages, train

log = logging.getLogger("synthmed.jobs")
PREVIEWS_PER_BATCH = 10  # at most; fewer when steps are quicker than preview_every_s
PREVIEW_SHARE = 0.2  # decoding previews may take at most this share of a job's time
PREVIEW_IMAGES = 4  # of a 2D batch, in a 2 x 2 grid


class Stop(Exception):
    """Raised inside a job's hooks to stop it at the next step."""

    def __init__(self, reason: Literal["cancel", "shutdown", "lost"]) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class JobContext:
    """A running job's link to its row: the lease, the progress written so far, and why it must stop."""

    lease: Lease
    sessions: sessionmaker[Session]
    jobs_dir: Path
    settings: WorkerConfig
    shutdown: threading.Event  # the worker is stopping
    status: Status = field(default="running", init=False)  # set by heartbeats and progress writes
    values: dict[str, Any] = field(init=False)  # Job.progress
    last_write: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.values = {
            "phase": "starting",
            "step": 0,
            "steps": 0,
            "batch": 0,
            "batches": 0,
            "done": 0,
            "total": 0,
            "eta_s": None,
            "previews": count_previews(self.jobs_dir, self.lease.job_id),
            "message": "",
        }

    def touch(self, progress: dict[str, Any] | None = None) -> None:
        """Heartbeat (with progress); a database hiccup is only logged: the stale timeout covers outages."""
        try:
            with transaction(self.sessions) as session:
                status = queue.touch(session, self.lease, progress)
        except SQLAlchemyError as exc:
            log.warning("job %d: cannot write its heartbeat (%s)", self.lease.job_id, exc)
            return
        if status == "lost" or self.status == "running":
            self.status = status

    def progress(self, force: bool = False, **values: Any) -> None:
        """Update the progress; written when forced or ``progress_every_s`` after the last write. Raises
        Stop when the job must stop."""
        self.values |= values
        now = time.monotonic()
        if force or now - self.last_write >= self.settings.progress_every_s:
            self.last_write = now
            self.touch(dict(self.values))
        self.check()

    def check(self) -> None:
        if self.status != "running":
            raise Stop(self.status)
        if self.shutdown.is_set():
            raise Stop("shutdown")

    def finish(self, outcome: Callable[[Session], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """End the job done with ``outcome(session)``'s result and other columns, in one transaction."""
        final = self.values | {"phase": "done", "eta_s": 0.0, "message": "done"}
        with transaction(self.sessions) as session:
            result, columns = outcome(session)
            if not queue.end(session, self.lease, "done", result=result, progress=final, **columns):
                raise Stop("lost")  # rolls the transaction back: the job's new owner finishes it


def eta(started: float, fraction: float) -> float | None:
    if fraction <= 0:
        return None
    return round((time.monotonic() - started) * (1 - fraction) / fraction, 1)


def run_job(kind: str, config: BaseModel, ctx: JobContext) -> None:
    ctx.check()
    RUNNERS[kind](config, ctx)


# --- generation ------------------------------------------------------------------------------------


class GenerationView:
    """The batch hook of a generation job: progress after every denoising step, previews every few."""

    def __init__(self, ctx: JobContext, cfg: GenerateConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.done = _written(cfg.out)
        self.batches = max(1, -(-(cfg.count - self.done) // cfg.batch_size))
        self.batch, self.current = 0, 0
        self.started = time.monotonic()
        self.last_preview, self.preview_cost = -math.inf, 0.0
        ctx.progress(force=True, phase="sampling", total=cfg.count, done=self.done, batches=self.batches)

    def __call__(self, pipe: Pipeline, seeds: list[int]) -> StepCallback:
        self.done += self.current  # the previous batch is written by now
        self.batch, self.current = self.batch + 1, len(seeds)
        self.batches = max(self.batches, self.batch)  # 3D quality retries and privacy replacements add some
        return lambda i, n, x0: self.step(pipe, i, n, x0)

    def step(self, pipe: Pipeline, i: int, n: int, x0: torch.Tensor) -> None:
        preview = self._preview_due(i, n)
        if preview:
            begun = time.monotonic()
            write_preview(
                preview_images(pipe, x0),
                preview_path(self.ctx.jobs_dir, self.ctx.lease.job_id, self.previews),
            )
            self.last_preview = time.monotonic()
            self.preview_cost = self.last_preview - begun
        fraction = ((self.batch - 1) * n + i + 1) / (self.batches * n)
        self.ctx.progress(
            force=preview,
            step=i + 1,
            steps=n,
            batch=self.batch,
            batches=self.batches,
            done=min(self.done, self.cfg.count),
            eta_s=eta(self.started, fraction),
            previews=self.previews + preview,
        )

    @property
    def previews(self) -> int:
        return self.ctx.values["previews"]

    def _preview_due(self, i: int, n: int) -> bool:
        every = max(1, n // PREVIEWS_PER_BATCH)
        gap = max(self.ctx.settings.preview_every_s, self.preview_cost * (1 - PREVIEW_SHARE) / PREVIEW_SHARE)
        waited = time.monotonic() - self.last_preview >= gap
        return (i % every == 0 or i == n - 1) and waited


def _written(out: Path) -> int:
    """Images an earlier attempt already wrote to the output folder."""
    manifest = out / MANIFEST
    drop_cut_last_line(manifest)  # a killed attempt may have left half a row
    return len({row["file"] for row in read_manifest(manifest) if row.get("file")})


def preview_images(pipe: Pipeline, x0: torch.Tensor) -> torch.Tensor:
    """The predicted clean latents decoded: up to PREVIEW_IMAGES images (N, 1, H, W) in [0, 1]; 3D: the
    middle axial slice of the first volume."""
    with autocast(pipe.device, pipe.dtype):
        if pipe.cfg.data.volume is None:
            images = decode_latents(pipe.autoencoder, x0[:PREVIEW_IMAGES] / pipe.scale_factor)
        else:
            volume = decode_latents(
                pipe.autoencoder, x0[:1] / pipe.scale_factor, tile=pipe.tile_size, overlap=pipe.tile_overlap
            )
            size = max(volume.shape[-3:-1])
            images = view_slices(volume.float(), "axial", size=size, fraction=1e-9)  # the one middle slice
    return images.float().clamp(0, 1).cpu()


def run_generate(cfg: GenerateConfig, ctx: JobContext) -> None:
    out = generate_to_folder(cfg, progress=False, batch_hook=GenerationView(ctx, cfg))
    ctx.progress(force=True, phase="importing", done=cfg.count, eta_s=0.0, message="importing")

    def imported(session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
        run = import_generation(session, out)
        images = session.scalar(select(func.count()).where(Sample.dataset_id == run.dataset_id))
        result = {"out": str(out), "images": images, "dataset": run.dataset.name}
        return result, {"generation_run_id": run.id}

    ctx.finish(imported)


# --- evaluation and training -------------------------------------------------------------------------


def run_evaluate(cfg: EvaluateConfig, ctx: JobContext) -> None:
    ctx.progress(force=True, phase="evaluating")

    def on_phase(name: str) -> None:
        ctx.progress(force=True, step=ctx.values["step"] + 1, message=name)

    out = evaluate(cfg, on_phase=on_phase)
    ctx.finish(lambda _session: ({"report": str(out / "report.html"), "out": str(out)}, {}))


def run_train(cfg: TrainConfig, ctx: JobContext) -> None:
    """Always with resume: a queued-again job continues from its checkpoints, and a run folder trained
    with another config is refused as the command refuses it."""
    ctx.progress(force=True, phase="training", batches=len(default_stages(cfg)))
    started: dict[str, tuple[float, int]] = {}

    def on_step(stage: str, step: int, steps: int) -> None:
        if stage not in started:
            started[stage] = (time.monotonic(), step - 1)
        t0, first = started[stage]
        fraction = (step - first) / max(1, steps - first)
        ctx.progress(step=step, steps=steps, batch=len(started), message=stage, eta_s=eta(t0, fraction))

    train(cfg, resume=True, progress=False, on_step=on_step)
    ctx.finish(lambda _session: ({"run_dir": str(cfg.run_dir)}, {}))


RUNNERS: dict[str, Callable[[Any, JobContext], None]] = {
    "generate": run_generate,
    "evaluate": run_evaluate,
    "train": run_train,
}
