"""`synthmed db` (schema migrations), `synthmed catalogue` (import and list data sets), `synthmed export` and
`synthmed generate --from-requests`.

Heavy imports (SQLAlchemy engines, torch through the importer) stay inside the functions so that
`synthmed --help` stays fast.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import (
    CatalogueImportConfig,
    CatalogueImportRealConfig,
    DatabaseConfig,
    ExportConfig,
    FromRequestsConfig,
    GenerateConfig,
)
from synthmed.errors import SynthmedError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

db_app = typer.Typer(help="The catalogue database: create or upgrade its schema.", no_args_is_help=True)
catalogue_app = typer.Typer(
    help="The catalogue: import generated and real images as data sets, list them.", no_args_is_help=True
)

Database = Annotated[
    str | None,
    typer.Option(
        help="Catalogue database URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML with the command's fields.")]
VerifyAll = Annotated[
    bool, typer.Option("--verify-all", help="Regenerate every sample, not a random 20 (slower, certain).")
]


@db_app.command("upgrade")
@user_errors
def db_upgrade(database: Database = None, config: ConfigFile = None) -> None:
    """Create the catalogue schema in an empty database, or upgrade it to this version's schema."""
    from synthmed.catalogue.migrate import current_revision, safe_url, upgrade

    cfg = command_config(DatabaseConfig, config, {"database": database})
    upgrade(cfg.database)
    err.print(f"{safe_url(cfg.database)}: schema revision {current_revision(cfg.database)}", highlight=False)


@db_app.command("current")
@user_errors
def db_current(database: Database = None, config: ConfigFile = None) -> None:
    """Print the database's schema revision and whether it is the newest one."""
    from synthmed.catalogue.migrate import current_revision, head_revision

    cfg = command_config(DatabaseConfig, config, {"database": database})
    current, head = current_revision(cfg.database), head_revision()
    state = "up to date" if current == head else f"needs synthmed db upgrade to {head}"
    typer.echo(f"{current or 'none (empty database)'} ({state})")


@catalogue_app.command("import")
@user_errors
def import_run(
    out_dir: Annotated[
        Path, typer.Argument(help="A `synthmed generate` output folder (with manifest.jsonl).")
    ],
    name: Annotated[str | None, typer.Option(help="Data set name (default: the folder's name).")] = None,
    verify_all: VerifyAll = False,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """Catalogue generated images (2D or 3D) with model, run and provenance; again adds only new ones.

    Each new image must prove it is what synthmed generate wrote (file kind, the sha256 in its manifest row,
    the row's model weights, seeded regeneration bit for bit of all of up to 20 new images, else of a random
    20); anything else is refused, naming the file. 2D images are compared with the model's training
    images: likely copies are marked and cannot be approved or exported.
    """
    from sqlalchemy import func, select

    from synthmed.catalogue.importer import import_generation
    from synthmed.catalogue.models import Sample

    cfg = command_config(
        CatalogueImportConfig, config, {"out_dir": out_dir, "name": name, "database": database}
    )
    with catalogue_session(cfg.database) as session:
        run = import_generation(session, cfg.out_dir, cfg.name, verify_all=verify_all)
        samples = select(func.count()).where(Sample.generation_run_id == run.id)
        count = session.scalar(samples)
        copies = session.scalar(samples.where(Sample.likely_copy.is_(True)))
        err.print(
            f"data set {run.dataset.name!r}: {count} synthetic samples ({copies} likely copies of training "
            "images)",
            highlight=False,
        )


@catalogue_app.command("verify")
@user_errors
def verify(
    name: Annotated[str, typer.Argument(help="A synthetic data set of the catalogue.")],
    verify_all: VerifyAll = False,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """Prove a synthetic data set's samples again: files unchanged, of their kind, with their manifest rows'
    sha256 and weights; a random 20 (and every sample never proven) regenerated bit for bit, or all of them;
    samples not yet compared with the training images are."""
    from sqlalchemy import select

    from synthmed.catalogue.models import Dataset
    from synthmed.catalogue.provenance import COPY_PERCENTILE, verify_catalogued

    cfg = command_config(DatabaseConfig, config, {"database": database})
    with catalogue_session(cfg.database) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name, Dataset.origin == "synthetic"))
        if dataset is None:
            raise SynthmedError(
                f"no synthetic data set named {name!r}; see synthmed catalogue list", field="name"
            )
        samples = list(dataset.samples)
        proof = verify_catalogued(
            session,
            samples,
            everything=verify_all,
            what="nothing was marked",
            copy_percentile=COPY_PERCENTILE,
        )
        copies = sum(bool(s.likely_copy) for s in samples)
        err.print(
            f"data set {name!r}: {len(samples)} samples proven, {len(proof.regenerated)} regenerated bit for "
            f"bit, {copies} likely copies of training images",
            highlight=False,
        )


@catalogue_app.command("import-real")
@user_errors
def import_real_images(
    folder: Annotated[Path, typer.Argument(help="Class folders of 2D images, or NIfTI volumes.")],
    name: Annotated[str | None, typer.Option(help="Data set name.")] = None,
    spatial_dims: Annotated[
        int | None, typer.Option("--dims", help="2 or 3 (default: 3 when the folder holds NIfTI files).")
    ] = None,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """Catalogue a folder of real images (labels from class folders, masks and label maps beside them; a
    volume stored one file per contrast keeps every contrast file). Multi-frame DICOMs are left out, named."""
    options = locals()  # each option sets the CatalogueImportRealConfig field of its name
    from synthmed.catalogue.importer import import_real

    cfg = command_config(CatalogueImportRealConfig, config, options)
    with catalogue_session(cfg.database) as session:
        dataset = import_real(session, cfg.folder, cfg.name, spatial_dims=cfg.spatial_dims)
        session.flush()
        err.print(f"data set {dataset.name!r}: {len(dataset.samples)} real samples", highlight=False)


@catalogue_app.command("list")
@user_errors
def list_datasets(database: Database = None, config: ConfigFile = None) -> None:
    """The data sets with their samples per label and per review state."""
    from rich.table import Table
    from sqlalchemy import func, select

    from synthmed.catalogue.models import Dataset, Sample

    cfg = command_config(DatabaseConfig, config, {"database": database})
    table = Table("data set", "origin", "dims", "samples", "labels", "review", "folder")
    with catalogue_session(cfg.database) as session:
        for dataset in session.scalars(select(Dataset).order_by(Dataset.name)):
            counts = {}
            for column in (Sample.label, Sample.review_state):
                query = select(column, func.count()).where(Sample.dataset_id == dataset.id).group_by(column)
                counts[column.key] = dict(session.execute(query).all())
            table.add_row(
                dataset.name,
                dataset.origin,
                f"{dataset.spatial_dims}D",
                str(sum(counts["label"].values())),
                _counts(counts["label"]),
                _counts(counts["review_state"]),
                dataset.root,
            )
    Console().print(table)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items()))


def generate_from_requests(
    enabled: bool, database: str | None, config: Path | None, options: Mapping[str, Any], progress: bool
) -> None:
    """`synthmed generate --from-requests`: the generation settings come from each rejected sample, so of
    the generate ``options`` (named like GenerateConfig fields) only --device may be given."""
    from synthmed.catalogue.migrate import require_head
    from synthmed.catalogue.requests import fulfil_requests

    if not enabled:
        raise SynthmedError("applies to synthmed generate --from-requests only", field="database")
    given = {k: v for k, v in options.items() if k in GenerateConfig.model_fields and v is not None}
    others = sorted(k for k in given if k != "device")
    if others:
        raise SynthmedError(
            f"--from-requests takes every generation setting from the rejected sample; leave out {others}",
            field=others[0],
        )
    cfg = command_config(FromRequestsConfig, config, {"database": database, "device": given.get("device")})
    require_head(cfg.database)
    with _printed_warnings():
        done = fulfil_requests(cfg.database, device=cfg.device, progress=progress)
    for item in done:
        err.print(
            f"request {item.request}: sample {item.rejected_sample} -> {item.path} (seed {item.seed}, "
            f"sample {item.new_sample})",
            highlight=False,
        )
    err.print(f"done: {len(done)} regeneration requests fulfilled")


class ExportFormat(StrEnum):
    png = "png"
    nifti = "nifti"
    dicom = "dicom"


@user_errors
def export(
    format: Annotated[
        ExportFormat | None,
        typer.Option("--format", help="png (2D), nifti (.nii.gz) or dicom (marked synthetic, masks as SEG)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder: imagesTr/, labelsTr/, dataset.json, manifest.csv.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this synthetic data set (default: all).")] = None,
    database: Annotated[
        str | None,
        typer.Option(help="Catalogue URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."),
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite", help="Replace a previous export in --out (other files there stay)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with ExportConfig fields.")
    ] = None,
) -> None:
    """Export the approved synthetic samples as a training corpus (nnU-Net / Decathlon layout).

    Writes imagesTr/<case>_0000 files, labelsTr/ for masks and label maps, dataset.json and manifest.csv
    (provenance and checksums of every case). DICOM objects get new UIDs, placeholder patient attributes
    (nothing is copied from source files), Synthetic Data = YES and a series description naming the model.
    """
    options = locals()  # each option sets the ExportConfig field of its name
    from synthmed.catalogue.export import export_approved

    cfg = command_config(ExportConfig, config, options)
    with catalogue_session(cfg.database) as session:
        summary = export_approved(session, cfg.out, cfg.format, dataset=cfg.dataset, overwrite=cfg.overwrite)
    classes = ", ".join(f"{label} {n}" for label, n in sorted(summary["classes"].items()))
    err.print(f"done: {summary['cases']} cases ({classes}; {summary['labelled']} with labels) in {cfg.out}")


@contextmanager
def catalogue_session(url: str | None) -> Iterator[Session]:
    """A session on the catalogue at the current schema that commits at the end."""
    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.migrate import require_head

    require_head(url)
    engine = make_engine(url)
    try:
        with _printed_warnings(), transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def _printed_warnings() -> Iterator[None]:
    """Print the warnings raised inside (an import's changed or unreadable files), one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                err.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
