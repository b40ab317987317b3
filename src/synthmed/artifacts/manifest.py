"""The generation manifest: ``manifest.jsonl`` in a ``synthmed generate`` output folder, one JSON row per
image (or per seed the privacy filter dropped) with everything needed to regenerate it and prove its origin.

Rows are appended as images are written, so an interrupted job keeps its rows; a job killed mid-append
leaves a cut last line, which :func:`drop_cut_last_line` removes before the folder is read or continued.
The catalogue, the evaluation, the augmentation benchmark and the job runner read rows through this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthmed.artifacts.files import atomic_write
from synthmed.errors import SynthmedError

MANIFEST = "manifest.jsonl"
# Settings that must agree for an existing image in an output folder to count as already generated.
SETTINGS = ("label", "sampler", "steps", "guidance", "checkpoint", "precision", "diffusion_sha256")
CONDITION_SETTINGS = ("condition", "condition_sha256", "conditioning_scale", "controlnet_sha256")


class ManifestRow(BaseModel):
    """The fields of a row that the catalogue reads; the whole row is kept as the sample's provenance."""

    model_config = ConfigDict(extra="allow")

    file: str | None = None  # None: dropped by the privacy filter, no image written
    label: str | None = None  # None: unconditional
    seed: int = Field(ge=0, le=2**31 - 1)  # the catalogue stores 32-bit seeds
    run_dir: str
    autoencoder_sha256: str
    diffusion_sha256: str
    annotation: str | None = None  # 2D: the condition map written beside the image
    condition: str | None = None  # 2D: mask, edges or sobel
    label_file: str | None = None  # 3D: the label map the volume was generated for


def file_name(label: str | None, seed: int) -> str:
    """Where a 2D image lies in the output folder (readable back as a class-folder data set)."""
    return f"{label or 'unconditional'}/syn_{seed:08d}.png"


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Every row of ``path`` (none if the file does not exist)."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SynthmedError(f"line {i} is not JSON ({exc.msg})", path=path) from exc
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def drop_cut_last_line(manifest: Path) -> None:
    """A job killed while appending leaves a partial last row: drop it (its image is regenerated)."""
    if not manifest.exists():
        return
    text = manifest.read_text()
    if not text or text.endswith("\n"):
        return
    with atomic_write(manifest) as tmp:
        tmp.write_text(text[: text.rfind("\n") + 1])
