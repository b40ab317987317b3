"""Where jobs keep their files: previews of the live view under the jobs folder, generation outputs under the
outputs folder. Both default to folders beside a SQLite catalogue (else in the working folder), so a
``synthmed worker`` on the same database writes where ``synthmed serve`` reads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from synthmed.artifacts.images import save_grid
from synthmed.review.render import default_cache_dir

PREVIEW_MIN_SIDE = 128  # small models' images are scaled up (nearest neighbour) to at least this


def default_jobs_dir(url: str | None = None) -> Path:
    return default_cache_dir(url, "jobs", "synthmed-jobs")


def default_outputs_dir(url: str | None = None) -> Path:
    return default_cache_dir(url, "outputs", "synthmed-outputs")


def job_dir(root: Path, job_id: int) -> Path:
    return Path(root) / f"job-{int(job_id)}"


def output_dir(root: Path, job_id: int) -> Path:
    """A generation job's output folder under the outputs folder."""
    return Path(root) / f"job-{int(job_id)}"


def preview_path(root: Path, job_id: int, n: int) -> Path:
    """The n-th preview (0, 1, 2, ...) of a job: a PNG grid of the predicted clean images."""
    return job_dir(root, job_id) / "previews" / f"{int(n):05d}.png"


def count_previews(root: Path, job_id: int) -> int:
    """Previews written so far (a resumed job goes on numbering after them)."""
    n = 0
    while preview_path(root, job_id, n).is_file():
        n += 1
    return n


def write_preview(images: torch.Tensor, path: Path) -> None:
    """Images (N, 1, H, W) in [0, 1] as a grid of two columns, written atomically (the browser may be
    reading the previous one)."""
    factor = -(-PREVIEW_MIN_SIDE // max(images.shape[-2:]))
    if factor > 1:
        images = F.interpolate(images.float(), scale_factor=factor, mode="nearest")
    save_grid(images, path, ncols=2)
