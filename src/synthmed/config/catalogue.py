"""Settings of the catalogue commands: which database, imports, regeneration requests, export."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from synthmed.config.base import Strict


class DatabaseConfig(Strict):
    """`synthmed db upgrade|current`, `synthmed catalogue list`: which catalogue database."""

    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")


class CatalogueImportConfig(DatabaseConfig):
    """`synthmed catalogue import`: a `synthmed generate` output folder as a synthetic data set."""

    out_dir: Path = Field(description="The output folder (with manifest.jsonl).")
    name: str | None = Field(
        None, min_length=1, max_length=200, description="Data set name (default: the folder's name)."
    )


class CatalogueImportRealConfig(DatabaseConfig):
    """`synthmed catalogue import-real`: a folder of real images as a real data set."""

    folder: Path = Field(description="Class folders of 2D images, or NIfTI volumes (3D).")
    name: str = Field(min_length=1, max_length=200, description="Data set name.")
    spatial_dims: Literal[2, 3] | None = Field(None, description="Default: 3 when the folder holds NIfTI.")


class FromRequestsConfig(DatabaseConfig):
    """`synthmed generate --from-requests`: fulfil the catalogue's open regeneration requests."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


class ExportConfig(DatabaseConfig):
    """`synthmed export`: the approved synthetic samples as an nnU-Net / Decathlon style training corpus."""

    format: Literal["png", "nifti", "dicom"] = Field(
        description="png (2D, source bit depth), nifti (.nii.gz) or dicom (Secondary Capture + SEG, "
        "marked synthetic)."
    )
    out: Path = Field(description="Output folder: imagesTr/, labelsTr/, dataset.json, manifest.csv.")
    dataset: str | None = Field(
        None, min_length=1, description="Export only this synthetic data set (default: all approved samples)."
    )
    overwrite: bool = Field(False, description="Replace a previous export in out; other files there stay.")
