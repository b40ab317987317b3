"""Settings of ``synthmed worker``, which runs the catalogue's queued jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from synthmed.config.catalogue import DatabaseConfig


class WorkerConfig(DatabaseConfig):
    """`synthmed worker`: runs the catalogue's queued generation, evaluation and training jobs."""

    jobs_dir: Path | None = Field(
        None, description="Job previews (default: beside a SQLite file, else ./synthmed-jobs)."
    )
    poll_s: float = Field(2.0, gt=0, le=3600, description="Seconds between looks at an empty queue.")
    heartbeat_s: float = Field(5.0, gt=0, le=600, description="Seconds between a running job's heartbeats.")
    stale_after_s: float = Field(
        60.0, gt=0, description="A running job without a heartbeat for this long has lost its worker."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Starts of a job whose worker keeps dying.")
    progress_every_s: float = Field(0.25, ge=0, description="Least seconds between progress updates.")
    preview_every_s: float = Field(
        0.5, ge=0, description="Least seconds between live-view previews (more when decoding them is slow)."
    )
    once: bool = Field(False, description="Run the jobs queued now, then exit instead of waiting for more.")

    @model_validator(mode="after")
    def _heartbeat_before_stale(self) -> Self:
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s:g}), or live jobs would be taken for dead ones"
            )
        return self
